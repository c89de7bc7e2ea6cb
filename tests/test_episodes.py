"""Episode format: LeRobot v3.0 layout, lossless embedded frames, achieved-pose action labels, atomic writes."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robot_bridge.episodes import (
    COMMANDED_ACTION,
    JOINT_NAMES,
    JOINTS,
    LEGACY_IMAGE_PATH,
    POSE_NAMES,
    EpisodeReader,
    EpisodeWriter,
)
from robot_bridge.poses import compose_pose, pose_difference

SHAPE = (24, 32, 3)


def random_episode(rng, length):
    images = rng.integers(0, 256, size=(length, *SHAPE), dtype=np.uint8)
    states = np.column_stack(
        [rng.uniform(-0.5, 0.5, (length, 3)), rng.uniform(-1, 1, (length, 3)), rng.uniform(0, 1, (length, 1))]
    )
    return images, states


def write_dataset(root, lengths, seed=0, **options):
    rng = np.random.default_rng(seed)
    recorded = []
    with EpisodeWriter(root, fps=4, image_shape=SHAPE, **options) as writer:
        for number, length in enumerate(lengths):
            images, states = random_episode(rng, length)
            writer.start_episode(task=f"task {number % 2}")
            for image, state in zip(images, states):
                extras = {JOINTS: state} if options.get("optional_features") else None  # any 7 numbers
                writer.add_frame(image, state, extras=extras)
            writer.end_episode()
            recorded.append((images, states))
    return recorded


def test_round_trip_is_lossless_and_actions_are_pose_differences(tmp_path):
    recorded = write_dataset(tmp_path / "ds", [5, 3, 1])
    reader = EpisodeReader(tmp_path / "ds")
    assert reader.episodes == [0, 1, 2] and reader.fps == 4 and reader.total_frames == 9
    for episode, (images, states) in enumerate(recorded):
        np.testing.assert_array_equal(reader.frames(episode), images)
        np.testing.assert_allclose(reader.states(episode), states, atol=1e-6)
        actions = reader.actions(episode)
        assert actions.shape == (len(states) - 1, 7)
        np.testing.assert_allclose(actions, pose_difference(states[:-1], states[1:]), atol=1e-5)
        np.testing.assert_allclose(reader.timestamps(episode), np.arange(len(states)) / 4)
    assert reader.task(1) == "task 1"


def test_metadata_follows_lerobot_v3(tmp_path):
    write_dataset(tmp_path / "ds", [4, 2], optional_features={JOINTS: JOINT_NAMES})
    root = tmp_path / "ds"
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 2 and info["total_frames"] == 6 and info["fps"] == 4
    assert info["splits"] == {"train": "0:2"}
    assert info["features"]["observation.image"]["shape"] == list(SHAPE)
    assert info["features"]["observation.state"]["names"][-1] == "gripper"
    assert "observation.joints" in info["features"]
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert {"index", "episode_index", "frame_index", "timestamp", "observation.state", "action", "task_index"} <= set(
        data.column_names
    )
    assert data.column("index").to_pylist() == list(range(6))
    episodes = pq.read_table(root / "meta" / "episodes").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"], e["length"]) for e in episodes] == [(0, 4, 4), (4, 6, 2)]
    # The padding action of each episode's last frame is zero, as documented.
    reader = EpisodeReader(root)
    for episode in (0, 1):
        assert np.all(reader.column("action", episode)[-1] == 0)
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert len(stats["action"]["mean"]) == 7
    assert reader.joints(0).shape == (4, 7)


def test_all_frames_cache_matches_per_episode_frames(tmp_path):
    recorded = write_dataset(tmp_path / "ds", [3, 4])
    reader = EpisodeReader(tmp_path / "ds")
    frames = reader.all_frames()
    assert isinstance(frames, np.ndarray) and frames.shape == (7, *SHAPE)
    np.testing.assert_array_equal(frames[3:7], recorded[1][0])
    cached = EpisodeReader(tmp_path / "ds").all_frames()
    assert isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, frames)


def test_nothing_appears_until_finalize_and_failures_leave_no_trace(tmp_path):
    root = tmp_path / "ds"
    writer = EpisodeWriter(root, fps=4, image_shape=SHAPE)
    writer.start_episode()
    writer.add_frame(np.zeros(SHAPE, np.uint8), np.zeros(7))
    writer.end_episode()
    assert not root.exists()
    writer.finalize()
    assert EpisodeReader(root).num_episodes == 1

    with pytest.raises(FileExistsError):
        EpisodeWriter(root, fps=4, image_shape=SHAPE)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeWriter(crashed, fps=4, image_shape=SHAPE) as failing:
            failing.start_episode()
            failing.add_frame(np.zeros(SHAPE, np.uint8), np.zeros(7))
            raise RuntimeError("boom")
    assert not crashed.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging folder left behind


def test_bad_frames_are_refused_without_corrupting_the_episode(tmp_path):
    good_image, good_state = np.zeros(SHAPE, np.uint8), np.zeros(7)
    with EpisodeWriter(tmp_path / "ds", fps=4, image_shape=SHAPE, optional_features={JOINTS: JOINT_NAMES}) as writer:
        writer.start_episode()
        joints = {JOINTS: np.zeros(7)}
        writer.add_frame(good_image, good_state, timestamp=1.0, extras=joints)
        bad_calls = [
            dict(image=np.zeros((10, 10, 3), np.uint8), state=good_state, extras=joints),
            dict(image=good_image.astype(np.float32), state=good_state, extras=joints),
            dict(image=good_image, state=np.full(7, np.nan), extras=joints),
            dict(image=good_image, state=np.zeros(6), extras=joints),
            dict(image=good_image, state=good_state, timestamp=0.5, extras=joints),  # goes back in time
            dict(image=good_image, state=good_state, timestamp=2.0),  # joints missing
            dict(image=good_image, state=good_state, timestamp=2.0, extras={JOINTS: np.array([np.inf] * 7)}),
            dict(image=good_image, state=good_state, timestamp=2.0, extras={**joints, "surprise": np.zeros(7)}),
        ]
        for call in bad_calls:
            with pytest.raises(ValueError):
                writer.add_frame(**call)
        writer.add_frame(good_image, good_state + 0.1, timestamp=2.0, extras=joints)
        writer.end_episode()
    reader = EpisodeReader(tmp_path / "ds")
    assert reader.length(0) == 2
    np.testing.assert_allclose(reader.timestamps(0), [1.0, 2.0])


def test_reader_reports_missing_and_broken_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an episode dataset"):
        EpisodeReader(tmp_path)
    write_dataset(tmp_path / "ds", [2])
    reader = EpisodeReader(tmp_path / "ds")
    with pytest.raises(KeyError):
        reader.frames(5)
    # Frame 1's embedded PNG replaced by garbage: the reader names the frame instead of decoding None.
    path = tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    images = table.column("observation.image").to_pylist()
    images[1] = {"bytes": b"not a png", "path": images[1]["path"]}
    position = table.schema.get_field_index("observation.image")
    pq.write_table(table.set_column(position, table.schema.field(position), pa.array(images, table.schema.field(position).type)), path)
    with pytest.raises(OSError, match="frame 1 of observation.image: missing or unreadable"):
        reader.frames(0)


def test_reads_the_earlier_layout_with_loose_png_files(tmp_path):
    """Datasets recorded before the exact v3.0 layout kept frames as images/.../frame-XXXXXX.png."""
    recorded = write_dataset(tmp_path / "ds", [3])
    root = tmp_path / "ds"
    path = root / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["observation.image"]), path)
    for frame, image in enumerate(recorded[0][0]):
        png = root / LEGACY_IMAGE_PATH.format(image_key="observation.image", episode_index=0, frame_index=frame)
        png.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(png), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(EpisodeReader(root).frames(0), recorded[0][0])


def test_sim_episode_actions_are_the_achieved_motion(tmp_path):
    from robot_bridge.sim import SimArm, SimConfig

    arm = SimArm(SimConfig(image_height=24, image_width=32), seed=2)
    commanded = np.array([0.06, -0.04, -0.05, 0.0, 0.0, 0.0, 0.5])
    features = {COMMANDED_ACTION: POSE_NAMES}
    with EpisodeWriter(tmp_path / "sim", fps=arm.control_hz, image_shape=SHAPE, optional_features=features) as writer:
        writer.start_episode("move")
        for step in range(4):
            observation = arm.observe()
            asked = commanded if step < 3 else np.zeros(7)
            writer.add_frame(observation.image, observation.state, extras={COMMANDED_ACTION: asked})
            if step < 3:
                arm.apply_delta(commanded)
        writer.end_episode()
    arm.close()
    reader = EpisodeReader(tmp_path / "sim")
    states, actions = reader.states(0).astype(np.float64), reader.actions(0).astype(np.float64)
    np.testing.assert_allclose(compose_pose(states[:-1], actions)[:, :3], states[1:, :3], atol=1e-5)
    # The label is what happened, not what was asked: it differs from the command by the tracking error.
    assert not np.allclose(actions, reader.column(COMMANDED_ACTION, 0)[:-1], atol=1e-6)
    np.testing.assert_allclose(actions[:, :3], np.tile(commanded[:3], (3, 1)), atol=0.01)


def test_commanded_delta_reads_our_commanded_column(tmp_path):
    # Our recordings keep the achieved motion in `action` and the request in `action.commanded`: asking for
    # commanded-delta labels must read the request (a lagging gripper moves 0.01 in the period it was told to open).
    features = {COMMANDED_ACTION: POSE_NAMES}
    asked = np.array([[0.05, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5], [0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0], np.zeros(7)])
    states = np.array([[0.5, 0.0, 0.1, 0, 0, 0, 0.5], [0.54, 0.0, 0.1, 0, 0, 0, 0.49], [0.54, 0.02, 0.1, 0, 0, 0, 0.2]])
    image = np.zeros(SHAPE, np.uint8)
    with EpisodeWriter(tmp_path / "lag", fps=4, image_shape=SHAPE, optional_features=features) as writer:
        writer.start_episode("open")
        for state, command in zip(states, asked):
            writer.add_frame(image, state.astype(np.float32), extras={COMMANDED_ACTION: command})
        writer.end_episode()
    np.testing.assert_allclose(EpisodeReader(tmp_path / "lag", action_meaning="commanded-delta").actions(0),
                               asked[:-1], atol=1e-6)
    achieved = EpisodeReader(tmp_path / "lag").actions(0)
    np.testing.assert_allclose(achieved[0, 6], -0.01, atol=1e-5)
