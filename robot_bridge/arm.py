"""The arm-side interface a lab implements to put a real (or simulated) arm behind the bridge.

Safety lives at the arm, not in the service: the client loop (`client.py`) clamps every target
through `SafetyLimits` before calling `Arm.move_to`, so an `Arm` implementation only has to move.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

STATE_DIM = 7  # [x, y, z (m), roll, pitch, yaw (rad, extrinsic "xyz"), gripper 0=open..1=closed]


class UnsafeTarget(ValueError):
    """A target that cannot be made safe by clamping (wrong shape, NaN or infinity)."""


class TargetLeavesLimits(UnsafeTarget):
    """The arm's measured pose is outside the limits and the target does not bring it back in.

    The caller holds instead of moving (and reports it): from outside the limits only a target
    that reduces the excess, on no axis increasing it, is accepted.
    """


class NoFreshObservation(RuntimeError):
    """`Arm.observe` has nothing fresh to send this period (e.g. the camera's newest frame is too old):
    the client loop holds the arm and sends no observation."""


# Per axis of `SafetyLimits.excess` (box metres, roll/pitch/yaw radians): how far past a limit a
# measured pose may read and still count as inside.
MEASURED_TOLERANCE = np.array([1e-3, 1e-2, 1e-2, 1e-2])


def _wrap_angle(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class SafetyLimits:
    """What the arm accepts, whatever the service asks: the one place the arm's limits live.

    Applied to every target before `move_to` (`clamp`) and to the arm's MEASURED pose: while the
    measured pose is outside the box or the orientation range, only targets that move it back
    are accepted (`TargetLeavesLimits` otherwise). The defaults suit a Franka Panda with its base
    at the origin, the table top at z = 0 and the gripper pointing down (every default and its
    meaning is listed in robot_bridge/PROTOCOL.md, section 5.4).
    """

    workspace_low: tuple[float, float, float] = (0.25, -0.45, 0.02)
    workspace_high: tuple[float, float, float] = (0.80, 0.45, 0.70)
    max_translation_m: float = 0.05    # per control step, from the current position
    max_rotation_rad: float = 0.25     # per control step, per Euler angle, from the current angles
    # Absolute orientation: each extrinsic xyz Euler angle may differ from the reference by at
    # most its range (wrapped). Reference = gripper pointing straight down (roll pi).
    orientation_reference: tuple[float, float, float] = (np.pi, 0.0, 0.0)
    orientation_range_rad: tuple[float, float, float] = (0.6, 0.6, 1.6)   # roll, pitch, yaw

    def __post_init__(self) -> None:
        low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
        if low.shape != (3,) or high.shape != (3,) or not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError("workspace corners must be three finite numbers each")
        if not (low < high).all():
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")
        if not (self.max_translation_m > 0 and self.max_rotation_rad > 0):
            raise ValueError("per-step limits must be positive")
        reference = np.asarray(self.orientation_reference, float)
        spans = np.asarray(self.orientation_range_rad, float)
        if reference.shape != (3,) or not np.isfinite(reference).all():
            raise ValueError("orientation_reference must be three finite angles (roll, pitch, yaw)")
        if spans.shape != (3,) or not (np.isfinite(spans).all() and (spans > 0).all() and (spans <= np.pi).all()):
            raise ValueError("orientation_range_rad must be three angles in (0, pi] (roll, pitch, yaw)")

    def excess(self, pose: np.ndarray) -> np.ndarray:
        """How far a pose is outside the limits: [metres outside the box, roll, pitch, yaw radians
        beyond their ranges]; all zero inside."""
        pose = np.asarray(pose, dtype=np.float64)
        below = np.maximum(np.asarray(self.workspace_low) - pose[:3], 0.0)
        above = np.maximum(pose[:3] - np.asarray(self.workspace_high), 0.0)
        deviation = np.abs(_wrap_angle(pose[3:6] - np.asarray(self.orientation_reference)))
        beyond = np.maximum(deviation - np.asarray(self.orientation_range_rad), 0.0)
        return np.concatenate([[float(np.linalg.norm(below + above))], beyond])

    def clamp(self, target: np.ndarray, current: np.ndarray) -> np.ndarray:
        """The nearest safe target: inside the box and orientation range, at most one step from
        `current`, gripper in [0, 1].

        The absolute limits apply first and the step limit last, so the arm never jumps, even when
        it starts outside and is being brought back in. While `current` (the measured pose) is
        outside, a target that does not move it back (its own excess larger on some axis, or not
        smaller on any) raises TargetLeavesLimits: the caller holds. Raises UnsafeTarget for wrong
        shapes or non-finite numbers, in the target or in the arm's own state.
        """
        target = np.asarray(target, dtype=np.float64)
        current = np.asarray(current, dtype=np.float64)
        for name, pose in (("target", target), ("current state", current)):
            if pose.shape != (STATE_DIM,):
                raise UnsafeTarget(f"{name} must have shape ({STATE_DIM},), got {pose.shape}")
            if not np.isfinite(pose).all():
                raise UnsafeTarget(f"{name} contains NaN or infinity")
        outside = self.excess(current)
        # A measured pose this close to a limit counts as inside: an arm servoing to a target on the
        # box's face reads back a hair beyond it (float rounding, sensor noise, overshoot).
        outside = np.where(outside > MEASURED_TOLERANCE, outside, 0.0)
        if outside.any():
            wanted = self.excess(target)
            if (wanted > outside).any() or not (wanted < outside).any():
                raise TargetLeavesLimits(
                    f"measured pose {np.round(current[:6], 3).tolist()} is outside the limits (excess "
                    f"{np.round(outside, 3).tolist()} m/rad) and the target does not move it back")
        safe = np.empty(STATE_DIM)
        position = np.clip(target[:3], self.workspace_low, self.workspace_high)
        step = position - current[:3]
        distance = float(np.linalg.norm(step))
        if distance > self.max_translation_m:
            step *= self.max_translation_m / distance
        safe[:3] = current[:3] + step
        reference, spans = np.asarray(self.orientation_reference), np.asarray(self.orientation_range_rad)
        angles = reference + np.clip(_wrap_angle(target[3:6] - reference), -spans, spans)
        turn = np.clip(_wrap_angle(angles - current[3:6]), -self.max_rotation_rad, self.max_rotation_rad)
        safe[3:6] = _wrap_angle(current[3:6] + turn)
        safe[6] = np.clip(target[6], 0.0, 1.0)
        return safe

    def overridden(self, workspace: "tuple[float, ...] | None" = None, max_translation_m: float | None = None,
                   max_rotation_rad: float | None = None) -> "SafetyLimits":
        """These limits with some replaced (None keeps this one's): what command-line flags ask for.
        `workspace`: (xmin, ymin, zmin, xmax, ymax, zmax)."""
        changes: dict = {}
        if workspace:
            changes.update(workspace_low=tuple(workspace[:3]), workspace_high=tuple(workspace[3:]))
        if max_translation_m:
            changes["max_translation_m"] = max_translation_m
        if max_rotation_rad:
            changes["max_rotation_rad"] = max_rotation_rad
        return dataclasses.replace(self, **changes)

    def to_hello(self) -> dict[str, list[float] | float]:
        """The limits as the optional `limits` map of a hello (PROTOCOL.md 4.1), so the service plans within them."""
        return {"workspace_low": [float(v) for v in self.workspace_low],
                "workspace_high": [float(v) for v in self.workspace_high],
                "max_translation_m": float(self.max_translation_m), "max_rotation_rad": float(self.max_rotation_rad)}

    @classmethod
    def from_hello(cls, limits: dict) -> "SafetyLimits":
        """Inverse of `to_hello`; raises ValueError for limits SafetyLimits would refuse."""
        return cls(workspace_low=tuple(limits["workspace_low"]), workspace_high=tuple(limits["workspace_high"]),
                   max_translation_m=float(limits["max_translation_m"]),
                   max_rotation_rad=float(limits["max_rotation_rad"]))


@dataclass(frozen=True)
class Observation:
    image: np.ndarray            # (H, W, 3) uint8 RGB from the fixed exterior camera
    state: np.ndarray            # (7,) float64 end-effector state, see STATE_DIM
    timestamp: float             # seconds, the arm's clock (time.time() for real arms)
    joints: np.ndarray | None = None  # optional joint positions (rad)


class Arm(ABC):
    """An arm with a camera: observe, move to an absolute end-effector target, hold."""

    @property
    @abstractmethod
    def camera_size(self) -> tuple[int, int]:
        """(height, width) of the images `observe` returns."""

    @property
    @abstractmethod
    def control_hz(self) -> float:
        """How many targets per second the arm expects."""

    @abstractmethod
    def observe(self) -> Observation:
        """The current camera image and end-effector state."""

    @abstractmethod
    def move_to(self, target: np.ndarray) -> None:
        """Move towards an absolute 7-D end-effector target for one control period.

        The caller has already clamped `target` to the safety limits. The client loop calls
        `move_to` at most once per control period (at `control_hz`), and `hold` whenever the arm
        must keep still: in a period without a fresh target, and mid-period when the last target's
        freshness deadline passes or the service says hold or stop.
        """

    @abstractmethod
    def hold(self) -> None:
        """Stop moving and keep the current pose for one control period (also called when plans
        stop arriving, and repeatedly while they stay away)."""

    def close(self) -> None:
        """Release hardware or simulator resources."""
