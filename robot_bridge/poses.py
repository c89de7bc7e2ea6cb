"""7-D end-effector pose math in numpy (arm side; the planner has a batched torch twin).

Pose = [x, y, z, roll, pitch, yaw, gripper] with SciPy's extrinsic "xyz" Euler angles, so
R = Rz(yaw) @ Ry(pitch) @ Rx(roll). Semantics follow the official V-JEPA 2-AC helpers
(SPEC section 6): `compose_pose` adds positions and left-multiplies rotations, and
`pose_difference` is its inverse, used for the DROID-style action labels.
All functions accept any leading batch shape.
"""
from __future__ import annotations

import numpy as np

# Below this |cos(pitch)| the roll and yaw axes coincide; like SciPy, put the whole rotation in roll.
_GIMBAL_EPS = 1e-9


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """(..., 3) extrinsic xyz angles -> (..., 3, 3) rotation matrices."""
    euler = np.asarray(euler, dtype=np.float64)
    ca, cb, cc = np.cos(euler[..., 0]), np.cos(euler[..., 1]), np.cos(euler[..., 2])
    sa, sb, sc = np.sin(euler[..., 0]), np.sin(euler[..., 1]), np.sin(euler[..., 2])
    rows = [
        [cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc],
        [cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc],
        [-sb, sa * cb, ca * cb],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) extrinsic xyz angles, pitch in [-pi/2, pi/2]."""
    m = np.asarray(matrix, dtype=np.float64)
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    cos_pitch = np.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)
    regular = cos_pitch > _GIMBAL_EPS
    roll = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 2]), 0.0)
    yaw = np.where(regular, np.arctan2(m[..., 1, 0], m[..., 0, 0]), 0.0)
    # Gimbal lock: only roll -/+ yaw is defined; set yaw = 0 and solve roll from the first row.
    up = m[..., 2, 0] < 0  # pitch = +pi/2
    locked_roll = np.where(up, np.arctan2(m[..., 0, 1], m[..., 0, 2]), np.arctan2(-m[..., 0, 1], -m[..., 0, 2]))
    roll = np.where(regular, roll, locked_roll)
    return np.stack([roll, pitch, yaw], axis=-1)


def compose_pose(pose: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The pose reached by applying a delta action: p + dp, R(d) @ R(p), clip(g + dg, 0, 1)."""
    pose, action = np.asarray(pose, dtype=np.float64), np.asarray(action, dtype=np.float64)
    rotation = euler_to_matrix(action[..., 3:6]) @ euler_to_matrix(pose[..., 3:6])
    return np.concatenate(
        [
            pose[..., :3] + action[..., :3],
            matrix_to_euler(rotation),
            np.clip(pose[..., 6:7] + action[..., 6:7], 0.0, 1.0),
        ],
        axis=-1,
    )


def pose_difference(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The delta action taking `start` to `end`: e - s, R_e @ R_s^T as xyz Euler, g_e - g_s."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    rotation = euler_to_matrix(end[..., 3:6]) @ np.swapaxes(euler_to_matrix(start[..., 3:6]), -1, -2)
    return np.concatenate(
        [end[..., :3] - start[..., :3], matrix_to_euler(rotation), end[..., 6:7] - start[..., 6:7]],
        axis=-1,
    )


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """(7,) or (6,) pose -> (4, 4) homogeneous base -> end-effector transform (the gripper is dropped)."""
    pose = np.asarray(pose, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = euler_to_matrix(pose[3:6])
    matrix[:3, 3] = pose[:3]
    return matrix


def matrix_to_pose(matrix: np.ndarray, gripper: float) -> np.ndarray:
    """(4, 4) base -> end-effector transform and a gripper value -> (7,) pose."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.concatenate([matrix[:3, 3], matrix_to_euler(matrix[:3, :3]), [gripper]])


def matrix_to_rotvec(matrix: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> rotation vector (axis * angle, angle in [0, pi])."""
    m = np.asarray(matrix, dtype=np.float64)
    cos_angle = np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]])
    if angle < 1e-9:
        return 0.5 * axis                                # small angle: the skew part is the vector
    if angle > np.pi / 2:   # sin(angle) -> 0 near a half turn: read the axis from the symmetric part instead
        outer = ((m + m.T) / 2.0 - cos_angle * np.eye(3)) / (1.0 - cos_angle)   # = n n^T
        column = int(np.argmax(np.diag(outer)))
        unit = outer[:, column] / np.sqrt(outer[column, column])
        return (unit if unit @ axis >= 0 else -unit) * angle
    return axis * (angle / (2.0 * np.sin(angle)))


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vector -> (3, 3) rotation (Rodrigues)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = rotvec / angle
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1.0 - np.cos(angle)) * skew @ skew
