"""Record a sim-arm episode through a running bridge, then replay it through another one."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bridge_kit import StepPlanner
from robot_bridge import replay, sim_arm_command
from robot_bridge.episodes import COMMANDED_ACTION, EpisodeReader
from robot_bridge.protocol import ActionMessage, ObservationMessage
from robot_bridge.service import BridgeService


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


class GoalImagePlanner:
    """A planner stand-in with a real energy: mean absolute pixel difference to the goal image."""

    def __init__(self, goal: np.ndarray, step: float = 0.02):
        self.goal, self.step = goal.astype(np.int16), step

    def __call__(self, robot_id: str, observation: ObservationMessage) -> ActionMessage:
        energy = float(np.abs(observation.image.decode().astype(np.int16) - self.goal).mean())
        delta = np.array([self.step, 0, 0, 0, 0, 0, 0.0])
        return ActionMessage(delta=delta, target=observation.state + delta, energy=energy)


@pytest.fixture(scope="module")
def recorded_episode(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recorded") / "episode"
    with BridgeService("tcp://127.0.0.1:*", StepPlanner(step=0.02)) as service:
        args = parse(sim_arm_command, ["--endpoint", service.endpoint, "--robot-id", "sim0", "--image-size", "48",
                                       "--rate", "10", "--steps", "10", "--record", str(folder)])
        assert sim_arm_command.run(args) == 0
    return folder


def test_sim_arm_command_records_the_episode_it_drove(recorded_episode):
    reader = EpisodeReader(recorded_episode)
    assert reader.num_episodes == 1 and reader.length(0) == 10
    assert reader.frames(0).shape == (10, 48, 48, 3)
    states = reader.states(0)
    assert states[-1, 0] - states[0, 0] > 0.05, "the recorded arm should have moved along +x"
    commanded = reader.column(COMMANDED_ACTION, 0)
    assert (np.abs(commanded[:, 0]) <= 0.05 + 1e-6).all()        # the default step limit held
    assert reader.joints(0).shape == (10, 7)


def test_replay_streams_the_episode_and_reports(recorded_episode, tmp_path):
    reader = EpisodeReader(recorded_episode)
    frames = reader.frames(0)
    report_path = tmp_path / "report.json"
    with BridgeService("tcp://127.0.0.1:*", GoalImagePlanner(frames[-1])) as service:
        args = parse(replay, [str(recorded_episode), "--endpoint", service.endpoint, "--goal-frame", "last",
                              "--report", str(report_path), "--robot-id", "replay0"])
        assert replay.run(args) == 0
        assert service.stats()["observations_planned"] == len(frames)
    report = json.loads(report_path.read_text())
    steps = report["steps"]
    assert [s["frame"] for s in steps] == list(range(len(frames)))
    assert all(s["reply"] == "action" for s in steps)
    assert steps[-1]["energy"] == 0.0 and steps[0]["energy"] > 0.0   # raw frames: the goal frame is exact
    np.testing.assert_allclose([s["recorded_action"] for s in steps[:-1]], reader.actions(0), atol=1e-6)
    assert steps[-1]["recorded_action"] is None
    assert all(s["planned_delta"][0] == pytest.approx(0.02) for s in steps)
    summary = report["summary"]
    assert summary["action"] == len(frames) and summary["energy_last"] < summary["energy_first"]
    assert summary["translation_cosine_mean"] > 0.5   # the arm went where this planner pushes: +x
    assert report_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_reports_a_missing_session_instead_of_failing(recorded_episode, tmp_path):
    from robot_bridge.protocol import ErrorCode, ErrorMessage

    def no_session(robot_id, observation):
        return ErrorMessage(ErrorCode.NO_SESSION.value, f"no session for {robot_id}")

    report_path = tmp_path / "report.json"
    with BridgeService("tcp://127.0.0.1:*", no_session) as service:
        args = parse(replay, [str(recorded_episode), "--endpoint", service.endpoint, "--report", str(report_path)])
        assert replay.run(args) == 1
    steps = json.loads(report_path.read_text())["steps"]
    assert all(s["reply"] == "error" and s["detail"].startswith("no_session") for s in steps)


def test_goal_frame_specs():
    assert replay.goal_index("last", 5) == 4 and replay.goal_index("first", 5) == 0
    assert replay.goal_index("-2", 5) == 3 and replay.goal_index("2", 5) == 2
    for bad in ("7", "-6", "middle"):
        with pytest.raises(ValueError):
            replay.goal_index(bad, 5)


def test_replay_through_the_real_service_creates_its_own_session(recorded_episode, tmp_path):
    """End to end: HTTP goal + session creation, bridge streaming, the real planner and model."""
    from server.local_server import LocalServer
    from server.serve_command import build_service
    from server.settings import ServerSettings
    from test_api import FAST_PLANNER

    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*", planner=FAST_PLANNER,
                              data_dir=tmp_path / "data")
    report_path = tmp_path / "report.json"
    with LocalServer(build_service(settings), with_bridge=True) as server:
        server.wait_ready()
        args = parse(replay, [str(recorded_episode), "--endpoint", server.bridge.endpoint, "--http", server.url,
                              "--robot-id", "replay-e2e", "--goal-frame", "last", "--report", str(report_path)])
        assert replay.run(args) == 0
    report = json.loads(report_path.read_text())
    assert report["session"]["session_id"] and report["session"]["goal_id"]
    assert report["summary"]["action"] == len(report["steps"]) == 10
    assert all(np.isfinite(s["energy"]) and s["planning_ms"] > 0 for s in report["steps"])


def test_replay_streams_a_dataset_lerobot_wrote(tmp_path, capsys):
    """The LeRobot-written fixture, its action declared as a commanded delta, through a real bridge."""
    import shutil
    from pathlib import Path

    dataset = tmp_path / "example_v30"
    shutil.copytree(Path(__file__).parent / "fixtures" / "lerobot_example_v30", dataset)
    report_path = tmp_path / "report.json"
    reader = EpisodeReader(dataset, action_meaning="commanded-delta")
    with BridgeService("tcp://127.0.0.1:*", GoalImagePlanner(reader.frames(1)[-1])) as service:
        args = parse(replay, [str(dataset), "--episode", "1", "--endpoint", service.endpoint, "--report",
                              str(report_path), "--action-meaning", "commanded-delta"])
        assert replay.run(args) == 0
    steps = json.loads(report_path.read_text())["steps"]
    assert len(steps) == 6 and steps[-1]["energy"] == 0.0
    np.testing.assert_allclose([s["recorded_action"] for s in steps[:-1]], 0.02, atol=1e-6)
    args = parse(replay, [str(dataset), "--endpoint", "tcp://127.0.0.1:1", "--report", str(report_path)])
    assert replay.run(args) == 2
    assert "--action-meaning" in capsys.readouterr().out
