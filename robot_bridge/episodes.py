"""Recorded episodes on disk, following the LeRobotDataset v3 layout (format: EPISODES.md).

    DIR/meta/info.json                                  fps, features, totals, path templates
    DIR/meta/tasks.parquet                              task_index -> task text
    DIR/meta/episodes/chunk-000/file-000.parquet        one row per episode: length, global index range
    DIR/data/chunk-000/file-000.parquet                 one row per frame: state, action, timestamp, ...
    DIR/images/observation.image/episode-XXXXXX/frame-XXXXXX.png   lossless frames

Actions are derived, never taken from the command: action[t] is the pose difference between the
achieved states of frames t and t+1 (DROID / V-JEPA 2-AC labels); the last frame's action is zero.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robot_bridge.arm import STATE_DIM
from robot_bridge.poses import pose_difference

CODEBASE_VERSION = "v3.0"
IMAGE_KEY = "observation.image"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PATH = "images/{image_key}/episode-{episode_index:06d}/frame-{frame_index:06d}.png"
FRAME_CACHE = "cache/observation.image.npy"
POSE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
JOINT_NAMES = [f"joint{i}" for i in range(1, 8)]
_BOOKKEEPING = ("index", "episode_index", "frame_index", "timestamp", "task_index")
# Optional per-frame vectors a recorder may add (name -> element names).
JOINTS = "observation.joints"
COMMANDED_ACTION = "action.commanded"       # what was asked, for comparison with the achieved `action`
ENVIRONMENT_STATE = "observation.environment_state"  # LeRobot's name for non-robot state (the cube)


def _vector_feature(names: list[str]) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": names}


def _scalar_feature(dtype: str) -> dict:
    return {"dtype": dtype, "shape": [1], "names": None}


@dataclass
class _Episode:
    task: str
    states: list[np.ndarray] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)


class EpisodeWriter:
    """Writes a new dataset into a staging folder and moves it into place on `finalize`.

    Nothing appears at `root` until `finalize` succeeds, and an existing dataset is never
    overwritten, so an interrupted recording loses nothing that was there before.

        with EpisodeWriter(out, fps=4, image_shape=(64, 64, 3)) as writer:
            writer.start_episode("push the cube")
            writer.add_frame(image, state)           # timestamp defaults to frame_index / fps
                                                     # extras={JOINTS: q} for optional vectors
            writer.end_episode()
        # leaving the block finalizes; an exception discards the staging folder
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: float,
        image_shape: tuple[int, int, int],
        robot_type: str = "sim_franka_style",
        optional_features: dict[str, list[str]] | None = None,
        extra_info: dict | None = None,
    ):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} exists and is not empty; choose a new folder")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if len(image_shape) != 3 or image_shape[2] != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (height, width, 3), got {image_shape}")
        self.fps = float(fps)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.robot_type = robot_type
        self.optional_features = {name: list(names) for name, names in (optional_features or {}).items()}
        for name in self.optional_features:
            if name in ("observation.state", "action", IMAGE_KEY) or name in _BOOKKEEPING:
                raise ValueError(f"{name!r} is a built-in column, not an optional feature")
        self.extra_info = dict(extra_info or {})
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._staging = self.root.parent / f".{self.root.name}.partial-{os.getpid()}"
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging.mkdir()
        self._columns: dict[str, list] = {name: [] for name in self._column_names()}
        self._episode_rows: list[dict] = []
        self._tasks: dict[str, int] = {}
        self._current: _Episode | None = None
        self._finalized = False

    # ---- recording ------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._episode_rows)

    def start_episode(self, task: str = "") -> int:
        if self._current is not None:
            raise RuntimeError("end_episode() the current episode before starting another")
        self._current = _Episode(task=task, extras={name: [] for name in self.optional_features})
        return self.num_episodes

    def add_frame(
        self,
        image: np.ndarray,
        state: np.ndarray,
        timestamp: float | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append one frame; checks everything before writing anything."""
        episode = self._require_episode()
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != self.image_shape:
            raise ValueError(f"image must be uint8 {self.image_shape}, got {image.dtype} {image.shape}")
        state = _finite_vector(state, "state")
        frame_index = len(episode.states)
        timestamp = frame_index / self.fps if timestamp is None else float(timestamp)
        if not np.isfinite(timestamp) or (episode.timestamps and timestamp <= episode.timestamps[-1]):
            raise ValueError(f"timestamps must be finite and increasing, got {timestamp} after {episode.timestamps[-1:]}")
        extras = dict(extras or {})
        if set(extras) != set(self.optional_features):
            raise ValueError(f"extras must be exactly {sorted(self.optional_features)}, got {sorted(extras)}")
        extras = {name: _finite_vector(extras[name], name, len(names)) for name, names in self.optional_features.items()}
        path = self._staging / IMAGE_PATH.format(image_key=IMAGE_KEY, episode_index=self.num_episodes, frame_index=frame_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        # PNG is lossless: training sees exactly the pixels the camera produced.
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"could not write {path}")
        for name, vector in extras.items():
            episode.extras[name].append(vector)
        episode.states.append(state)
        episode.timestamps.append(timestamp)

    def end_episode(self) -> int:
        """Close the current episode (at least one frame); returns its episode index."""
        episode = self._require_episode()
        if not episode.states:
            raise ValueError("an episode needs at least one frame")
        index, length = self.num_episodes, len(episode.states)
        start = len(self._columns["index"])
        states = np.stack(episode.states)
        actions = np.zeros_like(states)
        actions[:-1] = pose_difference(states[:-1], states[1:])
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        columns = self._columns
        columns["index"].extend(range(start, start + length))
        columns["episode_index"].extend([index] * length)
        columns["frame_index"].extend(range(length))
        columns["timestamp"].extend(episode.timestamps)
        columns["task_index"].extend([task_index] * length)
        columns["observation.state"].extend(states.astype(np.float32))
        columns["action"].extend(actions.astype(np.float32))
        for name, vectors in episode.extras.items():
            columns[name].extend(np.stack(vectors).astype(np.float32))
        self._episode_rows.append(
            {
                "episode_index": index,
                "tasks": [episode.task],
                "length": length,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
            }
        )
        self._current = None
        return index

    def discard_episode(self) -> None:
        """Drop the episode being recorded (e.g. after a fault) without touching finished ones."""
        self._require_episode()
        folder = self._staging / "images" / IMAGE_KEY / f"episode-{self.num_episodes:06d}"
        shutil.rmtree(folder, ignore_errors=True)
        self._current = None

    # ---- finishing ------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write the tables and metadata, then move the dataset into place in one rename."""
        if self._finalized:
            return self.root
        if self._current is not None:
            raise RuntimeError("end_episode() or discard_episode() before finalize()")
        if not self._episode_rows:
            raise ValueError("no episodes recorded")
        self._write_parquet(DATA_PATH.format(chunk_index=0, file_index=0), self._data_table())
        self._write_parquet(EPISODES_PATH.format(chunk_index=0, file_index=0), pa.Table.from_pylist(self._episode_rows))
        tasks = pa.table({"task_index": list(self._tasks.values()), "task": list(self._tasks.keys())})
        self._write_parquet("meta/tasks.parquet", tasks)
        (self._staging / "meta" / "info.json").write_text(json.dumps(self._info(), indent=2))
        (self._staging / "meta" / "stats.json").write_text(json.dumps(self._stats(), indent=2))
        if self.root.exists():
            self.root.rmdir()  # empty (checked in __init__); rename needs the name free
        os.replace(self._staging, self.root)
        self._finalized = True
        return self.root

    def abort(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # ---- internals ------------------------------------------------------------------------
    def _require_episode(self) -> _Episode:
        if self._finalized:
            raise RuntimeError("the dataset is finalized")
        if self._current is None:
            raise RuntimeError("start_episode() first")
        return self._current

    def _column_names(self) -> list[str]:
        return [*_BOOKKEEPING, "observation.state", "action", *self.optional_features]

    def _data_table(self) -> pa.Table:
        arrays = {}
        for name, values in self._columns.items():
            if name not in _BOOKKEEPING:
                stacked = np.stack(values)
                flat = pa.array(stacked.reshape(-1), type=pa.float32())
                arrays[name] = pa.FixedSizeListArray.from_arrays(flat, stacked.shape[1])
            elif name == "timestamp":
                arrays[name] = pa.array(values, type=pa.float32())
            else:
                arrays[name] = pa.array(values, type=pa.int64())
        return pa.table(arrays)

    def _write_parquet(self, relative: str, table: pa.Table) -> None:
        path = self._staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _features(self) -> dict:
        height, width, channels = self.image_shape
        features = {
            IMAGE_KEY: {"dtype": "image", "shape": [height, width, channels], "names": ["height", "width", "channels"]},
            "observation.state": _vector_feature(POSE_NAMES),
            "action": _vector_feature(POSE_NAMES),
        }
        for name, names in self.optional_features.items():
            features[name] = _vector_feature(names)
        features.update(
            timestamp=_scalar_feature("float32"),
            frame_index=_scalar_feature("int64"),
            episode_index=_scalar_feature("int64"),
            index=_scalar_feature("int64"),
            task_index=_scalar_feature("int64"),
        )
        return features

    def _info(self) -> dict:
        total_frames = len(self._columns["index"])
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": 1000,
            "fps": self.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "image_path": IMAGE_PATH,
            "features": self._features(),
            "conventions": {
                "state": "[x, y, z (m, robot base frame), roll, pitch, yaw (rad, extrinsic xyz), gripper 0=open..1=closed]",
                "action": "achieved pose difference from frame t to t+1: [dxyz, xyz-Euler of R_{t+1} R_t^T, dgripper]",
                "last_action": "zero: an episode of T frames has T-1 real actions",
            },
            **self.extra_info,
        }

    def _stats(self) -> dict:
        stats = {}
        for name in ("observation.state", "action"):
            values = np.stack(self._columns[name]).astype(np.float64)
            stats[name] = {
                "min": values.min(0).tolist(),
                "max": values.max(0).tolist(),
                "mean": values.mean(0).tolist(),
                "std": values.std(0).tolist(),
                "count": [len(values)],
            }
        return stats


class EpisodeReader:
    """Reads a dataset written by `EpisodeWriter` (or any LeRobot-v3 dataset with PNG frames)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root} is not an episode dataset (no meta/info.json)")
        self.info = json.loads(info_path.read_text())
        feature = self.info.get("features", {}).get(IMAGE_KEY)
        if feature is None or feature.get("dtype") != "image":
            raise ValueError(f"{self.root}: expected an image feature {IMAGE_KEY!r} stored as PNG frames")
        self.fps = float(self.info["fps"])
        self.image_shape = tuple(feature["shape"])
        episodes = pq.read_table(self.root / "meta" / "episodes").to_pylist()
        self._episodes = {row["episode_index"]: row for row in episodes}
        self._tasks = {}
        if (self.root / "meta" / "tasks.parquet").is_file():
            tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pydict()
            self._tasks = dict(zip(tasks["task_index"], tasks["task"]))
        # Every data file is read once, whole: the tables are small next to the frames.
        files = sorted({(row["data/chunk_index"], row["data/file_index"]) for row in episodes})
        tables = [pq.read_table(self.root / self.info["data_path"].format(chunk_index=c, file_index=f)) for c, f in files]
        table = pa.concat_tables(tables).sort_by("index")
        self._index = table.column("index").to_numpy()
        self._columns = {
            name: _column_array(table.column(name)) for name in table.column_names if name != "index"
        }

    @property
    def episodes(self) -> list[int]:
        return sorted(self._episodes)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def total_frames(self) -> int:
        return len(self._index)

    def length(self, episode: int) -> int:
        return int(self._row(episode)["length"])

    def task(self, episode: int) -> str:
        tasks = self._row(episode)["tasks"]
        return tasks[0] if tasks else ""

    def states(self, episode: int) -> np.ndarray:
        """(T, 7) float32 achieved end-effector states."""
        return self._column("observation.state", episode)

    def actions(self, episode: int) -> np.ndarray:
        """(T-1, 7) float32: action[t] takes frame t to frame t+1 (the zero padding row is dropped)."""
        return self._column("action", episode)[:-1]

    def timestamps(self, episode: int) -> np.ndarray:
        return self._column("timestamp", episode).astype(np.float64)

    def joints(self, episode: int) -> np.ndarray | None:
        return self._column(JOINTS, episode) if JOINTS in self._columns else None

    def column(self, name: str, episode: int) -> np.ndarray:
        """Any per-frame column, e.g. `COMMANDED_ACTION` or `ENVIRONMENT_STATE`."""
        if name not in self._columns:
            raise KeyError(f"no column {name!r}; have {sorted(self._columns)}")
        return self._column(name, episode)

    def frames(self, episode: int) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames of one episode."""
        row = self._row(episode)
        return np.stack([self._read_png(episode, frame) for frame in range(row["length"])])

    def episode_range(self, episode: int) -> tuple[int, int]:
        """[from, to) of the episode's frames in the global frame order (`all_frames`)."""
        row = self._row(episode)
        return int(row["dataset_from_index"]), int(row["dataset_to_index"])

    def all_frames(self, cache: bool = True) -> np.ndarray:
        """(total_frames, H, W, 3) uint8 in global index order, memory-mapped from a .npy cache.

        The first call decodes every PNG and, if the folder is writable, saves the cache, so
        training epochs read one contiguous file instead of thousands of small images.
        """
        path = self.root / FRAME_CACHE
        expected = (self.total_frames, *self.image_shape)
        if cache and path.is_file():
            frames = np.load(path, mmap_mode="r")
            if frames.shape == expected and frames.dtype == np.uint8:
                return frames
        frames = np.empty(expected, dtype=np.uint8)
        for episode in self.episodes:
            start, end = self.episode_range(episode)
            frames[start - self._index[0] : end - self._index[0]] = self.frames(episode)
        if cache:
            try:
                path.parent.mkdir(exist_ok=True)
                temporary = path.with_suffix(f".tmp-{os.getpid()}.npy")
                np.save(temporary, frames)
                os.replace(temporary, path)
            except OSError:
                pass  # a read-only dataset still works, just without the cache
        return frames

    # ---- internals ------------------------------------------------------------------------
    def _row(self, episode: int) -> dict:
        if episode not in self._episodes:
            raise KeyError(f"no episode {episode}; the dataset has {self.num_episodes}")
        return self._episodes[episode]

    def _column(self, name: str, episode: int) -> np.ndarray:
        start, end = self.episode_range(episode)
        offset = self._index[0]
        return self._columns[name][start - offset : end - offset]

    def _read_png(self, episode: int, frame: int) -> np.ndarray:
        path = self.root / self.info.get("image_path", IMAGE_PATH).format(
            image_key=IMAGE_KEY, episode_index=episode, frame_index=frame
        )
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"missing or unreadable frame {path}")
        if image.shape != self.image_shape:
            raise ValueError(f"{path} is {image.shape}, the dataset says {self.image_shape}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _finite_vector(values: np.ndarray, name: str, size: int = STATE_DIM) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be {size} finite numbers, got {array!r}")
    return array


def _column_array(column: pa.ChunkedArray) -> np.ndarray:
    """Parquet column -> numpy; fixed-size lists become (N, width) arrays."""
    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else len(column[0])
        return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return column.to_numpy(zero_copy_only=False)
