"""A Franka arm through franky-control (`pip install 'jepa-planner[franky]'`).

franky runs libfranka's 1 kHz loop in C++ and plans every Cartesian motion with Ruckig (jerk
limited, within the robot's velocity / acceleration limits scaled by the relative dynamics
factor). An asynchronous motion is pre-empted by the next one, which is exactly `move_to`:
each control period replaces the setpoint. `hold` sends one `CartesianStopMotion` after a move
(decelerate within the limits, then stay) and nothing while already at rest.
"""
from __future__ import annotations

import logging

import numpy as np

from ..cameras import Camera
from .common import GRIPPER_SPEED_M_S, READY_JOINTS, FrankaArm, GripperWorker

log = logging.getLogger(__name__)


def _franky():
    try:
        import franky
    except ImportError as error:
        raise ImportError("the franky arm needs franky-control: pip install 'jepa-planner[franky]'") from error
    return franky


class FrankyArm(FrankaArm):
    def __init__(self, host: str, camera: Camera, *, control_hz: float = 4.0, dynamics: float = 0.1,
                 realtime: bool = False, gripper: bool = True, max_frame_age_s: float = 0.5):
        """`dynamics`: franky's relative dynamics factor (0..1] scaling velocity, acceleration and jerk
        limits. `realtime`: require a real-time kernel (RealtimeConfig.Enforce); False = Ignore."""
        if not 0 < dynamics <= 1:
            raise ValueError(f"relative dynamics factor must be in (0, 1], got {dynamics}")
        franky = _franky()
        self._franky = franky
        self.robot_errors = tuple(getattr(franky, name) for name in (
            "Exception", "ControlException", "CommandException", "NetworkException", "InvalidOperationException",
            "RealtimeException") if isinstance(getattr(franky, name, None), type))
        config = franky.RealtimeConfig.Enforce if realtime else franky.RealtimeConfig.Ignore
        self.robot = franky.Robot(host, realtime_config=config)
        self.robot.relative_dynamics_factor = dynamics
        worker = None
        if gripper:
            hand = franky.Gripper(host)
            worker = GripperWorker(lambda width: hand.move(width, GRIPPER_SPEED_M_S), lambda: hand.width,
                                   hand.max_width, name="franky-gripper")
        self._moving = False
        super().__init__(camera, control_hz, max_frame_age_s, worker)

    def go_home(self, joints: tuple[float, ...] = READY_JOINTS) -> None:
        """Blocking joint motion to a non-singular start (Cartesian motions from a singular pose fail)."""
        franky = self._franky
        self.robot.move(franky.JointMotion(franky.JointState(list(joints))))

    def read_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        transform = np.asarray(self.robot.current_cartesian_state.pose.end_effector_pose.matrix, dtype=np.float64)
        return transform, np.asarray(self.robot.current_joint_state.position, dtype=np.float64)

    def command_pose(self, transform: np.ndarray) -> None:
        franky = self._franky
        motion = franky.CartesianMotion(franky.Affine(transform), franky.ReferenceType.Absolute)
        self.robot.move(motion, asynchronous=True)
        self._moving = True

    def command_hold(self) -> None:
        if self._moving:
            self.robot.move(self._franky.CartesianStopMotion(), asynchronous=True)
            self._moving = False
        else:
            self.robot.poll_motion()   # raises a fault from the motion that just ended, if any

    def recover(self) -> None:
        self.robot.recover_from_errors()
        self._moving = False
