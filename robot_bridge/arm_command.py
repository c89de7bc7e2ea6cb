"""`jepa-planner arm`: the arm-side process for a real Franka (franky or pylibfranka) or the sim arm.

Torch-free: it imports only robot_bridge, numpy, pyzmq, msgpack, OpenCV and the robot library, so an
arm computer installs `jepa-planner[franky]` (or `[libfranka]`) without the model stack (REAL_ARM.md).
The arm goes through the same `ArmClient` as the sim arm: its `SafetyLimits` clamp every target and
are announced in hello, so the service plans within them; without fresh actions it holds; `stop`
ends the loop. `--dry-run` connects, observes and logs every target it would move to, and never
moves. SIGINT/SIGTERM hold and end the run; SIGUSR1 asks a faulted arm to recover and continue.

It prints one JSON summary: the loop's counters, the arm's faults, and per-step measurements:
tracking error (the commanded target vs the pose measured one control period later), the time
spent in observe / move_to / hold, the time from an observation to its action, and how far the
arm's clamp moved the service's targets.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from .arm import Arm, Observation, SafetyLimits
from .client import ArmClient, RunSummary, StepRecord, Subscriber, stop_on_signals
from .security import ClientKeys, InsecureEndpoint
from .service import DEFAULT_ENDPOINT

log = logging.getLogger(__name__)
ROBOTS = ("franky", "libfranka", "sim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robot", choices=ROBOTS, required=True, help="which arm: franky, libfranka or the MuJoCo sim arm")
    parser.add_argument("--host", help="the robot's FCI address (franky, libfranka), e.g. 172.16.0.2, or 127.0.0.1 for franka-sim")
    parser.add_argument("--camera", help="camera spec (franky, libfranka): usb:N, rtsp://..., a video file, "
                                         "realsense[:SERIAL] or replay:DIR")
    parser.add_argument("--image-size", type=int, default=256, help="camera frames are cropped and resized to this square (default %(default)s)")
    parser.add_argument("--max-frame-age", type=float, default=0.5, help="never send a frame older than this (s); hold instead (default %(default)s)")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="bridge service endpoint (default %(default)s)")
    parser.add_argument("--robot-id", default="franka0", help="robot id announced to the service (default %(default)s)")
    parser.add_argument("--rate", type=float, default=4.0, help="control rate in Hz (default %(default)s, DROID's)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many control periods")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--action-timeout", type=float, default=0.5, help="hold when no fresh action for this long (s)")
    parser.add_argument("--workspace", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                        help="safety box for the end effector, metres, base frame (default: SafetyLimits defaults)")
    parser.add_argument("--max-step", type=float, default=None, help="max translation per control period (m)")
    parser.add_argument("--max-rotation", type=float, default=None, help="max change per Euler angle per period (rad)")
    parser.add_argument("--dynamics", type=float, default=0.1,
                        help="relative dynamics factor (0, 1]: scales the robot's velocity/acceleration/jerk limits (default %(default)s)")
    parser.add_argument("--realtime", choices=("auto", "enforce", "ignore"), default="auto",
                        help="libfranka real-time scheduling: enforce, ignore, or auto (enforce on a real-time kernel)")
    parser.add_argument("--no-gripper", action="store_true", help="the arm has no Franka Hand (or leave it alone)")
    parser.add_argument("--home", action="store_true", help="move the joints to the ready pose before starting (not with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="observe and log the targets; never move the arm")
    parser.add_argument("--image-format", choices=("jpeg", "raw"), default="jpeg")
    parser.add_argument("--server-key", type=Path, help="the service's public key file (NAME.key) to pin (CURVE)")
    parser.add_argument("--client-key", type=Path, help="this arm's key pair file (NAME.key_secret) (CURVE)")
    parser.add_argument("--log", type=Path, help="write one JSON line per control period here")
    parser.add_argument("--summary", type=Path, help="write the run summary as JSON here")


def realtime_kernel() -> bool:
    """True on a PREEMPT_RT kernel (what libfranka's RealtimeConfig.Enforce needs)."""
    try:
        return Path("/sys/kernel/realtime").read_text().strip() == "1"
    except OSError:
        return False


def safety_limits(args: argparse.Namespace) -> SafetyLimits:
    return SafetyLimits().overridden(args.workspace, args.max_step, args.max_rotation)


class DryRunArm(Arm):
    """Observes through the real arm and camera; `move_to` and `hold` only record (the arm never moves)."""

    def __init__(self, arm: Arm):
        self.arm = arm
        self.targets: list[np.ndarray] = []

    @property
    def camera_size(self) -> tuple[int, int]:
        return self.arm.camera_size

    @property
    def control_hz(self) -> float:
        return self.arm.control_hz

    def observe(self) -> Observation:
        return self.arm.observe()

    def move_to(self, target: np.ndarray) -> None:
        self.targets.append(np.array(target))
        log.info("dry run: would move to %s", np.array2string(np.asarray(target), precision=4))

    def hold(self) -> None:
        pass

    def close(self) -> None:
        self.arm.close()


class TimedArm(Arm):
    """Delegates to an arm and times each call (seconds), for the per-step latency report."""

    def __init__(self, arm: Arm):
        self.arm = arm
        self.times: dict[str, list[float]] = {"observe": [], "move_to": [], "hold": []}
        self.last_call: dict[str, float] = {}

    @property
    def camera_size(self) -> tuple[int, int]:
        return self.arm.camera_size

    @property
    def control_hz(self) -> float:
        return self.arm.control_hz

    def _timed(self, name: str, call, *args):
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.times[name].append(time.perf_counter() - started)
            self.last_call[name] = time.time()

    def observe(self) -> Observation:
        return self._timed("observe", self.arm.observe)

    def move_to(self, target: np.ndarray) -> None:
        self._timed("move_to", self.arm.move_to, target)

    def hold(self) -> None:
        self._timed("hold", self.arm.hold)

    def close(self) -> None:
        self.arm.close()


class StepMeasurements(Subscriber):
    """Tracking error, action latency, clamp corrections and an optional JSON-lines log of every period.

    The loop observes at the start of a period and commands at its end, so the observation right
    after a move was taken as the move began: a target's tracking error is read one period later,
    from the observation after that.
    """

    def __init__(self, log_path: Path | None = None):
        self.tracking_errors_m: list[float] = []
        self.action_latencies_s: list[float] = []      # observation taken -> its action received
        self.clamp_corrections_m: list[float] = []
        self._targets: list[np.ndarray | None] = [None, None]   # commanded at the end of the last two periods
        self._observed_at: dict[int, float] = {}
        self._log = open(log_path, "w") if log_path is not None else None

    def on_step(self, step: StepRecord) -> None:
        now = time.time()
        earlier = self._targets[0]
        if earlier is not None:
            self.tracking_errors_m.append(float(np.linalg.norm(step.observation.state[:3] - earlier[:3])))
        self._targets = [self._targets[1], step.target]
        if step.seq is not None:
            self._observed_at[step.seq] = step.observation.timestamp
            if len(self._observed_at) > 64:
                self._observed_at.pop(next(iter(self._observed_at)))
        if step.action is not None and step.target is not None:
            self.clamp_corrections_m.append(float(np.linalg.norm(step.target[:3] - step.action.target[:3])))
            observed = self._observed_at.get(step.action.seq)
            if observed is not None and step.action_age_s is not None:
                self.action_latencies_s.append(now - step.action_age_s - observed)
        if self._log is not None:
            record: dict[str, Any] = {"t": now, "index": step.index, "command": step.command, "seq": step.seq,
                                      "state": step.observation.state.tolist(),
                                      "target": None if step.target is None else step.target.tolist(),
                                      "action_seq": None if step.action is None else step.action.seq,
                                      "planning_ms": None if step.action is None else step.action.planning_ms,
                                      "action_age_s": step.action_age_s}
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()

    def on_end(self, summary: RunSummary) -> None:
        if self._log is not None:
            self._log.close()


def _spread(values: list[float], scale: float) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values) * scale
    return {"mean": round(float(array.mean()), 3), "p50": round(float(np.percentile(array, 50)), 3),
            "p95": round(float(np.percentile(array, 95)), 3), "max": round(float(array.max()), 3), "n": len(values)}


