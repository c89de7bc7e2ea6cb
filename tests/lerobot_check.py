"""Our datasets through LeRobot 0.4.4 itself; run by the LeRobot venv's python (`make lerobot-check`).

    python tests/lerobot_check.py DATASET WORKDIR EXPECTED_FRAMES.npy

DATASET is a `jepa-planner collect` dataset (PNG frames, or `--video` mp4); EXPECTED_FRAMES are its frames
as our reader decodes them (global index order). Checks, printing one line each and exiting non-zero on
the first failure: LeRobotDataset loads it; a torch DataLoader yields image tensors (not None) equal
to our reader's frames, state/action tensors, and task strings; LeRobot's dataset tools split,
delete episodes from, merge, and append (resume recording) to it, and every result loads again.

PyPI's torchvision wheels are CUDA builds whose compiled ops cannot load on a CPU-only torch, and
`import torchvision` then fails registering `torchvision::nms`/`qnms`. Nothing on LeRobot's
image-dataset path calls those ops, so their schemas are declared (without kernels) first.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def declare_torchvision_op_schemas() -> None:
    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    declare_torchvision_op_schemas.library = library  # keep the definitions alive


def decode_with_pyav(video_path, timestamps: list[float], tolerance_s: float, backend=None) -> torch.Tensor:
    """LeRobot's `decode_video_frames` contract, (T, C, H, W) float in [0, 1] at the given timestamps, on
    PyAV alone: LeRobot 0.4.4 decodes with torchcodec or torchvision.io.VideoReader, and neither exists for
    the torch 2.13 here. LeRobot still picks the file and the timestamps (from_timestamp + timestamp)."""
    import av

    with av.open(str(video_path)) as container:
        decoded = [(float(frame.time), frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    times = np.array([time for time, _ in decoded])
    frames = []
    for timestamp in timestamps:
        nearest = int(np.abs(times - timestamp).argmin())
        if abs(times[nearest] - timestamp) > tolerance_s:
            raise AssertionError(f"no frame at {timestamp} s in {video_path} (nearest {times[nearest]} s)")
        frames.append(torch.from_numpy(decoded[nearest][1]).permute(2, 0, 1).float() / 255)
    return torch.stack(frames)


def check(condition: bool, what: str) -> None:
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        sys.exit(1)


def main(dataset: Path, work: Path, expected_frames: Path) -> None:
    declare_torchvision_op_schemas()
    from lerobot.datasets import dataset_tools
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((dataset / "meta" / "info.json").read_text())
    video = info["features"]["observation.image"]["dtype"] == "video"
    if video:
        import lerobot.datasets.lerobot_dataset as lerobot_dataset

        lerobot_dataset.decode_video_frames = decode_with_pyav
        print("note video frames decoded by PyAV in LeRobot's place (no torchcodec/VideoReader for torch 2.13)")
    loaded = LeRobotDataset("jepa-planner/collect", root=dataset)
    check(len(loaded) == info["total_frames"] and loaded.num_episodes == info["total_episodes"],
          f"LeRobotDataset loads {len(loaded)} frames, {loaded.num_episodes} episodes")
    item = loaded[0]
    check(isinstance(item["observation.image"], torch.Tensor) and tuple(item["observation.image"].shape) ==
          (3, *info["features"]["observation.image"]["shape"][:2]), "a frame is a (3, H, W) tensor")
    check(isinstance(item["task"], str) and item["task"] in ("explore", "push the cube"),
          f"the task is the text {item['task']!r}")
    frames = np.load(expected_frames)
    batches = list(torch.utils.data.DataLoader(loaded, batch_size=8, shuffle=False, num_workers=0))
    images = torch.cat([batch["observation.image"] for batch in batches])
    check(images.shape[0] == len(loaded) and images.dtype == torch.float32, "a DataLoader yields every frame")
    pixels = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    check(np.array_equal(pixels, frames), "its pixels are exactly the ones our reader decodes")
    tasks = [task for batch in batches for task in batch["task"]]
    check(all(isinstance(task, str) for task in tasks), "batched tasks are strings")
    states = torch.cat([batch["observation.state"] for batch in batches])
    table = pq.read_table(dataset / "data" / "chunk-000" / "file-000.parquet", columns=["observation.state"])
    check(np.allclose(states.numpy(), np.array(table.column("observation.state").to_pylist())),
          "observation.state batches equal the parquet")
    check(set(loaded.meta.stats) >= set(info["features"]) - {"task"}, "meta.stats covers every feature")

    count = loaded.num_episodes
    parts = dataset_tools.split_dataset(loaded, {"train": 0.5, "val": 0.5}, output_dir=work / "split")
    check(sum(part.num_episodes for part in parts.values()) == count, f"split_dataset: {sorted(parts)}")
    fewer = dataset_tools.delete_episodes(loaded, [0], output_dir=work / "deleted", repo_id="jepa-planner/deleted")
    check(fewer.num_episodes == count - 1 and isinstance(fewer[0]["task"], str), "delete_episodes")
    merged = dataset_tools.merge_datasets([parts["train"], parts["val"]], output_repo_id="jepa-planner/merged",
                                          output_dir=work / "merged")
    check(merged.num_episodes == count and len(merged) == len(loaded), "merge_datasets")
    again = LeRobotDataset("jepa-planner/merged", root=work / "merged")
    check(isinstance(again[len(again) - 1]["observation.image"], torch.Tensor), "the merged dataset loads again")

    # Append: resume recording into our dataset with LeRobot's own writer.
    resumed = LeRobotDataset("jepa-planner/collect", root=dataset)
    resumed.episode_buffer = resumed.create_episode_buffer()
    shape = info["features"]["observation.image"]["shape"]
    for _ in range(3):
        frame = {"observation.image": np.zeros(shape, np.uint8), "task": "appended by lerobot"}
        for name, feature in info["features"].items():
            if feature["dtype"] == "float32" and len(feature["shape"]) == 1 and feature["shape"] != [1]:
                frame[name] = np.zeros(feature["shape"], np.float32)
        resumed.add_frame(frame)
    resumed.save_episode()
    resumed.finalize()
    grown = LeRobotDataset("jepa-planner/collect", root=dataset)
    check(grown.num_episodes == count + 1 and grown[len(grown) - 1]["task"] == "appended by lerobot",
          "LeRobot appends an episode to our dataset and reads it back")
    print("lerobot check passed")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
