"""The reference 2-frame Franka example converted into the episode format."""
from __future__ import annotations

import numpy as np
import torch

from robot_bridge import franka_example
from robot_bridge.episodes import EpisodeReader
from robot_bridge.poses import pose_difference
from server import cli


def test_converts_the_fixture_example_losslessly(reference_folder, tmp_path):
    fixture = sorted(reference_folder.glob("fixture_*_data.pt"))[0]
    out = tmp_path / "franka"
    assert cli.main(["convert-franka-example", "--out", str(out), "--fixture", str(fixture)]) == 0
    data = torch.load(fixture, map_location="cpu", weights_only=True)
    reader = EpisodeReader(out)
    assert reader.num_episodes == 1 and reader.info["robot_type"] == "franka"
    np.testing.assert_array_equal(reader.frames(0), data["preprocessing"]["franka_uint8_THWC"].numpy())
    np.testing.assert_allclose(reader.states(0), data["world_model"]["franka_states"].numpy(), atol=1e-7)
    # The stored action is the DROID training label between the two states (float32 storage).
    states = data["world_model"]["franka_states"].double().numpy()
    assert reader.actions(0).shape == (1, 7)
    np.testing.assert_allclose(reader.actions(0)[0], pose_difference(states[0], states[1]), atol=1e-6)

def test_default_fixture_is_found_through_the_reference_dir(reference_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("JEPA_REFERENCE_DIR", str(reference_folder))
    assert cli.main(["convert-franka-example", "--out", str(tmp_path / "franka")]) == 0
    assert EpisodeReader(tmp_path / "franka").frames(0).shape == (2, 256, 256, 3)


def test_a_fresh_clone_finds_the_repositorys_own_fixtures(tmp_path, monkeypatch):
    monkeypatch.delenv("JEPA_REFERENCE_DIR", raising=False)
    assert cli.main(["convert-franka-example", "--out", str(tmp_path / "franka")]) == 0
    assert EpisodeReader(tmp_path / "franka").frames(0).shape == (2, 256, 256, 3)


def test_missing_fixture_is_a_clear_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(franka_example, "BUNDLED_FIXTURES", tmp_path / "not-checked-out")
    monkeypatch.setenv("JEPA_REFERENCE_DIR", str(tmp_path / "nowhere"))
    assert cli.main(["convert-franka-example", "--out", str(tmp_path / "franka")]) == 2
    assert "JEPA_REFERENCE_DIR" in capsys.readouterr().err
    assert not (tmp_path / "franka").exists()
