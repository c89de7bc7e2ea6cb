"""`jepa-planner replay`: stream a recorded episode to a service as if it were the arm, and report.

Every recorded frame is sent as an observation under the episode's robot id, one at a time (the
next frame goes out once the reply to the previous one arrived, so none is dropped as stale).
The report compares, per step, what the planner would have done with what the arm did:
energy to the goal (from the service's action), planned delta vs the recorded (achieved)
action, planning time and round trip. Nothing moves: the replay only listens.

The service needs a planning session for the robot id. Either create it yourself (POST
/v1/goals with the goal image, then POST /v1/sessions {"robot_id", "goal_id"}) or pass
`--http URL` and the replay uploads the goal frame and creates the session itself.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .client import BridgeConnection
from .protocol import (
    ActionMessage,
    ErrorMessage,
    HoldMessage,
    ImagePayload,
    ObservationMessage,
    WelcomeMessage,
)
from .security import ClientKeys, InsecureEndpoint
from .service import DEFAULT_ENDPOINT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayStep:
    frame: int
    reply: str                           # "action", "hold", "error" or "timeout"
    energy: float | None
    planning_ms: float | None
    round_trip_ms: float
    planned_delta: list[float] | None
    planned_target: list[float] | None
    recorded_action: list[float] | None  # achieved pose change frame -> frame + 1 (None for the last frame)
    detail: str = ""                     # hold reason or error code and message


def goal_index(spec: str, length: int) -> int:
    """'last', 'first' or a frame index (negative counts from the end)."""
    named = {"last": length - 1, "first": 0}
    try:
        index = named[spec] if spec in named else int(spec)
    except ValueError:
        raise ValueError(f"--goal-frame must be last, first or an integer, got {spec!r}") from None
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise ValueError(f"goal frame {spec} outside an episode of {length} frames")
    return index


def create_session(http_url: str, api_key: str | None, robot_id: str, goal_image: np.ndarray,
                   planner: dict | None = None) -> dict:
    """Upload the goal image and bind a new session to `robot_id` over the HTTP API (with optional
    PlannerConfig overrides)."""
    import cv2
    import httpx

    ok, png = cv2.imencode(".png", np.ascontiguousarray(goal_image[..., ::-1]))
    if not ok:
        raise ValueError("could not encode the goal frame as PNG")
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=http_url.rstrip("/"), headers=headers, timeout=30.0) as http:
        goal = http.post("/v1/goals", files={"image": ("goal.png", png.tobytes(), "image/png")})
        goal.raise_for_status()
        session = http.post("/v1/sessions", json={"robot_id": robot_id, "goal_id": goal.json()["id"],
                                                  "planner": planner or {}})
        session.raise_for_status()
        return {"goal_id": goal.json()["id"], "session_id": session.json()["id"]}


def replay_episode(connection: BridgeConnection, frames: np.ndarray, states: np.ndarray, actions: np.ndarray,
                   timestamps: np.ndarray, reply_timeout_s: float, image_format: str = "jpeg",
                   first_seq: int = 0) -> list[ReplayStep]:
    """Send each frame as an observation and collect the reply that answers it."""
    steps = []
    for frame in range(len(frames)):
        seq = first_seq + frame
        started = time.monotonic()
        connection.send(ObservationMessage(seq=seq, timestamp=float(timestamps[frame]),
                                           image=ImagePayload.from_array(frames[frame], image_format),
                                           state=states[frame].astype(np.float64)))
        reply = _await_reply(connection, seq, started + reply_timeout_s)
        recorded = actions[frame].tolist() if frame < len(actions) else None
        round_trip = (time.monotonic() - started) * 1000.0
        if isinstance(reply, ActionMessage):
            steps.append(ReplayStep(frame, "action", reply.energy, reply.planning_ms, round_trip,
                                    reply.delta.tolist(), reply.target.tolist(), recorded))
        elif isinstance(reply, HoldMessage):
            steps.append(ReplayStep(frame, "hold", None, None, round_trip, None, None, recorded, reply.reason))
        elif isinstance(reply, ErrorMessage):
            steps.append(ReplayStep(frame, "error", None, None, round_trip, None, None, recorded,
                                    f"{reply.code}: {reply.message}"))
        else:
            steps.append(ReplayStep(frame, "timeout", None, None, round_trip, None, None, recorded,
                                    f"no reply within {reply_timeout_s} s"))
    return steps


def _await_reply(connection: BridgeConnection, seq: int, deadline: float):
    while (remaining := deadline - time.monotonic()) > 0:
        for message in connection.receive(remaining):
            if isinstance(message, (ActionMessage, HoldMessage, ErrorMessage)) and message.seq == seq:
                return message
    return None


def handshake(connection: BridgeConnection, hello, timeout_s: float) -> WelcomeMessage:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        connection.send(hello)
        for message in connection.receive(min(0.5, max(0.0, deadline - time.monotonic()))):
            if isinstance(message, WelcomeMessage):
                return message
            if isinstance(message, ErrorMessage):
                raise ConnectionError(f"service refused hello: {message.code}: {message.message}")
    raise TimeoutError(f"no welcome from {connection.endpoint} within {timeout_s} s")


def summarize(steps: list[ReplayStep]) -> dict:
    planned = [s for s in steps if s.reply == "action"]
    compared = [s for s in planned if s.recorded_action is not None]
    summary: dict = {"steps": len(steps), **{kind: sum(s.reply == kind for s in steps)
                                             for kind in ("action", "hold", "error", "timeout")}}
    if planned:
        energies = [s.energy for s in planned]
        summary.update(energy_first=energies[0], energy_last=energies[-1], energy_min=min(energies),
                       planning_ms_mean=float(np.mean([s.planning_ms for s in planned])),
                       planning_ms_max=float(np.max([s.planning_ms for s in planned])))
    if compared:
        planned_xyz = np.array([s.planned_delta[:3] for s in compared])
        recorded_xyz = np.array([s.recorded_action[:3] for s in compared])
        norms = np.linalg.norm(planned_xyz, axis=1) * np.linalg.norm(recorded_xyz, axis=1)
        moving = norms > 1e-12
        summary["translation_l1_mean_m"] = float(np.abs(planned_xyz - recorded_xyz).sum(axis=1).mean())
        if moving.any():  # does the planner push the way the arm actually went?
            cosines = (planned_xyz[moving] * recorded_xyz[moving]).sum(axis=1) / norms[moving]
            summary["translation_cosine_mean"] = float(cosines.mean())
    return summary


def plot_report(steps: list[ReplayStep], goal_frame: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [s.frame for s in steps]
    figure, (energy_axis, action_axis, time_axis) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    energy_axis.plot(frames, [np.nan if s.energy is None else s.energy for s in steps], "o-")
    energy_axis.axvline(goal_frame, color="grey", linestyle=":", label="goal frame")
    energy_axis.set_ylabel("energy to goal")
    energy_axis.legend()
    for axis_index, (name, colour) in enumerate(zip("xyz", ("tab:red", "tab:green", "tab:blue"))):
        action_axis.plot(frames, [np.nan if s.planned_delta is None else s.planned_delta[axis_index] for s in steps],
                         "-", color=colour, label=f"planned d{name}")
        action_axis.plot(frames, [np.nan if s.recorded_action is None else s.recorded_action[axis_index] for s in steps],
                         "--", color=colour, label=f"recorded d{name}")
    action_axis.set_ylabel("translation (m)")
    action_axis.legend(ncol=3, fontsize="small")
    time_axis.bar(frames, [0 if s.planning_ms is None else s.planning_ms for s in steps], label="planning")
    time_axis.plot(frames, [s.round_trip_ms for s in steps], "k.", label="round trip")
    time_axis.set_ylabel("ms")
    time_axis.set_xlabel("frame")
    time_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="LeRobot v3.0 dataset folder (ours, EPISODES.md, or any with a camera "
                                                "and an end-effector state)")
    parser.add_argument("--camera-key", help="camera to stream (default: observation.image, or the only camera)")
    parser.add_argument("--action-meaning", choices=("achieved", "commanded-delta", "absolute-pose", "from-states"),
                        help="what the dataset's action column means (needed for datasets not recorded by us)")
    parser.add_argument("--episode", type=int, default=0, help="episode index in the dataset (default 0)")
    parser.add_argument("--goal-frame", default="last", help="frame used as the goal: last, first or an index")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="bridge service endpoint (default %(default)s)")
    parser.add_argument("--robot-id", default="replay0", help="robot id to stream as (default %(default)s)")
    parser.add_argument("--http", help="service HTTP URL: upload the goal frame and create the session there")
    parser.add_argument("--api-key", help="API key for --http (X-API-Key)")
    parser.add_argument("--report", type=Path, default=Path("replay_report.json"), help="JSON report path")
    parser.add_argument("--plot", type=Path, help="PNG plot path (default: the report path with .png)")
    parser.add_argument("--reply-timeout", type=float, default=60.0, help="seconds to wait for each reply")
    parser.add_argument("--image-format", choices=("jpeg", "raw"), default="raw")
    parser.add_argument("--server-key", type=Path, help="the service's public key file (NAME.key) to pin (CURVE)")
    parser.add_argument("--client-key", type=Path, help="this client's key pair file (NAME.key_secret) (CURVE)")


def run(args: argparse.Namespace) -> int:
    from .episodes import EpisodeReader
    from .protocol import HelloMessage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        reader = EpisodeReader(args.path, camera_key=args.camera_key, action_meaning=args.action_meaning)
        frames, states = reader.frames(args.episode), reader.states(args.episode)
        actions, timestamps = reader.actions(args.episode), reader.timestamps(args.episode)
        goal = goal_index(args.goal_frame, len(frames))
    except (OSError, ValueError, KeyError) as error:
        print(f"replay: {error}")
        return 2
    if (args.server_key is None) != (args.client_key is None):
        print("replay: CURVE needs both --server-key and --client-key")
        return 2
    keys = ClientKeys(args.client_key, args.server_key) if args.server_key else None
    session = None
    if args.http:
        try:
            session = create_session(args.http, args.api_key, args.robot_id, frames[goal])
        except Exception as error:  # HTTP, JSON or network failures: report, do not trace back
            print(f"replay: could not create the goal/session at {args.http}: {error}")
            return 1
        log.info("created goal %s and session %s for %s", session["goal_id"], session["session_id"], args.robot_id)
    height, width = frames.shape[1:3]
    hello = HelloMessage(args.robot_id, height, width, float(reader.fps), args.image_format, "jepa-planner replay")
    try:
        connection = BridgeConnection(args.endpoint, args.robot_id, keys=keys)
    except (InsecureEndpoint, ValueError, OSError) as error:
        print(f"replay: {error}")
        return 2
    with connection:
        try:
            welcome = handshake(connection, hello, timeout_s=10.0)
        except (TimeoutError, ConnectionError) as error:
            print(f"replay: {error}")
            return 1
        steps = replay_episode(connection, frames, states, actions, timestamps, args.reply_timeout, args.image_format)
    summary = summarize(steps)
    report = {"episode_path": str(args.path), "episode": args.episode, "goal_frame": goal,
              "robot_id": args.robot_id, "endpoint": args.endpoint, "session": session or welcome.session,
              "summary": summary, "steps": [vars(step) for step in steps]}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    plot = args.plot or args.report.with_suffix(".png")
    plot_report(steps, goal, plot)
    print(json.dumps(summary))
    print(f"report: {args.report}  plot: {plot}")
    return 0 if summary["action"] > 0 else 1
