"""LeRobot v3.0 both ways: the dataset LeRobot 0.4.4 wrote (tests/fixtures/lerobot_example_v30, a copy of
../shared/lerobot/example_v30) read by us, and ours laid out like it, checked with a reader written from
LeRobot's documented layout (pyarrow only), not with our own reader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from robot_bridge import lerobot_stats
from robot_bridge.convert import convert_dataset
from robot_bridge.episodes import COMMANDED_ACTION, EpisodeReader, EpisodeWriter
from robot_bridge.lerobot_mapping import UnmappableDataset, resolve

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_example_v30"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "lerobot" / "example_v30"


@pytest.fixture
def lerobot_dataset(tmp_path):
    root = tmp_path / "example_v30"
    shutil.copytree(FIXTURE, root)
    return root


def documented_reader(root: Path) -> dict:
    """What LeRobot's documentation says a v3.0 dataset holds, read with pyarrow alone."""
    info = json.loads((root / "meta" / "info.json").read_text())
    tasks_table = pq.read_table(root / "meta" / "tasks.parquet")
    pandas = json.loads(tasks_table.schema.metadata[b"pandas"])
    tasks = dict(zip(tasks_table.column("task_index").to_pylist(),
                     tasks_table.column(pandas["index_columns"][0]).to_pylist()))
    episodes = pq.read_table(root / "meta" / "episodes").to_pylist()
    result = {"info": info, "tasks": tasks, "episodes": []}
    for episode in episodes:
        data = pq.read_table(root / info["data_path"].format(chunk_index=episode["data/chunk_index"],
                                                            file_index=episode["data/file_index"])).to_pylist()
        rows = [row for row in data if episode["dataset_from_index"] <= row["index"] < episode["dataset_to_index"]]
        images = [cv2.cvtColor(cv2.imdecode(np.frombuffer(row["observation.image"]["bytes"], np.uint8),
                                            cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for row in rows]
        result["episodes"].append({
            "tasks": episode["tasks"], "task_of_rows": [tasks[row["task_index"]] for row in rows],
            "frames": np.stack(images), "state": np.array([row["observation.state"] for row in rows]),
            "stats_columns": sorted(k for k in episode if k.startswith("stats/")),
        })
    return result


def test_the_fixture_is_the_shared_lerobot_dataset():
    if not SHARED.is_dir():
        pytest.skip("../shared/lerobot is not beside this checkout")
    for path in SHARED.rglob("*"):
        if path.is_file():
            assert (FIXTURE / path.relative_to(SHARED)).read_bytes() == path.read_bytes(), path


def test_reads_a_dataset_lerobot_wrote(lerobot_dataset):
    reader = EpisodeReader(lerobot_dataset, action_meaning="commanded-delta")
    reference = documented_reader(lerobot_dataset)
    assert reader.episodes == [0, 1, 2] and reader.fps == 4 and reader.image_shape == (64, 64, 3)
    assert [reader.task(e) for e in reader.episodes] == ["push the cube", "reach", "push the cube"]
    for episode, expected in zip(reader.episodes, reference["episodes"]):
        np.testing.assert_array_equal(reader.frames(episode), expected["frames"])
        states = reader.states(episode)
        t = np.arange(6)[:, None]
        np.testing.assert_allclose(states, 0.01 * np.arange(7) + 0.02 * t + episode, atol=1e-6)
        np.testing.assert_allclose(reader.actions(episode), np.full((5, 7), 0.02), atol=1e-7)
    np.testing.assert_array_equal(reader.all_frames(), np.concatenate([e["frames"] for e in reference["episodes"]]))
    derived = EpisodeReader(lerobot_dataset, action_meaning="from-states").actions(1)
    assert derived.shape == (5, 7) and np.allclose(derived[:, :3], 0.02, atol=1e-6)


def test_our_stats_are_the_ones_lerobot_computed(lerobot_dataset):
    theirs = json.loads((lerobot_dataset / "meta" / "stats.json").read_text())
    reader = EpisodeReader(lerobot_dataset, action_meaning="commanded-delta")
    episode_stats = []
    for episode in reader.episodes:
        episode_stats.append({
            "observation.image": lerobot_stats.image_stats(reader.frames(episode)),
            "observation.state": lerobot_stats.vector_stats(reader.column("observation.state", episode)),
            "frame_index": lerobot_stats.vector_stats(reader.column("frame_index", episode)),
        })
    for name in ("observation.image", "observation.state", "frame_index"):
        ours = lerobot_stats.to_json(lerobot_stats.aggregate([s[name] for s in episode_stats]))
        assert set(ours) == set(theirs[name])
        for key in ours:
            if name == "observation.image" and key == "std":
                continue  # LeRobot 0.4.4 squares uint8 pixels and wraps around (lerobot_stats.py)
            np.testing.assert_allclose(ours[key], theirs[name][key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")


def test_what_we_write_has_lerobots_layout(lerobot_dataset, tmp_path):
    ours = tmp_path / "ours"
    convert_dataset(lerobot_dataset, ours, action_meaning="commanded-delta")
    for folder in (lerobot_dataset, ours):
        assert (folder / "data" / "chunk-000" / "file-000.parquet").is_file()
        assert (folder / "meta" / "episodes" / "chunk-000" / "file-000.parquet").is_file()
    theirs_info = json.loads((lerobot_dataset / "meta" / "info.json").read_text())
    our_info = json.loads((ours / "meta" / "info.json").read_text())
    assert set(theirs_info) <= set(our_info)
    assert {k: our_info[k] for k in ("codebase_version", "fps", "chunks_size", "data_files_size_in_mb",
                                     "video_files_size_in_mb", "data_path", "video_path", "splits", "total_frames",
                                     "total_episodes", "total_tasks")} == {
        k: theirs_info[k] for k in ("codebase_version", "fps", "chunks_size", "data_files_size_in_mb",
                                    "video_files_size_in_mb", "data_path", "video_path", "splits", "total_frames",
                                    "total_episodes", "total_tasks")}
    # Same columns and Arrow types in the data, the same episodes table and the same tasks table.
    data = "data/chunk-000/file-000.parquet"
    their_schema, our_schema = pq.read_schema(lerobot_dataset / data), pq.read_schema(ours / data)
    for field in their_schema:
        assert our_schema.field(field.name).type == field.type, field.name
    episodes = "meta/episodes/chunk-000/file-000.parquet"
    their_columns = set(pq.read_schema(lerobot_dataset / episodes).names)
    our_columns = set(pq.read_schema(ours / episodes).names)
    assert their_columns - our_columns == set()
    assert our_columns - their_columns == {f"stats/{COMMANDED_ACTION}/{k}" for k in lerobot_stats.STAT_KEYS}
    assert pq.read_schema(ours / "meta/tasks.parquet").names == pq.read_schema(lerobot_dataset / "meta/tasks.parquet").names
    their_stats = json.loads((lerobot_dataset / "meta" / "stats.json").read_text())
    our_stats = json.loads((ours / "meta" / "stats.json").read_text())
    assert set(their_stats) <= set(our_stats)
    assert all(set(our_stats[name]) == set(lerobot_stats.STAT_KEYS) for name in our_stats)
    # And the documented reader finds in ours what it finds in theirs.
    theirs, mine = documented_reader(lerobot_dataset), documented_reader(ours)
    assert mine["tasks"] == theirs["tasks"] == {0: "push the cube", 1: "reach"}
    for a, b in zip(theirs["episodes"], mine["episodes"]):
        np.testing.assert_array_equal(a["frames"], b["frames"])
        np.testing.assert_allclose(a["state"], b["state"], atol=1e-7)
        assert a["tasks"] == b["tasks"] and a["task_of_rows"] == b["task_of_rows"]
    assert "LeRobot" in (ours / "README.md").read_text()
    commanded = EpisodeReader(ours).column(COMMANDED_ACTION, 0)
    np.testing.assert_allclose(commanded, 0.02, atol=1e-6)


def test_append_grows_a_dataset_and_a_failed_append_changes_nothing(lerobot_dataset, tmp_path):
    ours = tmp_path / "ours"
    convert_dataset(lerobot_dataset, ours, action_meaning="commanded-delta")
    before = {p.relative_to(ours): p.read_bytes() for p in ours.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeWriter(ours, fps=4, image_shape=(64, 64, 3), robot_type="franka",
                           optional_features={COMMANDED_ACTION: ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
                           append=True) as writer:
            writer.start_episode("reach")
            writer.add_frame(np.zeros((64, 64, 3), np.uint8), np.zeros(7), extras={COMMANDED_ACTION: np.zeros(7)})
            writer.end_episode()
            raise RuntimeError("boom")
    assert {p.relative_to(ours): p.read_bytes() for p in ours.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example_v30", "ours"]

    convert_dataset(lerobot_dataset, ours, action_meaning="commanded-delta", append=True)
    grown = EpisodeReader(ours)
    assert grown.num_episodes == 6 and grown.total_frames == 36
    assert (ours / "data" / "chunk-000" / "file-001.parquet").is_file()  # new episodes, new data file
    np.testing.assert_array_equal(grown.frames(4), grown.frames(1))
    assert [grown.task(e) for e in grown.episodes] == ["push the cube", "reach", "push the cube"] * 2
    assert documented_reader(ours)["tasks"] == {0: "push the cube", 1: "reach"}
    info = json.loads((ours / "meta" / "info.json").read_text())
    stats = json.loads((ours / "meta" / "stats.json").read_text())
    assert info["total_episodes"] == 6 and info["splits"] == {"train": "0:6"}
    assert stats["observation.state"]["count"] == [36]
    once = json.loads((tmp_path / "example_v30" / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(stats["observation.state"]["mean"], once["observation.state"]["mean"], rtol=1e-5)


def test_datasets_that_cannot_be_mapped_are_refused_with_the_reason(lerobot_dataset):
    info = json.loads((lerobot_dataset / "meta" / "info.json").read_text())
    with pytest.raises(UnmappableDataset, match="--action-meaning"):
        EpisodeReader(lerobot_dataset)
    joints = json.loads(json.dumps(info))
    joints["features"]["observation.state"]["names"] = [f"joint{i}" for i in range(7)]
    with pytest.raises(UnmappableDataset, match="joint-space only"):
        resolve(joints, action_meaning="from-states")
    blind = json.loads(json.dumps(info))
    del blind["features"]["observation.image"]
    with pytest.raises(UnmappableDataset, match="no camera"):
        resolve(blind, action_meaning="from-states")
    two = json.loads(json.dumps(info))
    two["features"]["observation.images.wrist"] = dict(info["features"]["observation.image"])
    two["features"]["observation.images.top"] = two["features"].pop("observation.image")
    with pytest.raises(UnmappableDataset, match="--camera-key"):
        resolve(two, action_meaning="from-states")
    assert resolve(two, camera_key="observation.images.top", action_meaning="from-states").camera_key == \
        "observation.images.top"
    prefixed = json.loads(json.dumps(info))
    prefixed["features"]["observation.state"]["names"] = ["ee_" + n for n in info["features"]["observation.state"]["names"]]
    assert resolve(prefixed, action_meaning="from-states").state_indices == tuple(range(7))
    # The real files with a joint-space state: refused when opened, nothing written.
    (lerobot_dataset / "meta" / "info.json").write_text(json.dumps(joints))
    with pytest.raises(UnmappableDataset, match="joint-space only"):
        EpisodeReader(lerobot_dataset, action_meaning="from-states")


def test_reads_a_lerobot_dataset_whose_camera_is_video(tmp_path):
    root = tmp_path / "video"
    shutil.copytree(FIXTURE.parent / "lerobot_video_v30", root)
    with pytest.raises(UnmappableDataset, match="--action-meaning"):
        EpisodeReader(root)
    reader = EpisodeReader(root, action_meaning="absolute-pose")
    assert reader.camera_key == "observation.images.front" and reader.image_shape == (48, 64, 3)
    y, x = np.mgrid[0:48, 0:64]
    for episode in reader.episodes:
        frames = reader.frames(episode)
        assert frames.shape == (6, 48, 64, 3)
        for t, frame in enumerate(frames):  # AV1 is lossy: the synthetic gradient comes back closely
            expected = np.stack([(x * 4 + 20 * t) % 256, (y * 5 + 60 * episode) % 256, np.full_like(x, 128)], -1)
            assert np.abs(frame.astype(int) - expected).mean() < 12, (episode, t)
    # absolute-pose: the commanded target 0.02 everywhere, relative to each state.
    states = reader.states(1).astype(np.float64)
    np.testing.assert_allclose(reader.actions(1)[:, :3], 0.02 - states[:-1, :3], atol=1e-6)
    converted = tmp_path / "ours"
    convert_dataset(root, converted, action_meaning="from-states")
    ours = EpisodeReader(converted)
    np.testing.assert_array_equal(ours.frames(1), reader.frames(1))  # stored losslessly from the decoded video
    assert ours.info["source"]["camera_key"] == "observation.images.front"


def test_video_option_writes_lerobots_mp4_layout_and_appends(tmp_path):
    y, x = np.mgrid[0:32, 0:48]
    def clip(episode):
        return [np.stack([(x * 5 + 15 * t) % 256, (y * 7 + 50 * episode) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
                for t in range(5)]
    def write(root, episodes, append=False):
        with EpisodeWriter(root, fps=4, image_shape=(32, 48, 3), video=True, append=append) as writer:
            for episode in episodes:
                writer.start_episode("slide")
                for t, image in enumerate(clip(episode)):
                    writer.add_frame(image, np.r_[0.01 * t, 0, 0, 0, 0, 0, 0])
                writer.end_episode()
    root = tmp_path / "video"
    write(root, [0, 1])
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.image"]["dtype"] == "video"
    assert info["features"]["observation.image"]["info"]["video.codec"] == "av1"
    assert "observation.image" not in pq.read_schema(root / "data" / "chunk-000" / "file-000.parquet").names
    rows = pq.read_table(root / "meta" / "episodes").to_pylist()
    assert [(r["videos/observation.image/from_timestamp"], r["videos/observation.image/to_timestamp"]) for r in rows] \
        == [(0.0, 1.25), (1.25, 2.5)]
    write(root, [2], append=True)  # a new episode goes to a new video file
    assert (root / "videos" / "observation.image" / "chunk-000" / "file-001.mp4").is_file()
    reader = EpisodeReader(root)
    assert reader.num_episodes == 3
    for episode in reader.episodes:
        decoded = reader.frames(episode).astype(int)
        assert np.abs(decoded - np.stack(clip(episode))).mean() < 8, episode  # AV1 at CRF 30: lossy but close
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert np.array(stats["observation.image"]["mean"]).shape == (3, 1, 1)
