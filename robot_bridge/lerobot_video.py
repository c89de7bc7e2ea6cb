"""Frames of one episode from a LeRobot v3.0 mp4 video file (episodes are concatenated in time).

An episode's frames start at its `videos/<camera>/from_timestamp` in the file and follow at the
dataset's fps. Decoded with PyAV (`pip install av`), imported only when a video camera is read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TOLERANCE_S = 1e-4  # LeRobot's default timestamp tolerance


def read_episode_frames(path: Path, from_timestamp: float, length: int, fps: float) -> np.ndarray:
    """(length, H, W, 3) uint8 RGB frames starting at `from_timestamp` seconds into `path`."""
    try:
        import av
    except ImportError as error:
        raise OSError("this camera is stored as mp4 video; reading it needs PyAV (pip install av)") from error
    if not Path(path).is_file():
        raise OSError(f"missing video file {path}")
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if from_timestamp > 0:  # land on the keyframe at or before the episode, then decode forward
            container.seek(int(from_timestamp / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None or frame.time < from_timestamp - TOLERANCE_S:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == length:
                break
    if len(frames) != length:
        raise OSError(f"{path}: {len(frames)} frames from {from_timestamp:.3f} s, the episode has {length}")
    return np.stack(frames)
