"""Recorded episodes on disk as LeRobot v3.0 datasets, read by LeRobot itself (format: EPISODES.md).

    DIR/meta/info.json                               fps, features, totals, path templates, file sizes
    DIR/meta/stats.json                              every feature: min/max/mean/std/count/q01..q99
    DIR/meta/tasks.parquet                           task text (pandas index) -> task_index
    DIR/meta/episodes/chunk-000/file-000.parquet     one row per episode: length, index range, files, stats
    DIR/data/chunk-000/file-000.parquet              one row per frame, PNG frames embedded
    DIR/README.md                                    dataset card

Actions are derived, never taken from the command: action[t] is the pose difference between the
achieved states of frames t and t+1 (DROID / V-JEPA 2-AC labels); the last frame's action is zero.
`EpisodeReader` also reads datasets LeRobot wrote (any camera, an end-effector state found by
name, a declared action meaning: lerobot_mapping.py) and our earlier layout with loose PNG files.
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

from robot_bridge import lerobot_files as files
from robot_bridge import lerobot_stats as stats
from robot_bridge.arm import STATE_DIM
from robot_bridge.lerobot_files import CODEBASE_VERSION, DATA_PATH, EPISODES_PATH
from robot_bridge.lerobot_mapping import POSE_NAMES, FeatureMapping, resolve
from robot_bridge.poses import pose_difference

IMAGE_KEY = "observation.image"
LEGACY_IMAGE_PATH = "images/{image_key}/episode-{episode_index:06d}/frame-{frame_index:06d}.png"
FRAME_CACHE = "cache/{camera_key}.npy"
JOINT_NAMES = [f"joint{i}" for i in range(1, 8)]
_BOOKKEEPING = files.BOOKKEEPING
# Optional per-frame vectors a recorder may add (name -> element names).
JOINTS = "observation.joints"
COMMANDED_ACTION = "action.commanded"       # what was asked, for comparison with the achieved `action`
ENVIRONMENT_STATE = "observation.environment_state"  # LeRobot's name for non-robot state (the cube)
CONVENTIONS = {
    "state": "[x, y, z (m, robot base frame), roll, pitch, yaw (rad, extrinsic xyz), gripper 0=open..1=closed]",
    "action": "achieved pose difference from frame t to t+1: [dxyz, xyz-Euler of R_{t+1} R_t^T, dgripper]",
    "last_action": "zero: an episode of T frames has T-1 real actions",
}


def _vector_feature(names: list[str]) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


def _scalar_feature(dtype: str) -> dict:
    return {"dtype": dtype, "shape": [1], "names": None}


def _number(value: float) -> float | int:
    """LeRobot stores fps as an integer; keep a fractional rate as it is."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass
class _Episode:
    task: str
    images: list[np.ndarray] = field(default_factory=list)
    pngs: list[bytes] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)


