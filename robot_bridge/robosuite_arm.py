"""`RobosuiteArm`: robosuite's Panda (operational-space control) behind the project's `Arm` interface.

robosuite (1.5.x) is the simulator much of robot learning benchmarks on; running our planner
against its Panda, its scenes and its own `_check_success()` tests the service on a robot, a
camera and a success check that we did not write.

Conventions, translated at this boundary and nowhere else:
- state: the end effector in the robot's BASE frame (robosuite puts the base at (-0.56, 0, 0.912) in
  its world), metres, extrinsic xyz Euler, gripper 0 = open .. 1 = closed (from the finger joints).
- orientation comes from the grip site (`gripper0_right_grip_site`, robosuite's `eef_quat_site`):
  the hand body's quaternion is offset from it and gave 3-12 cm errors with absolute OSC targets.
  The site's home yaw is +pi/2; a fixed tool offset (a +pi/2 turn about the tool axis) makes the
  home pose read roll = pi (pointing down), pitch -0.12, yaw 0.02, as in DROID's convention. Like
  DROID's, roll sits at the +-pi wrap when pointing straight down; SafetyLimits compares wrapped angles.
- targets go to OSC_POSE with absolute inputs in the base frame. robosuite's gripper takes only
  open or close, so a target's gripper is read against the measured one: more closed than it by
  GRIPPER_DEADBAND closes, more open opens, anything in between keeps the last command. Fingers
  around Lift's cube read ~0.3 closed, so the former rule (close above 0.5) let go of every grasped
  cube on the first plan with a zero gripper delta (achieved-delta labels make that "keep holding").
- robosuite's controllers run at their usual 20 Hz and one period of ours is several of their steps
  with the same target: the Panda gripper moves a fixed 10% of its travel per robosuite step, so at
  4 robosuite steps per second closing took 10 periods (2.5 s) and scripted grasps closed on nothing.
- the camera is robosuite's spare `sideview` camera moved to a DROID-like exterior view, rendered by
  our own MuJoCo renderer with shadows, reflections and skybox off (robosuite's renderer returns
  frames upside down and renders 2-3x slower at 64 px).

robosuite pins mujoco 3.3.x and numpy 1.26, the project's own environment uses newer ones, so
this module runs from its own virtual environment (`make robosuite`), as a separate, torch-free
arm process: `python -m robot_bridge.robosuite_arm --task Lift` or `jepa-planner sim-arm --env robosuite`.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before the first `import mujoco` (robosuite imports it)

import time
from dataclasses import dataclass

import numpy as np

from robot_bridge.arm import STATE_DIM, Arm, Observation, SafetyLimits
from robot_bridge.poses import euler_to_matrix, matrix_to_euler

GRIP_SITE = "gripper0_right_grip_site"
GRIPPER_DEADBAND = 0.1  # of the 0 (open) .. 1 (closed) scale: a target this close to the measured keeps the command
BASE_BODY = "robot0_base"
CAMERA = "sideview"
FINGER_TRAVEL_M = 0.04  # each Panda finger slides 0 .. 0.04 m
# Site frame -> our tool frame: a +pi/2 turn about the tool's z axis (see the module docstring).
TOOL_OFFSET = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
TASKS = ("Lift", "Stack", "PickPlace", "Door")
ROBOSUITE_CONTROL_HZ = 20.0  # robosuite's own controller rate (its default)
# robosuite's table top is 0.112 m BELOW the Panda's base (base at z = 0.912, table at 0.8), and the
# table spans x 0.16 .. 0.96 in the base frame: the box keeps the fingertips 1 cm off the table.
TABLE_Z = -0.112  # robosuite's table top in the Panda's base frame
ROBOSUITE_LIMITS = SafetyLimits(workspace_low=(0.25, -0.35, -0.10), workspace_high=(0.80, 0.35, 0.40))


@dataclass(frozen=True)
class ExteriorCamera:
    """A DROID-like exterior view in the robot's base frame: beside and in front of the table."""

    # Low and close enough that the 4 cm cube is 4-5 px at 64 px and the arm stays in view up to
    # 0.25 m above the base (a higher, farther view showed the cube as 2-3 px).
    position: tuple[float, float, float] = (1.05, -0.3, 0.25)
    look_at: tuple[float, float, float] = (0.5, 0.0, 0.07)
    fovy: float = 55.0


@dataclass(frozen=True)
class RobosuiteConfig:
    task: str = "Lift"
    image_height: int = 64
    image_width: int = 64
    control_hz: float = 4.0
    camera: ExteriorCamera = ExteriorCamera()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown robosuite task {self.task!r}; one of {', '.join(TASKS)}")
        if self.image_height < 1 or self.image_width < 1 or not self.control_hz > 0:
            raise ValueError("image size and control rate must be positive")


