"""Batched end-effector pose math in torch, with the official (SciPy-compatible) semantics.

A pose / state is 7-D ``[x, y, z, roll, pitch, yaw, gripper]``; the angles are SciPy's extrinsic
``"xyz"`` Euler angles, so the rotation matrix is ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``. An action is the
same 7-D layout holding deltas. Composition multiplies the delta rotation from the LEFT
(``R_new = R(delta) @ R(pose)``) and re-canonicalises the angles, exactly like the reference
``compute_new_pose``; a naive per-angle sum differs as soon as pitch leaves [-pi/2, pi/2].

Every function works on any batch shape ``(..., 7)`` and on any device, so the planner can chain
the poses of all samples at once on the model's device instead of one sample at a time on the CPU.
"""
from __future__ import annotations

import torch

# SciPy treats a middle angle within 1e-7 rad of +-pi/2 as gimbal lock (then yaw := 0).
GIMBAL_LOCK_EPS = 1e-7


def _rotation_dtype(device: torch.device) -> torch.dtype:
    # The reference does its rotation math in float64 (SciPy); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def euler_xyz_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) extrinsic xyz Euler angles (rad) -> (..., 3, 3) rotation matrices Rz @ Ry @ Rx."""
    roll, pitch, yaw = angles.unbind(-1)
    cr, sr = torch.cos(roll), torch.sin(roll)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    rows = (
        (cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr),
        (sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr),
        (-sp, cp * sr, cp * cr),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def matrix_to_euler_xyz(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) extrinsic xyz Euler angles in SciPy's canonical range.

    Roll and yaw lie in [-pi, pi], pitch in [-pi/2, pi/2]. At gimbal lock (pitch = +-pi/2) only
    roll -/+ yaw is determined; like SciPy we set the third angle (yaw) to zero and give roll the rest.
    """
    r00, r10 = matrix[..., 0, 0], matrix[..., 1, 0]
    r20, r21, r22 = matrix[..., 2, 0], matrix[..., 2, 1], matrix[..., 2, 2]
    cos_pitch = torch.hypot(r00, r10)
    # atan2 against the column norm stays accurate near +-pi/2, where asin(-r20) loses digits.
    pitch = torch.atan2(-r20, cos_pitch)
    locked = (torch.pi / 2 - pitch.abs()) <= GIMBAL_LOCK_EPS
    roll = torch.where(locked, torch.atan2(-matrix[..., 1, 2], matrix[..., 1, 1]), torch.atan2(r21, r22))
    yaw = torch.where(locked, torch.zeros_like(pitch), torch.atan2(r10, r00))
    return torch.stack((roll, pitch, yaw), dim=-1)


def canonical_euler_xyz(angles: torch.Tensor) -> torch.Tensor:
    """The canonical SciPy triple for the same rotation (wraps angles, folds pitch into [-pi/2, pi/2])."""
    rot_dtype = _rotation_dtype(angles.device)
    return matrix_to_euler_xyz(euler_xyz_to_matrix(angles.to(rot_dtype))).to(angles.dtype)


def compose_pose(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Apply a 7-D delta action to a 7-D pose; shapes broadcast, result has the state's dtype.

    xyz adds, rotation is ``R(delta) @ R(pose)`` (float64), gripper is clipped to [0, 1].
    """
    _check_last_dim(state, "state")
    _check_last_dim(action, "action")
    state, action = torch.broadcast_tensors(state, action.to(state.dtype))
    rot_dtype = _rotation_dtype(state.device)
    rotation = euler_xyz_to_matrix(action[..., 3:6].to(rot_dtype)) @ euler_xyz_to_matrix(state[..., 3:6].to(rot_dtype))
    position = state[..., :3] + action[..., :3]
    gripper = (state[..., 6:] + action[..., 6:]).clamp(0.0, 1.0)
    return torch.cat((position, matrix_to_euler_xyz(rotation).to(state.dtype), gripper), dim=-1)


def pose_difference(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The action that takes ``start`` to ``end`` (inverse of compose_pose up to the gripper clip).

    Delta xyz = end - start, delta rotation = Euler of ``R_end @ R_start^T``, delta gripper = end - start.
    """
    _check_last_dim(start, "start")
    _check_last_dim(end, "end")
    dtype = torch.promote_types(start.dtype, end.dtype)
    start, end = torch.broadcast_tensors(start.to(dtype), end.to(dtype))
    rot_dtype = _rotation_dtype(start.device)
    rotation = euler_xyz_to_matrix(end[..., 3:6].to(rot_dtype)) @ euler_xyz_to_matrix(
        start[..., 3:6].to(rot_dtype)
    ).transpose(-1, -2)
    delta = end - start
    return torch.cat((delta[..., :3], matrix_to_euler_xyz(rotation).to(dtype), delta[..., 6:]), dim=-1)


def trajectory_to_actions(poses: torch.Tensor) -> torch.Tensor:
    """(..., T, 7) poses -> (..., T-1, 7) actions between consecutive poses (DROID training labels)."""
    return pose_difference(poses[..., :-1, :], poses[..., 1:, :])


def chain_poses(start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Poses visited by applying ``actions (..., H, 7)`` from ``start (..., 7)``: (..., H+1, 7).

    Entry 0 is ``start`` itself; entry h+1 = compose_pose(entry h, action h). Loops over the
    horizon only (a handful of steps); every step is batched over all leading dimensions.
    """
    _check_last_dim(actions, "actions")
    if actions.dim() < 2:
        raise ValueError(f"actions must be (..., H, 7), got shape {tuple(actions.shape)}")
    current = start.expand(*actions.shape[:-2], 7)
    poses = [current]
    for step in actions.unbind(-2):
        current = compose_pose(current, step)
        poses.append(current)
    return torch.stack(poses, dim=-2)


def _check_last_dim(tensor: torch.Tensor, name: str) -> None:
    if tensor.shape[-1:] != (7,):
        raise ValueError(f"{name} must end in a 7-D [x, y, z, roll, pitch, yaw, gripper] axis, got shape {tuple(tensor.shape)}")
