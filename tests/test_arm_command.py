"""`jepa-planner arm`: a dry run against a real service never moves the arm and logs the targets it
would have moved to, which the service planned within the arm's announced limits; usage errors
are clear (issue 11). The franky / pylibfranka runs against franka-sim are in test_franka_sim.py."""
from __future__ import annotations

import argparse
import importlib.util
import json

import httpx
import numpy as np
import pytest

from robot_bridge import arm_command
from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings
from test_api import FAST_PLANNER, png_bytes


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    arm_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_dry_run_logs_targets_within_the_limits_and_never_moves(tmp_path, capsys):
    settings = ServerSettings(model="tiny", device="cpu", bridge="tcp://127.0.0.1:*",
                              planner={**FAST_PLANNER, "maxnorm": 0.075}, data_dir=tmp_path / "data")
    with LocalServer(build_service(settings), with_bridge=True) as server:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=60)
        goal = http.post("/v1/goals", files={"image": ("g.png", png_bytes(2), "image/png")}).json()
        http.post("/v1/sessions", json={"robot_id": "dry", "goal_id": goal["id"]}).raise_for_status()
        code = arm_command.run(parse("--robot", "sim", "--image-size", "64", "--endpoint", server.bridge.endpoint,
                                     "--robot-id", "dry", "--rate", "5", "--duration", "6", "--max-step", "0.01",
                                     "--dry-run", "--log", str(tmp_path / "steps.jsonl"),
                                     "--summary", str(tmp_path / "summary.json")))
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    moves = [r for r in records if r["command"] == "move"]
    assert summary["dry_run"] and summary["stats"]["moves"] == len(moves) >= 3
    states = np.array([r["state"] for r in records])
    np.testing.assert_allclose(states, np.broadcast_to(states[0], states.shape), atol=1e-4)   # never moved
    for move in moves:                                                  # targets one (announced) step away
        assert np.linalg.norm(np.array(move["target"][:3]) - np.array(move["state"][:3])) <= 0.01 + 1e-6
    assert summary["clamp_correction_mm"]["max"] < 1e-3                 # planned within the arm's limits
    assert summary["limits"]["max_translation_m"] == 0.01
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == summary["steps"]


@pytest.mark.parametrize("argv, message", [
    (("--robot", "franky", "--camera", "usb:0"), "needs --host"),
    (("--robot", "libfranka", "--host", "127.0.0.1"), "needs --camera"),
    (("--robot", "sim", "--dry-run", "--home"), "cannot be combined"),
    (("--robot", "sim", "--workspace", "0.5", "0", "0", "0.4", "1", "1"), "must be below"),
])
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    assert arm_command.run(parse(*argv)) == 2
    assert message in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("franky") is not None, reason="franky-control is installed here")
def test_a_missing_robot_library_names_the_extra_to_install(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "0.png"), np.zeros((8, 8, 3), np.uint8))
    assert arm_command.run(parse("--robot", "franky", "--host", "127.0.0.1", "--camera", f"replay:{folder}")) == 2
    assert "jepa-planner[franky]" in capsys.readouterr().out