def _camera_quat(position: np.ndarray, look_at: np.ndarray) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) looking from `position` at `look_at`, world z up."""
    forward = look_at - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rotation = np.stack([right, up, -forward], axis=1)  # camera x right, y up, looking along -z
    w = np.sqrt(max(0.0, 1.0 + np.trace(rotation))) / 2
    x = (rotation[2, 1] - rotation[1, 2]) / (4 * w)
    y = (rotation[0, 2] - rotation[2, 0]) / (4 * w)
    z = (rotation[1, 0] - rotation[0, 1]) / (4 * w)
    return np.array([w, x, y, z])


def _rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of a rotation matrix, what robosuite's absolute OSC input expects."""
    cos_angle = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:  # near a half turn the antisymmetric part vanishes: use the diagonal
        axis = np.sqrt(np.clip((np.diag(rotation) + 1.0) / 2.0, 0.0, None))
        axis *= np.sign([1.0, rotation[0, 1] or 1.0, rotation[0, 2] or 1.0])
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    return axis / (2.0 * np.sin(angle)) * angle


class RobosuiteArm(Arm):
    """robosuite's Panda in one of its tasks, with an exterior camera, behind the `Arm` interface."""

    def __init__(self, config: RobosuiteConfig | None = None, seed: int | None = 0):
        import mujoco
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        self.config = config or RobosuiteConfig()
        # robosuite steps per period of ours (5 at 4 Hz), so its gripper and OSC run at their own rate.
        self._substeps = max(1, round(ROBOSUITE_CONTROL_HZ / self.config.control_hz))
        controller = load_composite_controller_config(controller="BASIC", robot="Panda")
        arm_part = dict(controller["body_parts"]["right"], input_type="absolute", input_ref_frame="base")
        controller["body_parts"] = {"right": arm_part}  # the Panda has no torso, head, base or legs
        self.env = robosuite.make(
            self.config.task, robots="Panda", controller_configs=controller, has_renderer=False,
            has_offscreen_renderer=False, use_camera_obs=False, control_freq=self.config.control_hz * self._substeps,
            hard_reset=False,  # resets in milliseconds instead of rebuilding the model (seconds)
            ignore_done=True, seed=seed,
        )
        self._mujoco = mujoco
        self.env.reset()
        self.model, self.data = self.env.sim.model._model, self.env.sim.data._data
        self._site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, GRIP_SITE)
        self._base = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, BASE_BODY)
        self._camera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)
        self._place_camera()
        mujoco.mj_forward(self.model, self.data)  # or the first frame shows the camera where it was
        self._renderer = mujoco.Renderer(self.model, self.config.image_height, self.config.image_width)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = False
        self._held_pose: np.ndarray | None = None
        self._gripper_closed = False  # as after every reset

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
        self._held_pose = None
        self._step_towards(_checked_pose(target))

    def hold(self) -> None:
        """Servo to the pose measured when the hold began (so repeated holds do not drift), keeping the
        gripper's command: robosuite's gripper only opens or closes, so servoing it to a measured
        in-between opening (0.48 right after a reset) closed and opened it in turn while the arm waited."""
        if self._held_pose is None:
            self._held_pose = self.state()
        self._step_towards(self._held_pose, keep_gripper=True)

    def close(self) -> None:
        self._renderer.close()
        self.env.close()

    # ---- simulation control --------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        """robosuite's own reset: the task's object placement and the arm's initial-joint noise, drawn
        from robosuite's generator; with `seed` that generator is reseeded first, so the episode does
        not depend on how many resets came before (an evaluation can be split across processes)."""
        if seed is not None:
            # Reseeded in place: robosuite's placement sampler holds this very generator object.
            self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.env.reset()
        # robosuite's reset leaves the gripper's command where the last episode left it (it is only set
        # when the model is built), so a hand closed at the end of one episode closed again in the next.
        gripper = self._gripper()
        gripper.current_action = np.zeros(gripper.dof)
        self._held_pose = None
        self._gripper_closed = False  # robosuite starts the fingers half open; every task starts open
        return self.observe()

    def drive_to(self, pose: np.ndarray, periods: int) -> None:
        """Command `pose` for `periods` control periods (scripted motions: goal images, starts)."""
        for _ in range(periods):
            self.move_to(pose)

    def check_success(self) -> bool:
        """The task's own success test (robosuite's `_check_success()`)."""
        return bool(self.env._check_success())

    def save_state(self) -> np.ndarray:
        """The simulator's state and the gripper's command: robosuite's Panda gripper moves its command a
        fixed step per robosuite step (`current_action`), which the simulator's state does not hold, so a
        restored open hand whose command was left closed would first close (seen: to 0.27) when told to open."""
        command = np.asarray(self._gripper().current_action, dtype=np.float64)  # (1,) after a reset, (2,) once stepped
        return np.concatenate([self.env.sim.get_state().flatten(), command, [len(command)]])

    def restore_state(self, saved: np.ndarray) -> None:
        length = int(saved[-1])
        self.env.sim.set_state_from_flattened(saved[:-1 - length])
        self._gripper().current_action = saved[-1 - length:-1].copy()
        self.env.sim.forward()
        self._held_pose = None
        self._gripper_closed = self._fingers_closing()

    def object_position(self, body: str = "cube_main") -> np.ndarray:
        """A task object's position in the robot's base frame (Lift's cube is `cube_main`)."""
        body_id = self._mujoco.mj_name2id(self.model, self._mujoco.mjtObj.mjOBJ_BODY, body)
        if body_id < 0:
            raise ValueError(f"no body {body!r} in the {self.config.task} scene")
        return self.data.xpos[body_id] - self.data.xpos[self._base]

    # ---- measurements --------------------------------------------------------------------
    def state(self) -> np.ndarray:
        position = self.data.site_xpos[self._site] - self.data.xpos[self._base]
        rotation = self._base_rotation().T @ self.data.site_xmat[self._site].reshape(3, 3) @ TOOL_OFFSET
        fingers = self._finger_positions()
        opening = float(np.clip((fingers[0] - fingers[1]) / (2 * FINGER_TRAVEL_M), 0.0, 1.0))
        return np.concatenate([position, matrix_to_euler(rotation), [1.0 - opening]])

    def joints(self) -> np.ndarray:
        robot = self.env.robots[0]
        return self.data.qpos[robot._ref_joint_pos_indexes].copy()

    def render(self) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    # ---- internals -----------------------------------------------------------------------
    def _gripper(self):
        return self.env.robots[0].gripper["right"]

    def _finger_positions(self) -> np.ndarray:
        gripper = self._gripper()
        ids = [self.model.joint(name).qposadr[0] for name in gripper.joints]
        return self.data.qpos[ids]

    def _base_rotation(self) -> np.ndarray:
        return self.data.xmat[self._base].reshape(3, 3)

    def _fingers_closing(self) -> bool:
        """After a reset or a restored state: whether the fingers stand closed at all (on a cube or shut)."""
        return bool(self.state()[6] > GRIPPER_DEADBAND)

    def _step_towards(self, pose: np.ndarray, keep_gripper: bool = False) -> None:
        rotation = euler_to_matrix(pose[3:6]) @ TOOL_OFFSET.T  # our tool frame -> robosuite's grip site
        measured = self.state()[6]
        if not keep_gripper and pose[6] > measured + GRIPPER_DEADBAND:
            self._gripper_closed = True
        elif not keep_gripper and pose[6] < measured - GRIPPER_DEADBAND:
            self._gripper_closed = False
        action = np.concatenate([pose[:3], _rotation_vector(rotation), [1.0 if self._gripper_closed else -1.0]])
        for _ in range(self._substeps):
            self.env.step(action)

    def _place_camera(self) -> None:
        base = self.data.xpos[self._base]
        camera = self.config.camera
        position = base + np.asarray(camera.position)
        self.model.cam_pos[self._camera] = position
        self.model.cam_quat[self._camera] = _camera_quat(position, base + np.asarray(camera.look_at))
        self.model.cam_fovy[self._camera] = camera.fovy


def _checked_pose(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (STATE_DIM,) or not np.all(np.isfinite(array)):
        raise ValueError(f"target must be {STATE_DIM} finite numbers, got {array!r}")
    return array


def measure(trials: int = 5, seed: int = 0) -> dict:
    """The arm's conventions, accuracy and cost, measured now (`python -m robot_bridge.robosuite_arm`)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    arm = RobosuiteArm(seed=seed)
    report = {"make_s": time.perf_counter() - started, "home_state": arm.state().round(4).tolist()}
    try:
        image = arm.render()
        # Upright frames: the (white) table fills the lower part of the exterior view, the wall the upper.
        report["image_shape"] = list(image.shape)
        report["lower_half_brighter"] = bool(image[image.shape[0] // 2:].mean() > image[: image.shape[0] // 2].mean())
        one_period, settled, period_ms = [], [], []
        for _ in range(trials):
            target = arm.state().copy()
            target[:3] = np.clip(target[:3] + rng.uniform(-0.05, 0.05, 3), ROBOSUITE_LIMITS.workspace_low,
                                 ROBOSUITE_LIMITS.workspace_high)
            tick = time.perf_counter()
            arm.move_to(target)
            period_ms.append((time.perf_counter() - tick) * 1000)
            one_period.append(float(np.linalg.norm(arm.state()[:3] - target[:3])))
            for _ in range(3):
                arm.move_to(target)
            settled.append(float(np.linalg.norm(arm.state()[:3] - target[:3])))
        rotation_drift = float(np.abs(np.angle(np.exp(1j * (arm.state()[3:6] - np.array(report["home_state"][3:6]))))).max())
        tick = time.perf_counter()
        for _ in range(10):
            arm.render()
        frame_ms = (time.perf_counter() - tick) * 100
        tick = time.perf_counter()
        arm.reset()
        report.update(
            error_after_one_period_m=float(np.mean(one_period)), error_settled_m=float(np.mean(settled)),
            rotation_drift_rad=rotation_drift, period_ms=float(np.median(period_ms)), frame_ms=frame_ms,
            reset_ms=(time.perf_counter() - tick) * 1000, success_at_reset=arm.check_success(),
        )
    finally:
        arm.close()
    return report


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="robosuite arm: conventions, accuracy and cost, measured now")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    options = parser.parse_args()
    result = measure(options.trials, options.seed)
    for key, value in result.items():
        print(f"{key}: {value}")
    if options.json:
        print(json.dumps(result))