class EpisodeWriter:
    """Writes a dataset into a staging folder and moves it into place on `finalize`.

    Nothing appears at `root` until `finalize` succeeds, and an existing dataset is never
    overwritten, so an interrupted recording loses nothing that was there before. With
    `append=True` an existing dataset of the same features grows: its files are hard-linked into
    the staging folder, new episodes go to new data files, and the grown dataset replaces the old
    one only once complete (a crash leaves the old one as it was).

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
        append: bool = False,
        data_files_size_in_mb: float = files.DATA_FILES_SIZE_IN_MB,
        video: bool = False,
    ):
        self.root = Path(root)
        existing = self.root.exists() and any(self.root.iterdir())
        if existing and not append:
            raise FileExistsError(f"{self.root} exists and is not empty; choose a new folder (or append)")
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
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video = video  # frames as an AV1 mp4 per chunk file instead of PNGs in the parquet (lossy)
        self.features = self._features()
        self._schema = files.data_schema(self.features)
        self._rows: list[dict] = []            # episodes table rows, stats included
        self._episode_stats: list[dict] = []   # feature -> stat -> array, per episode
        self._tasks: dict[str, int] = {}
        self._total_frames = 0
        self._file = (0, 0)                    # (chunk, file) the next episode's data goes to
        self._parquet: pq.ParquetWriter | None = None
        self._video_file = (0, 0)
        self._video = None                     # lerobot_video.VideoFileWriter of the open video file
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._staging = self.root.parent / f".{self.root.name}.partial-{os.getpid()}"
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging.mkdir()
        self._appending = existing
        if existing:
            self._adopt_existing()
        self._current: _Episode | None = None
        self._finalized = False

    # ---- recording ------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    def start_episode(self, task: str = "") -> int:
        if self._current is not None:
            raise RuntimeError("end_episode() the current episode before starting another")
        self._require_open()
        self._current = _Episode(task=task, extras={name: [] for name in self.optional_features})
        return self.num_episodes

    def add_frame(
        self,
        image: np.ndarray,
        state: np.ndarray,
        timestamp: float | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append one frame; checks everything before keeping anything."""
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
        # PNG is lossless: training sees exactly the pixels the camera produced.
        png = b""
        if not self.video:
            ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise OSError("could not encode the frame as PNG")
            png = encoded.tobytes()
        for name, vector in extras.items():
            episode.extras[name].append(vector)
        episode.images.append(image.copy())
        episode.pngs.append(png)
        episode.states.append(state)
        episode.timestamps.append(timestamp)

    def end_episode(self) -> int:
        """Write the current episode (at least one frame) to the data file; returns its index."""
        episode = self._require_episode()
        if not episode.states:
            raise ValueError("an episode needs at least one frame")
        index, length, start = self.num_episodes, len(episode.states), self._total_frames
        states = np.stack(episode.states)
        actions = np.zeros_like(states)
        actions[:-1] = pose_difference(states[:-1], states[1:])
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        values = {
            IMAGE_KEY: [{"bytes": png, "path": f"frame-{i:06d}.png"} for i, png in enumerate(episode.pngs)],
            "observation.state": states,
            "action": actions,
            **{name: np.stack(vectors) for name, vectors in episode.extras.items()},
            "timestamp": np.asarray(episode.timestamps),
            "frame_index": np.arange(length),
            "episode_index": np.full(length, index),
            "index": np.arange(start, start + length),
            "task_index": np.full(length, task_index),
        }
        table = pa.Table.from_arrays([files.column(values[name], self.features[name]) for name in self._schema.names],
                                     schema=self._schema)
        chunk_index, file_index = self._data_file_for_next_episode()
        self._parquet.write_table(table)
        video_columns = {}
        if self.video:
            video_chunk, video_file = self._video_file_for_next_episode()
            start_s, end_s = self._video.add_episode(np.stack(episode.images))
            video_columns = {f"videos/{IMAGE_KEY}/chunk_index": video_chunk, f"videos/{IMAGE_KEY}/file_index": video_file,
                             f"videos/{IMAGE_KEY}/from_timestamp": start_s, f"videos/{IMAGE_KEY}/to_timestamp": end_s}
        episode_stats = {name: stats.image_stats(np.stack(episode.images)) if name == IMAGE_KEY
                         else stats.vector_stats(np.asarray(values[name], dtype=self.features[name]["dtype"]))
                         for name in self.features}
        row = {
            "episode_index": index,
            "tasks": [episode.task],
            "length": length,
            "data/chunk_index": chunk_index,
            "data/file_index": file_index,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
            **video_columns,
        }
        for name, feature_stats in episode_stats.items():
            for key in stats.STAT_KEYS:
                row[f"stats/{name}/{key}"] = np.asarray(feature_stats[key]).tolist()
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self._rows.append(row)
        self._episode_stats.append(episode_stats)
        self._total_frames += length
        self._current = None
        return index

    def discard_episode(self) -> None:
        """Drop the episode being recorded (e.g. after a fault) without touching finished ones."""
        self._require_episode()
        self._current = None

    # ---- finishing ------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write the metadata, then move the dataset into place (one rename, or a swap when appending)."""
        if self._finalized:
            return self.root
        if self._current is not None:
            raise RuntimeError("end_episode() or discard_episode() before finalize()")
        if not self._rows:
            raise ValueError("no episodes recorded")
        self._close_data_file()
        self._close_video_file()
        for old in (self._staging / "meta" / "episodes").glob("*/*.parquet"):
            old.unlink()  # the appended episodes table replaces them (hard links: the originals stay)
        files.write_parquet(pa.Table.from_pylist(self._rows),
                            self._staging / EPISODES_PATH.format(chunk_index=0, file_index=0))
        tasks = self._staging / files.TASKS_PATH
        tasks.unlink(missing_ok=True)
        files.write_parquet(files.tasks_table(self._tasks), tasks)
        info = self._info()
        aggregated = {name: stats.to_json(stats.aggregate([s[name] for s in self._episode_stats]))
                      for name in self.features}
        for name in (files.INFO_PATH, files.STATS_PATH, files.CARD_PATH):
            (self._staging / name).unlink(missing_ok=True)  # never write through a hard link
        files.write_json(info, self._staging / files.INFO_PATH)
        files.write_json(aggregated, self._staging / files.STATS_PATH)
        from robot_bridge.dataset_card import write_card  # only finishing needs the card template
        write_card(self._staging, info, self._tasks)
        if self._appending:
            retired = self.root.parent / f".{self.root.name}.replaced-{os.getpid()}"
            os.replace(self.root, retired)
            os.replace(self._staging, self.root)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            if self.root.exists():
                self.root.rmdir()  # empty (checked in __init__); rename needs the name free
            os.replace(self._staging, self.root)
        self._finalized = True
        return self.root

    def abort(self) -> None:
        self._close_data_file()
        self._close_video_file()
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    # ---- internals ------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._finalized:
            raise RuntimeError("the dataset is finalized")

    def _require_episode(self) -> _Episode:
        self._require_open()
        if self._current is None:
            raise RuntimeError("start_episode() first")
        return self._current

    def _data_file_for_next_episode(self) -> tuple[int, int]:
        """Keep writing the open data file until it passes the size limit, then start the next one."""
        path = self._staging / DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
        if self._parquet is not None and files.size_in_mb(path) >= self.data_files_size_in_mb:
            self._close_data_file()
            self._file = files.next_file(*self._file)
        if self._parquet is None:
            path = self._staging / DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._parquet = pq.ParquetWriter(path, self._schema, compression="snappy")
        return self._file

    def _video_file_for_next_episode(self) -> tuple[int, int]:
        from robot_bridge.lerobot_video import VideoFileWriter

        path = self._staging / files.VIDEO_PATH.format(video_key=IMAGE_KEY, chunk_index=self._video_file[0],
                                                       file_index=self._video_file[1])
        if self._video is not None and files.size_in_mb(path) >= files.VIDEO_FILES_SIZE_IN_MB:
            self._close_video_file()
            self._video_file = files.next_file(*self._video_file)
        if self._video is None:
            path = self._staging / files.VIDEO_PATH.format(video_key=IMAGE_KEY, chunk_index=self._video_file[0],
                                                           file_index=self._video_file[1])
            self._video = VideoFileWriter(path, self.fps, self.image_shape[0], self.image_shape[1])
        return self._video_file

    def _close_video_file(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None

    def _close_data_file(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def _adopt_existing(self) -> None:
        """Hard-link an existing dataset into staging and continue its episodes, tasks and totals."""
        info = json.loads((self.root / files.INFO_PATH).read_text())
        if info.get("codebase_version") != CODEBASE_VERSION or "conventions" not in info:
            raise ValueError(f"{self.root}: only datasets written by EpisodeWriter ({CODEBASE_VERSION}) can be appended to")
        theirs = {name: (f["dtype"], list(f["shape"]), f.get("names")) for name, f in info["features"].items()}
        ours = {name: (f["dtype"], list(f["shape"]), f.get("names")) for name, f in self.features.items()}
        if theirs != ours or float(info["fps"]) != self.fps:
            raise ValueError(f"{self.root} has other features or fps ({info['fps']}); append needs the same")
        for source in self.root.rglob("*"):
            relative = source.relative_to(self.root)
            if source.is_file() and relative.parts[0] != "cache":
                (self._staging / relative).parent.mkdir(parents=True, exist_ok=True)
                os.link(source, self._staging / relative)
        reader = EpisodeReader(self.root)
        self._rows = [dict(row) for row in reader.episode_rows]
        self._episode_stats = [{name: {key: np.asarray(row[f"stats/{name}/{key}"]) for key in stats.STAT_KEYS}
                                for name in self.features} for row in self._rows]
        self._tasks = {text: index for index, text in reader.tasks.items()}
        self._total_frames = reader.total_frames
        last = max((row["data/chunk_index"], row["data/file_index"]) for row in self._rows)
        self._file = files.next_file(*last)
        if self.video:
            last_video = max((row[f"videos/{IMAGE_KEY}/chunk_index"], row[f"videos/{IMAGE_KEY}/file_index"])
                             for row in self._rows)
            self._video_file = files.next_file(*last_video)
        self.extra_info = {key: value for key, value in info.items() if key not in self._info_keys()} | self.extra_info

    def _features(self) -> dict:
        height, width, channels = self.image_shape
        camera = {"dtype": "image", "shape": [height, width, channels], "names": ["height", "width", "channels"]}
        if self.video:
            from robot_bridge.lerobot_video import video_info

            camera.update(dtype="video", info=video_info(height, width, _number(self.fps), "libsvtav1"))
        features = {
            IMAGE_KEY: camera,
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

    @staticmethod
    def _info_keys() -> set[str]:
        return {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                "features", "conventions"}

    def _info(self) -> dict:
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": files.CHUNKS_SIZE,
            "data_files_size_in_mb": _number(self.data_files_size_in_mb),
            "video_files_size_in_mb": files.VIDEO_FILES_SIZE_IN_MB,
            "fps": _number(self.fps),
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": files.VIDEO_PATH if self.video else None,
            "features": self.features,
            "conventions": CONVENTIONS,
            **self.extra_info,
        }


class EpisodeReader:
    """Reads a LeRobot v3.0 dataset: ours, or any with a camera and an end-effector state.

    `camera_key` picks the camera (default: observation.image, or the only one) and
    `action_meaning` says what a foreign dataset's action column means (see lerobot_mapping.py; on our own
    recordings commanded-delta reads `action.commanded`, achieved the default `action`);
    states() and actions() then speak our pose convention whatever the dataset calls its columns.
    """

    def __init__(self, root: str | os.PathLike, camera_key: str | None = None, action_meaning: str | None = None):
        self.root = Path(root)
        info_path = self.root / files.INFO_PATH
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root} is not an episode dataset (no meta/info.json)")
        self.info = json.loads(info_path.read_text())
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise ValueError(f"{self.root} is LeRobot format {version}; only {CODEBASE_VERSION} is read "
                             "(LeRobot converts older datasets with its v30 conversion script)")
        # Our recordings (and our conversions) keep what was asked beside the achieved `action`.
        commanded = action_meaning == "commanded-delta" and COMMANDED_ACTION in self.info.get("features", {})
        self.mapping: FeatureMapping = resolve(self.info, camera_key, action_meaning,
                                               action_key=COMMANDED_ACTION if commanded else "action")
        self.camera_key = self.mapping.camera_key
        self.fps = float(self.info["fps"])
        self.image_shape = tuple(self.info["features"][self.camera_key]["shape"])
        self.episode_rows = pq.read_table(self.root / "meta" / "episodes").sort_by("episode_index").to_pylist()
        self._episodes = {row["episode_index"]: row for row in self.episode_rows}
        self.tasks = files.read_tasks(self.root) if (self.root / files.TASKS_PATH).is_file() else {}
        # The vector columns are read once, whole: they are small next to the frames.
        self._files = sorted({(row["data/chunk_index"], row["data/file_index"]) for row in self.episode_rows})
        vectors = [name for name, feature in self.info["features"].items() if feature["dtype"] not in ("image", "video")]
        tables = [pq.read_table(self._data_path(chunk, file), columns=vectors) for chunk, file in self._files]
        table = pa.concat_tables(tables).sort_by("index")
        self._index = table.column("index").to_numpy()
        self._columns = {name: _column_array(table.column(name)) for name in table.column_names if name != "index"}
        self._camera_in_table = self.mapping.camera_dtype == "image" and self.camera_key in pq.read_schema(
            self._data_path(*self._files[0])).names
        self._image_file: tuple | None = None  # (file key, its first index, its camera column)

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
        """(T, 7) float32 achieved end-effector states [x, y, z, roll, pitch, yaw, gripper]."""
        return self._column(self.mapping.state_key, episode)[:, list(self.mapping.state_indices)]

    def actions(self, episode: int) -> np.ndarray:
        """(T-1, 7) float32: action[t] takes frame t to frame t+1, per the dataset's action meaning."""
        mapping = self.mapping
        states = self.states(episode)
        if mapping.action_meaning == "from-states":
            return pose_difference(states[:-1], states[1:]).astype(np.float32)
        column = self._column(mapping.action_key, episode)[:, list(mapping.action_indices)]
        if mapping.action_meaning == "absolute-pose":
            return pose_difference(states[:-1], column[:-1]).astype(np.float32)
        return column[:-1]

    def timestamps(self, episode: int) -> np.ndarray:
        return self._column("timestamp", episode).astype(np.float64)

    def joints(self, episode: int) -> np.ndarray | None:
        return self._column(JOINTS, episode) if JOINTS in self._columns else None

    def column(self, name: str, episode: int) -> np.ndarray:
        """Any per-frame vector column, e.g. `COMMANDED_ACTION` or `ENVIRONMENT_STATE`."""
        if name not in self._columns:
            raise KeyError(f"no column {name!r}; have {sorted(self._columns)}")
        return self._column(name, episode)

    def frames(self, episode: int) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB frames of one episode from the chosen camera."""
        row = self._row(episode)
        if self.mapping.camera_dtype == "video":
            from robot_bridge.lerobot_video import read_episode_frames

            path = self.root / self.info["video_path"].format(
                video_key=self.camera_key, chunk_index=row[f"videos/{self.camera_key}/chunk_index"],
                file_index=row[f"videos/{self.camera_key}/file_index"])
            frames = read_episode_frames(path, row[f"videos/{self.camera_key}/from_timestamp"], row["length"], self.fps)
        elif self._camera_in_table:
            frames = np.stack([self._decode(item, episode, i) for i, item in enumerate(self._embedded_images(row))])
        else:
            frames = np.stack([self._read_png_file(episode, frame) for frame in range(row["length"])])
        if frames.shape[1:] != self.image_shape:
            raise ValueError(f"episode {episode} frames are {frames.shape[1:]}, the dataset says {self.image_shape}")
        return frames

    def episode_range(self, episode: int) -> tuple[int, int]:
        """[from, to) of the episode's frames in the global frame order (`all_frames`)."""
        row = self._row(episode)
        return int(row["dataset_from_index"]), int(row["dataset_to_index"])

    def all_frames(self, cache: bool = True) -> np.ndarray:
        """(total_frames, H, W, 3) uint8 in global index order, memory-mapped from a .npy cache.

        The first call decodes every frame and, if the folder is writable, saves the cache, so
        training epochs read one contiguous file instead of decoding thousands of images.
        """
        path = self.root / FRAME_CACHE.format(camera_key=self.camera_key)
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
    def _data_path(self, chunk: int, file: int) -> Path:
        return self.root / self.info.get("data_path", DATA_PATH).format(chunk_index=chunk, file_index=file)

    def _row(self, episode: int) -> dict:
        if episode not in self._episodes:
            raise KeyError(f"no episode {episode}; the dataset has {self.num_episodes}")
        return self._episodes[episode]

    def _column(self, name: str, episode: int) -> np.ndarray:
        start, end = self.episode_range(episode)
        offset = self._index[0]
        return self._columns[name][start - offset : end - offset]

    def _embedded_images(self, row: dict) -> list[dict]:
        """The episode's image cells; the camera column of one data file is kept, so reading a file's
        episodes in order (as all_frames does) reads each file once."""
        key = (row["data/chunk_index"], row["data/file_index"])
        if self._image_file is None or self._image_file[0] != key:
            table = pq.read_table(self._data_path(*key), columns=[self.camera_key, "index"])
            self._image_file = (key, table.column("index")[0].as_py(), table.column(self.camera_key))
        _, first, images = self._image_file
        return images.slice(row["dataset_from_index"] - first, row["length"]).to_pylist()

    def _decode(self, item: dict | None, episode: int, frame: int) -> np.ndarray:
        data = None if item is None else item.get("bytes")
        if data is None and item is not None and item.get("path"):
            data = (self.root / item["path"]).read_bytes() if (self.root / item["path"]).is_file() else None
        image = None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"episode {episode} frame {frame} of {self.camera_key}: missing or unreadable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _read_png_file(self, episode: int, frame: int) -> np.ndarray:
        """Our layout before v3.0-exact: loose PNG files under images/."""
        path = self.root / self.info.get("image_path", LEGACY_IMAGE_PATH).format(
            image_key=self.camera_key, episode_index=episode, frame_index=frame)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"missing or unreadable frame {path}")
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
