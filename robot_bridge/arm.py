"""The arm-side interface a lab implements to put a real (or simulated) arm behind the bridge.

Safety lives at the arm, not in the service: the client loop (`client.py`) clamps every target
through `SafetyLimits` before calling `Arm.move_to`, so an `Arm` implementation only has to move.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

STATE_DIM = 7  # [x, y, z (m), roll, pitch, yaw (rad, extrinsic "xyz"), gripper 0=open..1=closed]


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

        The caller has already clamped `target` to the workspace and step limits.
        """

    @abstractmethod
    def hold(self) -> None:
        """Stop moving and keep the current pose (also called when plans stop arriving)."""

    def close(self) -> None:
        """Release hardware or simulator resources."""
