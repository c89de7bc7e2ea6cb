"""`jepa-planner collect`: seeded exploratory sim episodes in the episode format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from robot_bridge import collect
from robot_bridge.episodes import COMMANDED_ACTION, ENVIRONMENT_STATE, EpisodeReader
from robot_bridge.poses import compose_pose
from server import cli


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 short episodes at 32 px, recorded through the real CLI entry point."""
    out = tmp_path_factory.mktemp("collect") / "ds"
    argv = ["collect", "--out", str(out), "--episodes", "3", "--steps", "6", "--image-size", "32", "--seed", "5"]
    assert cli.main([*argv, "--push-fraction", "0.5", "--no-progress"]) == 0
    return out


def test_writes_the_requested_episodes(dataset, capsys):
    reader = EpisodeReader(dataset)
    assert reader.num_episodes == 3 and reader.fps == 4.0
    for episode in reader.episodes:
        assert reader.frames(episode).shape == (7, 32, 32, 3)
        assert reader.actions(episode).shape == (6, 7)
        assert reader.joints(episode).shape == (7, 7)
    info = json.loads((dataset / "meta" / "info.json").read_text())
    assert info["collection"]["seed"] == 5 and info["collection"]["steps"] == 6


def test_actions_are_achieved_motion_and_stay_in_the_workspace(dataset):
    reader = EpisodeReader(dataset)
    workspace = collect.ExplorationConfig().workspace
    for episode in reader.episodes:
        states = reader.states(episode).astype(np.float64)
        actions = reader.actions(episode).astype(np.float64)
        np.testing.assert_allclose(compose_pose(states[:-1], actions)[:, :3], states[1:, :3], atol=1e-5)
        assert np.all(states[:, :3] >= np.array(workspace.low) - 0.01)
        assert np.all(states[:, :3] <= np.array(workspace.high) + 0.01)
        assert np.all(np.abs(reader.column(COMMANDED_ACTION, episode)[:, :3]) <= 0.075 + 1e-6)
        assert np.abs(actions[:, :3]).max() > 0.005  # the arm really moves


def test_is_deterministic_under_the_seed(dataset, tmp_path):
    again = tmp_path / "again"
    collect.collect(again, episodes=3, steps=6, image_size=32, seed=5,
                    config=collect.ExplorationConfig(push_fraction=0.5), progress=False)
    first, second = EpisodeReader(dataset), EpisodeReader(again)
    for episode in first.episodes:
        np.testing.assert_array_equal(first.states(episode), second.states(episode))
        np.testing.assert_array_equal(first.frames(episode), second.frames(episode))
    other = tmp_path / "other"
    collect.collect(other, episodes=1, steps=6, image_size=32, seed=6, progress=False)
    assert not np.array_equal(EpisodeReader(other).states(0), first.states(0))


def test_push_episodes_move_the_cube(tmp_path):
    out = tmp_path / "push"
    collect.collect(out, episodes=2, steps=16, image_size=16, seed=0,
                    config=collect.ExplorationConfig(push_fraction=1.0), progress=False)
    reader = EpisodeReader(out)
    for episode in reader.episodes:
        assert reader.task(episode) == "push the cube"
        cube = reader.column(ENVIRONMENT_STATE, episode)
        assert np.linalg.norm(cube[-1, :2] - cube[0, :2]) > 0.03


def test_bad_arguments_are_usage_errors(dataset, tmp_path, capsys):
    before = EpisodeReader(dataset).total_frames
    assert cli.main(["collect", "--out", str(dataset), "--episodes", "1", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert EpisodeReader(dataset).total_frames == before  # the existing dataset is untouched
    unused = str(tmp_path / "unused")
    assert cli.main(["collect", "--out", unused, "--episodes", "0"]) == 2
    assert cli.main(["collect", "--out", unused, "--max-step", "-1", "--no-progress"]) == 2
    assert not (tmp_path / "unused").exists()


def grasp_targets(open_raise_fraction: float, seed: int = 3, release_fraction: float = 0.0,
                  steps: int = 20) -> list[np.ndarray]:
    """Targets of one grasp episode, stepping the state straight onto each target (no physics)."""
    config = collect.ExplorationConfig(push_fraction=0.0, grasp_fraction=1.0, open_raise_fraction=open_raise_fraction,
                                       release_fraction=release_fraction)
    cube = np.array([0.5, 0.0, 0.04])
    state = np.array([0.5, 0.0, 0.3, np.pi, 0.0, 0.0, 0.0])
    policy = collect.ExplorationPolicy(np.random.default_rng(seed), config, cube, state)
    targets = []
    for _ in range(steps):
        state = policy.next_target(state)
        targets.append(state.copy())
    return targets


def test_open_raise_grasp_episodes_rise_from_the_cube_with_the_fingers_open():
    closing, opening = grasp_targets(0.0), grasp_targets(1.0)
    assert max(t[6] for t in closing) == 1.0 and max(t[6] for t in opening) == 0.0
    # Both go down to the cube and back up on the same path (then explore), only the fingers differ.
    heights = [t[2] for t in opening]
    lowest = len(heights) - 1 - int(np.argmin(heights[::-1]))   # the last period at the cube
    raised = next(i for i in range(lowest + 1, len(heights) - 1) if heights[i + 1] <= heights[i])  # lift done
    np.testing.assert_allclose([t[:3] for t in closing[:raised + 1]], [t[:3] for t in opening[:raised + 1]])
    assert opening[lowest][2] < 0.05 and opening[raised][2] > 0.1


def test_open_raises_off_by_default_draw_nothing_so_earlier_datasets_repeat():
    assert collect.ExplorationConfig().open_raise_fraction == 0.0
    rng = np.random.default_rng(0)
    config = collect.ExplorationConfig(push_fraction=0.0, grasp_fraction=1.0)
    collect.ExplorationPolicy(rng, config, np.array([0.5, 0.0, 0.04]), np.zeros(7))
    after_policy = rng.random()
    reference = np.random.default_rng(0)
    reference.random(), reference.uniform(0.25, 1.0), reference.normal(0.0, 0.004, size=2), reference.uniform(0.08, 0.15)
    assert after_policy == reference.random()


def test_releasing_grasp_episodes_carry_the_cube_up_then_open_once_in_the_air():
    for seed in range(5):
        carried, released = grasp_targets(0.0, seed, steps=30), grasp_targets(0.0, seed, release_fraction=1.0, steps=30)
        grippers = [t[6] for t in released]
        closed = grippers.index(1.0)
        opened = closed + grippers[closed:].index(0.0)
        assert all(g == 1.0 for g in grippers[closed:opened]) and all(g == 0.0 for g in grippers[opened:])
        heights = [t[2] for t in released]
        lift_height = 0.04 + collect.GRASP_LIFT_M[0] - 0.01
        lifted = next(i for i in range(closed, len(heights)) if heights[i] > lift_height)
        assert lifted <= opened <= lifted + collect.RELEASE_AFTER_STEPS[1] + 1  # soon after the lift
        # The same grasp and lift as the episode that keeps the cube (the exploring after it differs).
        np.testing.assert_allclose([t[:3] for t in carried[:lifted + 1]], [t[:3] for t in released[:lifted + 1]])
        assert all(t[6] == 1.0 for t in carried[closed:])

