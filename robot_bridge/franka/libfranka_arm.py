"""A Franka arm through Franka's own Python bindings, pylibfranka (`pip install 'jepa-planner[libfranka]'`).

pylibfranka exposes libfranka's 1 kHz loop as `readOnce` / `writeOnce` on an active Cartesian pose
controller, so this adapter runs that loop in a thread: each tick it moves the commanded pose
toward the newest target along a velocity- and acceleration-limited profile (Franka's Cartesian
limits scaled by the relative dynamics factor, in robot time from `readOnce`), for translation and
rotation separately. `move_to` only swaps the target; `hold` aims at the point where the arm can
stop from its current velocity. The profile limits acceleration but not jerk: franky (Ruckig) is
the smoother choice on hardware; see REAL_ARM.md.

pylibfranka and franky cannot be imported into one process (both register libfranka's types).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..cameras import Camera
from ..poses import matrix_to_rotvec, rotvec_to_matrix
from .common import GRIPPER_SPEED_M_S, READY_JOINTS, FrankaArm, GripperWorker

log = logging.getLogger(__name__)

# Franka's Cartesian limits (Panda datasheet, the lower of Panda and FR3), scaled by the dynamics factor.
MAX_TRANSLATION_VELOCITY = 1.7      # m/s
MAX_TRANSLATION_ACCELERATION = 13.0  # m/s^2
MAX_ROTATION_VELOCITY = 2.5         # rad/s
MAX_ROTATION_ACCELERATION = 25.0    # rad/s^2
HOME_JOINT_VELOCITY = 0.5           # rad/s at dynamics 1
START_TIMEOUT_S = 30.0


class ControlLoopDown(RuntimeError):
    """The adapter's 1 kHz loop ended (its libfranka error is the cause)."""


def _pylibfranka():
    try:
        import pylibfranka
    except ImportError as error:
        raise ImportError("the libfranka arm needs pylibfranka: pip install 'jepa-planner[libfranka]'") from error
    return pylibfranka


@dataclass(frozen=True)
class MotionLimits:
    velocity: float
    acceleration: float
    angular_velocity: float
    angular_acceleration: float

    @classmethod
    def scaled(cls, dynamics: float) -> "MotionLimits":
        return cls(MAX_TRANSLATION_VELOCITY * dynamics, MAX_TRANSLATION_ACCELERATION * dynamics,
                   MAX_ROTATION_VELOCITY * dynamics, MAX_ROTATION_ACCELERATION * dynamics)


def approach(error: np.ndarray, velocity: np.ndarray, dt: float, max_velocity: float,
             max_acceleration: float) -> tuple[np.ndarray, np.ndarray]:
    """One tick toward `error` away: (step, new velocity), speed at most `max_velocity` and
    sqrt(2 a d) (so it can stop at the target), velocity change at most `max_acceleration * dt`."""
    distance = float(np.linalg.norm(error))
    speed = min(max_velocity, np.sqrt(2.0 * max_acceleration * distance))
    desired = error * (speed / distance) if distance > 1e-12 else np.zeros(3)
    change = desired - velocity
    change_norm = float(np.linalg.norm(change))
    limit = max_acceleration * dt
    if change_norm > limit:
        change *= limit / change_norm
    velocity = velocity + change
    step = velocity * dt
    if float(np.linalg.norm(step)) >= distance and float(np.dot(step, error)) >= 0:   # arriving this tick
        return error.copy(), np.zeros(3)
    return step, velocity


