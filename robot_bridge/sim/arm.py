"""`SimArm`: the MuJoCo Franka-style arm behind the same `Arm` interface as a real arm.

Control is what a Franka Cartesian controller does, simplified: each `move_to` solves
differential IK for the absolute end-effector target, then the joint position servos track a
joint-space ramp towards that solution while the physics runs for one control period. The
state is measured from the simulation (the achieved pose), never copied from the command.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first `import mujoco` to render headless

import time
from dataclasses import dataclass, field

import mujoco
import numpy as np

from robot_bridge.arm import STATE_DIM, Arm, Observation
from robot_bridge.poses import compose_pose, euler_to_matrix, matrix_to_euler
from robot_bridge.sim.ik import DifferentialIK
from robot_bridge.sim.model import (
    ARM_JOINTS,
    CUBE_HALF,
    FINGER_JOINTS,
    FINGER_TRAVEL,
    CameraPose,
    build_mjcf,
)

# Neutral pose: above the table centre, fingers open, pointing down. The gripper is tilted
# 0.14 rad off vertical on purpose: straight down is roll = +-pi exactly, where extrinsic-xyz
# roll flips sign on the tiniest wobble and would put 2*pi jumps into recorded states.
HOME_STATE = np.array([0.45, 0.0, 0.30, -3.0, 0.0, 0.0, 0.0])
# A comfortable Panda posture to start IK from and to pull the redundant joint towards.
READY_JOINTS = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, np.pi / 4])


@dataclass(frozen=True)
class Box:
    low: tuple[float, ...]
    high: tuple[float, ...]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high)

    def clip(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values, self.low, self.high)


@dataclass(frozen=True)
class SimConfig:
    image_height: int = 256
    image_width: int = 256
    control_hz: float = 4.0
    timestep: float = 0.002
    # The joint target ramps to the IK solution over this fraction of the control period and is
    # then held, so motions are smooth and finish inside the period (like a trajectory generator).
    ramp_fraction: float = 0.6
    camera: CameraPose = field(default_factory=CameraPose)
    # The key light's shadow is the depth cue of a single camera; off renders ~4x faster.
    shadows: bool = True
    # Where `reset` may put the cube (x, y) and the end effector (x, y, z) when randomising.
    cube_region: Box = Box((0.35, -0.2), (0.62, 0.2))
    start_region: Box = Box((0.3, -0.2, 0.12), (0.6, 0.2, 0.4))

    def __post_init__(self):
        if self.image_height < 1 or self.image_width < 1:
            raise ValueError(f"image size must be positive, got {self.image_height}x{self.image_width}")
        if not self.control_hz > 0 or not self.timestep > 0 or self.timestep * self.control_hz > 1:
            raise ValueError("need control_hz > 0, timestep > 0 and at least one physics step per control period")
        if not 0 < self.ramp_fraction <= 1:
            raise ValueError(f"ramp_fraction must be in (0, 1], got {self.ramp_fraction}")


class SimArm(Arm):
    """A simulated Franka-style arm with a fixed exterior camera, a table and a cube."""

    def __init__(self, config: SimConfig | None = None, seed: int | None = 0):
        self.config = config or SimConfig()
        self.model = mujoco.MjModel.from_xml_string(
            build_mjcf(self.config.image_height, self.config.image_width, self.config.timestep, self.config.camera,
                       self.config.shadows)
        )
        self.data = mujoco.MjData(self.model)
        self._arm_qpos = np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in ARM_JOINTS])
        self._finger_qpos = np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in FINGER_JOINTS])
        cube_joint = self.model.joint("cube").id
        self._cube_qpos = slice(self.model.jnt_qposadr[cube_joint], self.model.jnt_qposadr[cube_joint] + 7)
        self._cube_qvel = slice(self.model.jnt_dofadr[cube_joint], self.model.jnt_dofadr[cube_joint] + 6)
        self._tcp = self.model.site("tcp").id
        self._camera = self.model.camera("exterior").id
        self._steps_per_period = max(1, round(1.0 / (self.config.control_hz * self.config.timestep)))
        self.ik = DifferentialIK(self.model, "tcp", ARM_JOINTS, READY_JOINTS)
        self.home_joints = self._solve(HOME_STATE, READY_JOINTS)
        self._renderer = mujoco.Renderer(self.model, self.config.image_height, self.config.image_width)
        flags = self._renderer.scene.flags
        for flag in (mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            flags[flag] = False
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.config.shadows
        self._state_size = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)
        self.reset(seed)

    # ---- Arm interface -------------------------------------------------------------------
    @property
    def camera_size(self) -> tuple[int, int]:
        return self.config.image_height, self.config.image_width

    @property
    def control_hz(self) -> float:
        return self.config.control_hz

    def observe(self) -> Observation:
        return Observation(image=self.render(), state=self.state(), timestamp=time.time(), joints=self.joints())

    def move_to(self, target: np.ndarray) -> None:
        target = _checked_pose(target, "target")
        goal_joints = self._solve(target, self.joints())
        self._run_period(goal_joints, _finger_opening(target[6]))

    def hold(self) -> None:
        """Servo to the current joint positions for one control period (the sim keeps time)."""
        self._run_period(self.joints(), self.data.ctrl[7])

    def close(self) -> None:
        self._renderer.close()

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- simulation control --------------------------------------------------------------
    def reset(self, seed: int | None = None, randomize_arm: bool = False) -> Observation:
        """Home (or random start) pose, fingers open, cube at a random spot; deterministic in `seed`."""
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        joints = self.home_joints
        if randomize_arm:
            start = HOME_STATE.copy()
            start[:3] = self.config.start_region.sample(rng)
            joints = self._solve(start, self.home_joints)
        cube_xy = self.config.cube_region.sample(rng)
        self.set_cube_pose(np.array([cube_xy[0], cube_xy[1], CUBE_HALF]), yaw=rng.uniform(-np.pi, np.pi))
        self.data.qpos[self._arm_qpos] = joints
        self.data.qpos[self._finger_qpos] = FINGER_TRAVEL
        self.data.ctrl[:7] = joints
        self.data.ctrl[7:] = FINGER_TRAVEL
        mujoco.mj_forward(self.model, self.data)
        return self.observe()

    def apply_delta(self, action: np.ndarray) -> None:
        """Move by a 7-D delta action (DROID/V-JEPA convention) from the measured state."""
        self.move_to(compose_pose(self.state(), _checked_pose(action, "action")))

    def set_cube_pose(self, position: np.ndarray, yaw: float = 0.0) -> None:
        self.data.qpos[self._cube_qpos] = _cube_qpos(position, yaw)
        self.data.qvel[self._cube_qvel] = 0.0
        mujoco.mj_forward(self.model, self.data)

    # ---- measurements --------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """Achieved 7-D end-effector state [x, y, z, roll, pitch, yaw, gripper]."""
        rotation = self.data.site_xmat[self._tcp].reshape(3, 3)
        opening = self.data.qpos[self._finger_qpos].sum() / (2 * FINGER_TRAVEL)
        # Soft joint limits let closed fingers sink a hair past zero; report within [0, 1].
        gripper = float(np.clip(1.0 - opening, 0.0, 1.0))
        return np.concatenate([self.data.site_xpos[self._tcp], matrix_to_euler(rotation), [gripper]])

    def joints(self) -> np.ndarray:
        return self.data.qpos[self._arm_qpos].copy()

    @property
    def cube_position(self) -> np.ndarray:
        return self.data.qpos[self._cube_qpos][:3].copy()

    @property
    def sim_time(self) -> float:
        return float(self.data.time)

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 image from the exterior camera."""
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    def render_goal(self, pose: np.ndarray, cube_position: np.ndarray | None = None, cube_yaw: float | None = None) -> np.ndarray:
        """The image the camera would show with the end effector at `pose` (and the cube moved).

        The arm is placed kinematically through IK seeded from the current joints, which is where
        the controller would end up; the simulation state is restored exactly afterwards.
        """
        pose = _checked_pose(pose, "pose")
        saved = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, saved, mujoco.mjtState.mjSTATE_INTEGRATION)
        try:
            self.data.qpos[self._arm_qpos] = self._solve(pose, self.joints())
            self.data.qpos[self._finger_qpos] = _finger_opening(pose[6])
            if cube_position is not None or cube_yaw is not None:
                current = self.data.qpos[self._cube_qpos]
                position = current[:3] if cube_position is None else np.asarray(cube_position, dtype=np.float64)
                yaw = _quat_yaw(current[3:]) if cube_yaw is None else cube_yaw
                self.data.qpos[self._cube_qpos] = _cube_qpos(position, yaw)
            mujoco.mj_forward(self.model, self.data)
            return self.render()
        finally:
            mujoco.mj_setState(self.model, self.data, saved, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(self.model, self.data)

    # ---- internals -----------------------------------------------------------------------
    def _solve(self, pose: np.ndarray, seed_joints: np.ndarray) -> np.ndarray:
        return self.ik.solve(pose[:3], euler_to_matrix(pose[3:6]), seed_joints).joints

    def _run_period(self, goal_joints: np.ndarray, finger_target: float) -> None:
        start = self.data.ctrl[:7].copy()
        ramp_steps = max(1, round(self.config.ramp_fraction * self._steps_per_period))
        self.data.ctrl[7:] = finger_target
        for step in range(1, self._steps_per_period + 1):
            blend = min(1.0, step / ramp_steps)
            self.data.ctrl[:7] = start + blend * (goal_joints - start)
            mujoco.mj_step(self.model, self.data)


def _checked_pose(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (STATE_DIM,):
        raise ValueError(f"{name} must have shape ({STATE_DIM},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity: {array}")
    return array


def _finger_opening(gripper: float) -> float:
    """Per-finger slide position for gripper closedness 0 (open) .. 1 (closed)."""
    return FINGER_TRAVEL * (1.0 - float(np.clip(gripper, 0.0, 1.0)))


def _cube_qpos(position: np.ndarray, yaw: float) -> np.ndarray:
    return np.array([*position, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _quat_yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
