"""A tiny but real `Arm` for bridge tests: a kinematic point that jumps to each target and a
camera that renders it as a bright square on a dark image (numpy only, no simulator)."""
from __future__ import annotations

import threading
import time

import numpy as np

from robot_bridge.arm import Arm, Observation

START_POSE = (0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0)


class PointArm(Arm):
    def __init__(self, size: int = 32, hz: float = 50.0, start=START_POSE):
        self._size, self._hz = size, hz
        self.state = np.array(start, dtype=np.float64)
        self.calls: list[tuple[str, float, np.ndarray | None]] = []   # ("move"|"hold", monotonic time, target)
        self._lock = threading.Lock()

    @property
    def camera_size(self) -> tuple[int, int]:
        return self._size, self._size

    @property
    def control_hz(self) -> float:
        return self._hz

    def observe(self) -> Observation:
        image = np.zeros((self._size, self._size, 3), dtype=np.uint8)
        # x in [0.25, 0.8] -> rows, y in [-0.45, 0.45] -> columns
        row = int(np.clip((self.state[0] - 0.25) / 0.55, 0, 1) * (self._size - 4))
        col = int(np.clip((self.state[1] + 0.45) / 0.9, 0, 1) * (self._size - 4))
        image[row:row + 4, col:col + 4] = (255, 200, 50)
        return Observation(image=image, state=self.state.copy(), timestamp=time.time())

    def move_to(self, target: np.ndarray) -> None:
        with self._lock:
            self.state = np.asarray(target, dtype=np.float64).copy()
            self.calls.append(("move", time.monotonic(), self.state.copy()))

    def hold(self) -> None:
        with self._lock:
            self.calls.append(("hold", time.monotonic(), None))

    def moves(self) -> list[np.ndarray]:
        with self._lock:
            return [target for kind, _, target in self.calls if kind == "move"]
