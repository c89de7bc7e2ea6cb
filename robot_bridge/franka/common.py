"""What the franky and pylibfranka arms share: camera, gripper worker, fault handling, pose conventions.

State convention (PROTOCOL.md section 3): the end effector's pose in the robot base frame, metres,
extrinsic xyz Euler angles, gripper 0 open .. 1 closed, computed from the library's 4x4
base -> end-effector transform (`O_T_EE`) with the numpy pose module (robot_bridge/poses.py).

Faults: a reflex or control error (collision, joint limit, communication) stops the robot inside
libfranka. The arm then holds: every `move_to` is refused (counted) until `request_recovery()` is
called (the `jepa-planner arm` process does so on SIGUSR1), after which the next control period runs
the library's error recovery and carries on. The fault is logged and kept in `stats()`.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from typing import Callable

import numpy as np

from ..arm import Arm, NoFreshObservation, Observation
from ..cameras import Camera
from ..poses import matrix_to_pose, pose_to_matrix

log = logging.getLogger(__name__)

# A joint configuration well away from singularities (the usual "ready" pose of FR3 and Panda).
READY_JOINTS = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
GRIPPER_SPEED_M_S = 0.05
GRIPPER_DEADBAND = 0.05        # ignore gripper requests closer than this (fraction of the full stroke)
GRIPPER_POLL_S = 0.1


class GripperWorker:
    """Runs blocking gripper calls off the control loop: the newest requested opening wins.

    `move(width_m)` and `read_width()` are the library's calls; both run on this worker's thread only,
    so a slow grasp never delays a control period and the library never sees concurrent calls.
    """

    def __init__(self, move: Callable[[float], object], read_width: Callable[[], float], max_width_m: float,
                 name: str = "gripper"):
        if not max_width_m > 0:
            raise ValueError(f"gripper max width must be positive, got {max_width_m}")
        self._move, self._read_width, self.max_width_m = move, read_width, float(max_width_m)
        self._wake = threading.Condition()
        self._requested: float | None = None
        self._commanded: float | None = None
        self._width = self.max_width_m
        self.failures = 0
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def closed_fraction(self) -> float:
        """0 open .. 1 closed, from the last measured width."""
        return float(np.clip(1.0 - self._width / self.max_width_m, 0.0, 1.0))

    def request(self, closed_fraction: float) -> None:
        closed_fraction = float(np.clip(closed_fraction, 0.0, 1.0))
        if self._commanded is not None and abs(closed_fraction - self._commanded) < GRIPPER_DEADBAND:
            return
        with self._wake:
            self._requested = closed_fraction
            self._wake.notify()

    def _loop(self) -> None:
        while self._running:
            with self._wake:
                if self._requested is None:
                    self._wake.wait(GRIPPER_POLL_S)
                request, self._requested = self._requested, None
            try:
                if request is not None:
                    self._commanded = request
                    self._move((1.0 - request) * self.max_width_m)
                self._width = float(self._read_width())
            except Exception as error:  # a failed grasp must not end the worker; the next request retries
                self.failures += 1
                log.warning("gripper: %s", error)
                time.sleep(GRIPPER_POLL_S)

    def close(self) -> None:
        self._running = False
        with self._wake:
            self._wake.notify()
        self._thread.join(timeout=5.0)


class FrankaArm(Arm):
    """A Franka arm (FR3 or Panda) with a fixed exterior camera; subclasses speak to one library."""

    #: exception types of the library that mean "the robot refused or aborted a motion"
    robot_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, camera: Camera, control_hz: float = 4.0, max_frame_age_s: float = 0.5,
                 gripper: GripperWorker | None = None):
        if not control_hz > 0 or not max_frame_age_s > 0:
            raise ValueError("control_hz and max_frame_age_s must be positive")
        self.camera, self._control_hz, self.max_frame_age_s = camera, float(control_hz), float(max_frame_age_s)
        self.gripper = gripper
        self.fault: str | None = None
        self.faults = 0
        self.refused_while_faulted = 0
        self.recoveries = 0
        self._recovery_requested = threading.Event()

    # -- Arm -----------------------------------------------------------------------------------

    @property
    def camera_size(self) -> tuple[int, int]:
        return self.camera.size

    @property
    def control_hz(self) -> float:
        return self._control_hz

    def observe(self) -> Observation:
        frame = self.camera.read_fresh(self.max_frame_age_s)   # StaleFrame: the client holds, sends nothing
        try:
            transform, joints = self.read_pose()
        except (*self.robot_errors, RuntimeError) as error:   # pylibfranka's read_once raises RuntimeError too
            # No pose, no observation: the client holds and sends nothing; the arm process keeps running
            # (it used to die here after a network fault) and reports the fault.
            if self.fault is None:
                self._on_fault(error)
            raise NoFreshObservation(f"robot state unreadable: {type(error).__name__}: {error}") from error
        gripper = self.gripper.closed_fraction if self.gripper is not None else 0.0
        return Observation(frame.image, matrix_to_pose(transform, gripper), frame.timestamp, joints)

    def move_to(self, target: np.ndarray) -> None:
        if not self._ready():
            self.refused_while_faulted += 1
            return
        try:
            self.command_pose(pose_to_matrix(target))
        except self.robot_errors as error:
            self._on_fault(error)
            return
        if self.gripper is not None:
            self.gripper.request(float(target[6]))

    def hold(self) -> None:
        if not self._ready():
            return
        try:
            self.command_hold()
        except self.robot_errors as error:
            self._on_fault(error)

    def close(self) -> None:
        if self.gripper is not None:
            self.gripper.close()
        self.camera.close()

    # -- faults ----------------------------------------------------------------------------------

    def request_recovery(self) -> None:
        """Ask for error recovery at the start of the next control period (safe from a signal handler)."""
        self._recovery_requested.set()

    def stats(self) -> dict[str, int | str]:
        stats: dict[str, int | str] = {"faults": self.faults, "recoveries": self.recoveries,
                                       "refused_while_faulted": self.refused_while_faulted}
        if self.fault is not None:
            stats["fault"] = self.fault
        if self.gripper is not None:
            stats["gripper_failures"] = self.gripper.failures
        return stats

    def _ready(self) -> bool:
        """False while faulted; runs a requested recovery first (on the control loop's thread)."""
        if self._recovery_requested.is_set():
            self._recovery_requested.clear()
            if self.fault is not None:
                try:
                    self.recover()
                except self.robot_errors as error:
                    log.error("recovery failed: %s", error)
                    self.fault = f"recovery failed: {error}"
                    return False
                log.warning("recovered from: %s", self.fault)
                self.fault = None
                self.recoveries += 1
        return self.fault is None

    def _on_fault(self, error: BaseException) -> None:
        self.fault = f"{type(error).__name__}: {error}"
        self.faults += 1
        log.error("robot fault, holding until recovery is requested (SIGUSR1 to `jepa-planner arm`): %s", self.fault)

    # -- what a library adapter implements ------------------------------------------------------

    @abstractmethod
    def read_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(4x4 measured base -> end-effector transform, joint positions or None)."""

    @abstractmethod
    def command_pose(self, transform: np.ndarray) -> None:
        """Make `transform` the Cartesian setpoint now (non-blocking, pre-empting the previous one)."""

    @abstractmethod
    def command_hold(self) -> None:
        """Bring the arm to rest where it is (non-blocking; called every period while holding)."""

    @abstractmethod
    def recover(self) -> None:
        """The library's error recovery after a reflex."""