class LibfrankaArm(FrankaArm):
    def __init__(self, host: str, camera: Camera, *, control_hz: float = 4.0, dynamics: float = 0.1,
                 realtime: bool = False, gripper: bool = True, max_frame_age_s: float = 0.5):
        if not 0 < dynamics <= 1:
            raise ValueError(f"relative dynamics factor must be in (0, 1], got {dynamics}")
        pf = _pylibfranka()
        self._pf = pf
        self.robot_errors = tuple(getattr(pf, name) for name in (
            "FrankaException", "ControlException", "CommandException", "NetworkException",
            "InvalidOperationException", "RealtimeException") if isinstance(getattr(pf, name, None), type)
        ) + (ControlLoopDown,)
        config = pf.RealtimeConfig.kEnforce if realtime else pf.RealtimeConfig.kIgnore
        self.robot = pf.Robot(host, config)
        self.limits = MotionLimits.scaled(dynamics)
        self.dynamics = dynamics
        worker = None
        if gripper:
            hand = pf.Gripper(host)
            worker = GripperWorker(lambda width: hand.move(width, GRIPPER_SPEED_M_S), lambda: hand.read_once().width,
                                   hand.read_once().max_width, name="libfranka-gripper")
        super().__init__(camera, control_hz, max_frame_age_s, worker)
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None          # 4x4, None: keep the commanded pose
        self._hold_requested = False
        self._measured: tuple[np.ndarray, np.ndarray] | None = None
        self._loop_error: BaseException | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self.ticks = 0

    # -- the 1 kHz loop ------------------------------------------------------------------------

    def start(self) -> "LibfrankaArm":
        """Start the Cartesian pose loop (call after `go_home`); returns once the first state is read."""
        self._loop_error, self._measured, self._target, self._running = None, None, None, True
        self._thread = threading.Thread(target=self._control_loop, name="libfranka-1kHz", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._measured is None and self._loop_error is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._loop_error is not None:
            raise self._loop_error
        if self._measured is None:
            raise TimeoutError(f"no robot state within {START_TIMEOUT_S:g} s of starting Cartesian control")
        return self

    def _control_loop(self) -> None:
        pf = self._pf
        try:
            control = self.robot.start_cartesian_pose_control(pf.ControllerMode.JointImpedance)
            state, _ = control.readOnce()
            commanded = self._transform(state.O_T_EE_c) if any(state.O_T_EE_c) else self._transform(state.O_T_EE)
            velocity, angular = np.zeros(3), np.zeros(3)
            while True:
                state, period = control.readOnce()
                dt = period.to_sec()
                self._measured = (self._transform(state.O_T_EE), np.asarray(state.q, dtype=np.float64))
                with self._lock:
                    if self._hold_requested:      # aim where the current velocity can stop
                        self._hold_requested = False
                        stop = commanded.copy()
                        speed = float(np.linalg.norm(velocity))
                        if speed > 0:
                            stop[:3, 3] += velocity * (speed / (2.0 * self.limits.acceleration))
                        self._target = stop
                    target, running = self._target, self._running
                if target is not None and dt > 0:
                    step, velocity = approach(target[:3, 3] - commanded[:3, 3], velocity, dt,
                                              self.limits.velocity, self.limits.acceleration)
                    turn_error = matrix_to_rotvec(target[:3, :3] @ commanded[:3, :3].T)
                    turn, angular = approach(turn_error, angular, dt, self.limits.angular_velocity,
                                             self.limits.angular_acceleration)
                    commanded = commanded.copy()
                    commanded[:3, 3] += step
                    commanded[:3, :3] = rotvec_to_matrix(turn) @ commanded[:3, :3]
                command = pf.CartesianPose(commanded.flatten(order="F").tolist())
                at_rest = not np.any(velocity) and not np.any(angular)
                if not running and at_rest:
                    command.motion_finished = True
                    control.writeOnce(command)
                    return
                if not running:        # closing: stop where we are, then finish
                    with self._lock:
                        self._hold_requested = self._hold_requested or self._target is not None and not at_rest
                control.writeOnce(command)
                self.ticks += 1
        except Exception as error:  # a reflex or a lost connection: the robot has stopped itself
            self._loop_error = error
        finally:
            self._running = False

    @staticmethod
    def _transform(column_major: list[float]) -> np.ndarray:
        return np.asarray(column_major, dtype=np.float64).reshape(4, 4, order="F")

    def _check_loop(self) -> None:
        """Raise ControlLoopDown (a fault) when the 1 kHz loop has ended: a reflex or a lost connection."""
        if self._loop_error is not None:
            error, self._loop_error = self._loop_error, None
            raise ControlLoopDown(f"{type(error).__name__}: {error}") from error
        if self._thread is None or not self._thread.is_alive():
            raise ControlLoopDown("the Cartesian control loop is not running")

    # -- FrankaArm -------------------------------------------------------------------------------

    def go_home(self, joints: tuple[float, ...] = READY_JOINTS) -> None:
        """Blocking joint motion (cosine profile in robot time) to a non-singular start; before `start`."""
        pf = self._pf
        start = np.asarray(self.robot.read_once().q, dtype=np.float64)
        goal = np.asarray(joints, dtype=np.float64)
        duration = max(1.0, float(np.max(np.abs(goal - start))) / (HOME_JOINT_VELOCITY * self.dynamics) * 1.5)
        control = self.robot.start_joint_position_control(pf.ControllerMode.JointImpedance)
        elapsed = 0.0
        control.readOnce()
        while True:
            _, period = control.readOnce()
            elapsed += period.to_sec()
            fraction = min(1.0, elapsed / duration)
            blend = 0.5 * (1.0 - np.cos(np.pi * fraction))
            command = pf.JointPositions((start + blend * (goal - start)).tolist())
            if fraction >= 1.0:
                command.motion_finished = True
                control.writeOnce(command)
                return
            control.writeOnce(command)

    def read_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        measured = self._measured
        if measured is None or self._thread is None or not self._thread.is_alive():
            state = self.robot.read_once()    # the loop is down (before start, after a fault)
            return self._transform(state.O_T_EE), np.asarray(state.q, dtype=np.float64)
        return measured

    def command_pose(self, transform: np.ndarray) -> None:
        self._check_loop()
        with self._lock:
            self._target = np.array(transform, dtype=np.float64)
            self._hold_requested = False

    def command_hold(self) -> None:
        self._check_loop()
        with self._lock:
            if self._target is not None:
                self._hold_requested = True

    def recover(self) -> None:
        if self._thread is not None:
            self._running = False
            self._thread.join(timeout=5.0)
        self.robot.automatic_error_recovery()
        self.start()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.command_hold()
            with self._lock:
                self._running = False
            self._thread.join(timeout=10.0)
        super().close()