def open_arm(args: argparse.Namespace) -> Arm:
    size = (args.image_size, args.image_size)
    if args.robot == "sim":
        os.environ.setdefault("MUJOCO_GL", "egl")
        from .sim import SimArm, SimConfig  # after MUJOCO_GL: MuJoCo picks its GL backend at import

        return SimArm(SimConfig(image_height=args.image_size, image_width=args.image_size))
    if not args.host:
        raise ValueError(f"--robot {args.robot} needs --host (the robot's FCI address)")
    if not args.camera:
        raise ValueError(f"--robot {args.robot} needs --camera (see --help)")
    from .cameras import open_camera

    realtime = args.realtime == "enforce" or (args.realtime == "auto" and realtime_kernel())
    if not realtime:
        log.warning("real-time scheduling not enforced (RealtimeConfig Ignore): fine for franka-sim; "
                    "a real arm wants a PREEMPT_RT kernel")
    camera = open_camera(args.camera, size)
    options = dict(control_hz=args.rate, dynamics=args.dynamics, realtime=realtime, gripper=not args.no_gripper,
                   max_frame_age_s=args.max_frame_age)
    try:
        if args.robot == "franky":
            from .franka.franky_arm import FrankyArm

            arm = FrankyArm(args.host, camera, **options)
        else:
            from .franka.libfranka_arm import LibfrankaArm

            arm = LibfrankaArm(args.host, camera, **options)
        if args.home:
            arm.go_home()
        if args.robot == "libfranka" and not args.dry_run:
            arm.start()
    except BaseException:
        camera.close()
        raise
    return arm


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.dry_run and args.home:
        print("arm: --home moves the arm; it cannot be combined with --dry-run")
        return 2
    try:
        limits = safety_limits(args)
        if (args.server_key is None) != (args.client_key is None):
            raise ValueError("CURVE needs both --server-key and --client-key")
        keys = ClientKeys(args.client_key, args.server_key) if args.server_key else None
        robot = open_arm(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"arm: {error}")
        return 2
    except Exception as error:  # the robot library refused to connect (no robot, wrong host, real-time)
        print(f"arm: cannot connect to the {args.robot} arm: {type(error).__name__}: {error}")
        return 1
    arm = TimedArm(DryRunArm(robot) if args.dry_run else robot)
    measurements = StepMeasurements(args.log)
    try:
        client = ArmClient(arm, args.endpoint, args.robot_id, args.rate, limits, args.action_timeout,
                           keys=keys, image_format=args.image_format, subscribers=[measurements])
    except (InsecureEndpoint, ValueError, OSError) as error:
        arm.close()
        print(f"arm: {error}")
        return 2
    recovery = {signal.SIGUSR1: lambda *_: robot.request_recovery()} if hasattr(robot, "request_recovery") else {}
    try:
        with stop_on_signals(client, recovery):
            summary = client.run(max_steps=args.steps, duration_s=args.duration)
    finally:
        client.close()
        arm_stats = robot.stats() if hasattr(robot, "stats") else {}
        arm.close()
    report = {
        "robot": args.robot, "dry_run": args.dry_run, "steps": summary.steps, "reason": summary.reason,
        "stats": summary.stats, "arm": arm_stats, "limits": limits.to_hello(),
        "tracking_error_mm": _spread(measurements.tracking_errors_m, 1000.0),
        "action_latency_ms": _spread(measurements.action_latencies_s, 1000.0),
        "clamp_correction_mm": _spread(measurements.clamp_corrections_m, 1000.0),
        "call_ms": {name: _spread(times, 1000.0) for name, times in arm.times.items()},
    }
    print(json.dumps(report))
    if args.summary is not None:
        args.summary.write_text(json.dumps(report, indent=2))
    return 0
