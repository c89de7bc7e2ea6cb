"""`jepa-planner convert`: datasets into the episode format (LeRobot v3.0, our conventions: EPISODES.md).

    jepa-planner convert SRC --out OUT                          # our recordings, also the older loose-PNG layout
    jepa-planner convert SRC --out OUT --camera-key observation.images.wrist --action-meaning commanded-delta
                                                                # any LeRobot v3.0 dataset with an EE state
    jepa-planner convert --from franka-example --out OUT [--fixture F]   # the V-JEPA 2 2-frame Franka clip

The output is what `jepa-planner collect` writes: one camera as `observation.image` (PNG embedded),
the end-effector state in our pose convention, the achieved action derived from the states, and a
dataset card. The source's own action, if it has one, is kept next to it as `action.commanded`
(as a pose delta); its other vector features are kept under their names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from robot_bridge.episodes import COMMANDED_ACTION, EpisodeReader, EpisodeWriter
from robot_bridge.lerobot_files import BOOKKEEPING
from robot_bridge.lerobot_mapping import ACTION_MEANINGS, POSE_NAMES
from robot_bridge.poses import pose_difference

SOURCES = ("dataset", "franka-example")


def kept_vectors(reader: EpisodeReader) -> dict[str, list[str]]:
    """The source's other 1-D numeric features, kept under their names."""
    mapping = reader.mapping
    # Our own columns are written anew; under from-states the source's action is not ours to keep.
    skip = {mapping.state_key, mapping.action_key, "observation.state", "action", COMMANDED_ACTION, *BOOKKEEPING}
    kept = {}
    for name, feature in reader.info["features"].items():
        if name in skip or feature["dtype"] in ("image", "video", "string") or len(feature["shape"]) != 1:
            continue
        names = feature.get("names")
        names = names if isinstance(names, list) and len(names) == feature["shape"][0] else [
            f"{name}_{i}" for i in range(feature["shape"][0])]
        kept[name] = [str(n) for n in names]
    return kept


def commanded_deltas(reader: EpisodeReader, episode: int) -> np.ndarray | None:
    """The source's own action at every frame as a pose delta (None when it has none or it is derived)."""
    mapping = reader.mapping
    if mapping.action_key is None or mapping.action_meaning == "achieved":
        return None
    column = reader.column(mapping.action_key, episode)[:, list(mapping.action_indices)].astype(np.float64)
    if mapping.action_meaning == "absolute-pose":
        return pose_difference(reader.states(episode).astype(np.float64), column)
    return column


def convert_dataset(source: Path, out: Path, camera_key: str | None = None, action_meaning: str | None = None,
                    append: bool = False, video: bool = False) -> dict:
    reader = EpisodeReader(source, camera_key=camera_key, action_meaning=action_meaning)
    optional = kept_vectors(reader)
    has_commanded = commanded_deltas(reader, reader.episodes[0]) is not None if reader.episodes else False
    if has_commanded:
        optional[COMMANDED_ACTION] = list(POSE_NAMES)
    provenance = {"source": {"path": str(Path(source).resolve()), "format": reader.info.get("codebase_version"),
                             "robot_type": reader.info.get("robot_type"), **reader.mapping.describe()}}
    with EpisodeWriter(out, fps=reader.fps, image_shape=reader.image_shape,
                       robot_type=reader.info.get("robot_type") or "unknown", optional_features=optional,
                       extra_info=provenance, append=append, video=video) as writer:
        for episode in reader.episodes:
            frames, states, timestamps = reader.frames(episode), reader.states(episode), reader.timestamps(episode)
            extras = {name: reader.column(name, episode) for name in optional if name != COMMANDED_ACTION}
            if has_commanded:
                extras[COMMANDED_ACTION] = commanded_deltas(reader, episode)
            writer.start_episode(reader.task(episode))
            for frame in range(len(frames)):
                writer.add_frame(frames[frame], states[frame], timestamp=timestamps[frame],
                                 extras={name: values[frame] for name, values in extras.items()})
            writer.end_episode()
    return {"episodes": reader.num_episodes, "frames": reader.total_frames, "camera_key": reader.camera_key,
            "action_meaning": reader.mapping.action_meaning}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", type=Path, help="dataset folder (not needed for --from franka-example)")
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder (or one to --append to)")
    parser.add_argument("--from", dest="kind", choices=SOURCES, default="dataset",
                        help="dataset: a LeRobot v3.0 dataset or one of our recordings; franka-example: the "
                             "V-JEPA 2 repository's 2-frame Franka clip")
    parser.add_argument("--camera-key", help="camera to keep (default: observation.image, or the only camera)")
    parser.add_argument("--action-meaning", choices=ACTION_MEANINGS,
                        help="what the source's action column means (required for datasets not recorded by us)")
    parser.add_argument("--append", action="store_true", help="add the episodes to an existing --out dataset")
    parser.add_argument("--video", action="store_true", help="write the camera as AV1 mp4 video (lossy) instead of PNGs")
    parser.add_argument("--fixture", type=Path, help="franka-example: a fixture_*_data.pt")


def run(args: argparse.Namespace) -> int:
    if args.kind == "franka-example":
        from robot_bridge import franka_example

        return franka_example.run(argparse.Namespace(out=args.out, fixture=args.fixture))
    if args.source is None:
        print("convert: give the source dataset folder", file=sys.stderr)
        return 2
    try:
        summary = convert_dataset(args.source, args.out, args.camera_key, args.action_meaning, args.append, args.video)
    except (OSError, ValueError, KeyError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary['episodes']} episodes ({summary['frames']} frames) from {args.source} "
          f"[{summary['camera_key']}, action {summary['action_meaning']}] to {args.out}")
    return 0
