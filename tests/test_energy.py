"""planner.energy: the official L1 over the final frame, plus L2, cosine and frame weights."""
from __future__ import annotations

import pytest
import torch

from conftest import fixture_names
from planner.energy import Energy, frame_distance


def _data(reference_folder, name):
    return torch.load(reference_folder / f"fixture_{name}_data.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", fixture_names())
def test_l1_matches_official_helper(reference_folder, name):
    case = _data(reference_folder, name)["helpers"]["l1"]
    # the helper works on flattened (B, K) vectors: treat each row as one 1-token frame
    out = frame_distance(case["a"].unsqueeze(1), case["b"].unsqueeze(1), "l1")
    torch.testing.assert_close(out, case["out"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", fixture_names())
def test_final_frame_l1_matches_official_rollout_energy(reference_folder, name):
    record = _data(reference_folder, name)["world_model"]
    frames = record["rollout_frames"][:, 1:]  # drop the context frame: (B, H, N, D)
    energies = Energy("l1")(frames, record["rollout_goal_rep"][0])
    torch.testing.assert_close(energies, record["rollout_energy_l1"], atol=1e-6, rtol=0)


def test_only_the_final_frame_counts_by_default():
    goal = torch.zeros(3, 4)
    frames = torch.zeros(2, 3, 3, 4)
    frames[0, 0] = 5.0  # an intermediate frame far from the goal
    frames[1, -1] = 1.0
    assert Energy("l1")(frames, goal).tolist() == [0.0, 1.0]


def test_frame_weights_score_intermediate_frames():
    goal = torch.zeros(3, 4)
    frames = torch.zeros(1, 2, 3, 4)
    frames[0, 0], frames[0, 1] = 2.0, 1.0
    assert Energy("l1", frame_weights=[1.0, 3.0])(frames, goal).item() == pytest.approx((2.0 + 3.0) / 4)
    with pytest.raises(ValueError, match="2 frames"):
        Energy("l1", frame_weights=[1.0, 1.0, 1.0])(frames, goal)


def test_l2_and_cosine():
    goal = torch.ones(2, 4)
    frames = torch.ones(3, 1, 2, 4)
    frames[1] *= 3.0  # same direction, larger: cosine 0, l2 4
    frames[2] *= -1.0  # opposite direction: cosine 2
    assert Energy("l2")(frames, goal).tolist() == pytest.approx([0.0, 4.0, 4.0])
    assert Energy("cosine")(frames, goal).tolist() == pytest.approx([0.0, 0.0, 2.0], abs=1e-6)


@pytest.mark.parametrize("weights", [[0.0, 0.0], [-1.0, 2.0], [float("nan"), 1.0], []])
def test_bad_frame_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="frame_weights"):
        Energy("l1", frame_weights=weights)


def test_unknown_energy_is_rejected():
    with pytest.raises(ValueError, match="l1, l2, cosine"):
        Energy("huber")
