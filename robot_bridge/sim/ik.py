"""Differential inverse kinematics: damped least squares on the tool-site Jacobian (`mj_jacSite`).

Works on a scratch `MjData`, so solving never disturbs the simulation state. A null-space pull
towards a rest posture keeps the redundant 7th degree of freedom from drifting between solves.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass(frozen=True)
class IKResult:
    joints: np.ndarray         # (7,) solution, inside the joint limits
    position_error: float      # m, at the solution
    rotation_error: float      # rad, at the solution
    iterations: int


class DifferentialIK:
    def __init__(
        self,
        model: mujoco.MjModel,
        site: str,
        joint_names: tuple[str, ...],
        rest_joints: np.ndarray,
        damping: float = 0.05,
        max_iterations: int = 60,
        max_step_rad: float = 0.25,
        position_tolerance: float = 2e-4,
        rotation_tolerance: float = 2e-3,
        nullspace_gain: float = 0.2,
    ):
        self._model = model
        self._data = mujoco.MjData(model)
        self._site = model.site(site).id
        joint_ids = [model.joint(name).id for name in joint_names]
        self._qpos = np.array([model.jnt_qposadr[j] for j in joint_ids])
        self._dofs = np.array([model.jnt_dofadr[j] for j in joint_ids])
        self._limits = model.jnt_range[joint_ids].copy()
        self._rest = np.asarray(rest_joints, dtype=np.float64)
        self._damping_sq = damping**2
        self._max_iterations = max_iterations
        self._max_step = max_step_rad
        self._position_tolerance = position_tolerance
        self._rotation_tolerance = rotation_tolerance
        self._nullspace_gain = nullspace_gain
        self._jac_pos = np.zeros((3, model.nv))
        self._jac_rot = np.zeros((3, model.nv))

    def site_pose(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics: (position (3,), rotation matrix (3, 3)) of the site at `joints`."""
        self._data.qpos[self._qpos] = joints
        mujoco.mj_kinematics(self._model, self._data)
        return self._data.site_xpos[self._site].copy(), self._data.site_xmat[self._site].reshape(3, 3).copy()

    def solve(self, target_position: np.ndarray, target_rotation: np.ndarray, seed_joints: np.ndarray) -> IKResult:
        """Joints (within limits) whose site pose is closest to the target, starting from `seed_joints`."""
        data, site = self._data, self._site
        joints = np.clip(np.asarray(seed_joints, dtype=np.float64), self._limits[:, 0], self._limits[:, 1])
        target_quat = np.empty(4)
        mujoco.mju_mat2Quat(target_quat, np.ascontiguousarray(target_rotation, dtype=np.float64).ravel())
        identity = np.eye(len(joints))
        for iteration in range(1, self._max_iterations + 1):
            position_error, rotation_error = self._pose_error(joints, target_position, target_quat)
            if (
                np.linalg.norm(position_error) < self._position_tolerance
                and np.linalg.norm(rotation_error) < self._rotation_tolerance
            ):
                break
            mujoco.mj_comPos(self._model, data)
            mujoco.mj_jacSite(self._model, data, self._jac_pos, self._jac_rot, site)
            jacobian = np.vstack([self._jac_pos[:, self._dofs], self._jac_rot[:, self._dofs]])
            error = np.concatenate([position_error, rotation_error])
            gram = jacobian @ jacobian.T + self._damping_sq * np.eye(6)
            step = jacobian.T @ np.linalg.solve(gram, error)
            # Null-space posture term. The projector uses the exact pseudo-inverse: a damped one
            # would leak the posture pull into the task space and leave a millimetre-scale bias.
            projector = identity - np.linalg.pinv(jacobian, rcond=1e-4) @ jacobian
            step += projector @ (self._nullspace_gain * (self._rest - joints))
            largest = np.abs(step).max()
            if largest > self._max_step:
                step *= self._max_step / largest
            joints = np.clip(joints + step, self._limits[:, 0], self._limits[:, 1])
        position_error, rotation_error = self._pose_error(joints, target_position, target_quat)
        return IKResult(joints, float(np.linalg.norm(position_error)), float(np.linalg.norm(rotation_error)), iteration)

    def _pose_error(self, joints: np.ndarray, target_position: np.ndarray, target_quat: np.ndarray):
        """(position error (3,), rotation error as world axis * angle (3,)) at `joints`; leaves kinematics in data."""
        data, site = self._data, self._site
        data.qpos[self._qpos] = joints
        mujoco.mj_kinematics(self._model, data)
        site_quat, error_quat, rotation_error = np.empty(4), np.empty(4), np.empty(3)
        mujoco.mju_mat2Quat(site_quat, data.site_xmat[site])
        mujoco.mju_negQuat(site_quat, site_quat)
        mujoco.mju_mulQuat(error_quat, target_quat, site_quat)
        mujoco.mju_quat2Vel(rotation_error, error_quat, 1.0)
        return target_position - data.site_xpos[site], rotation_error
