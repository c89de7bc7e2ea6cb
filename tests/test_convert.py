"""`jepa-planner convert`: the Franka example, LeRobot datasets and our recordings into the episode format."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from robot_bridge.episodes import COMMANDED_ACTION, EpisodeReader
from server import cli

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_example_v30"


def test_converts_the_franka_example_and_then_to_video(reference_folder, tmp_path):
    fixture = sorted(reference_folder.glob("fixture_*_data.pt"))[0]
    franka = tmp_path / "franka"
    assert cli.main(["convert", "--from", "franka-example", "--out", str(franka), "--fixture", str(fixture)]) == 0
    reader = EpisodeReader(franka)
    assert reader.frames(0).shape == (2, 256, 256, 3) and reader.info["robot_type"] == "franka"
    assert (franka / "README.md").read_text().startswith("---\nlicense: other")
    video = tmp_path / "franka_video"
    assert cli.main(["convert", str(franka), "--out", str(video), "--video"]) == 0
    converted = EpisodeReader(video)
    assert converted.info["features"]["observation.image"]["dtype"] == "video"
    assert np.abs(converted.frames(0).astype(int) - reader.frames(0).astype(int)).mean() < 10
    np.testing.assert_allclose(converted.actions(0), reader.actions(0), atol=1e-6)


def test_command_line_errors_are_usage_errors(tmp_path, capsys):
    dataset = tmp_path / "example_v30"
    shutil.copytree(FIXTURE, dataset)
    assert cli.main(["convert", "--out", str(tmp_path / "a")]) == 2
    assert "source dataset" in capsys.readouterr().err
    assert cli.main(["convert", str(dataset), "--out", str(tmp_path / "b")]) == 2
    assert "--action-meaning" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert cli.main(["convert", str(dataset), "--out", str(tmp_path / "c"), "--action-meaning", "absolute-pose"]) == 0
    converted = EpisodeReader(tmp_path / "c")
    source = EpisodeReader(dataset, action_meaning="absolute-pose")
    np.testing.assert_allclose(converted.column(COMMANDED_ACTION, 2)[:-1], source.actions(2), atol=1e-6)
    assert json.loads((tmp_path / "c" / "meta" / "info.json").read_text())["source"]["action_meaning"] == "absolute-pose"
    assert cli.main(["convert", str(dataset), "--out", str(tmp_path / "c"), "--action-meaning", "absolute-pose"]) == 2
    assert "exists" in capsys.readouterr().err
