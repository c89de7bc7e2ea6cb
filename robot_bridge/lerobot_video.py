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


class VideoFileWriter:
    """Appends episodes' frames to one mp4 file, as LeRobot concatenates episodes in a video file.

    AV1 (libsvtav1) in yuv420p with a keyframe every 2 frames and CRF 30 are LeRobot's defaults;
    frame i of the file is shown at i / fps, so an episode starts at (frames before it) / fps.
    """

    def __init__(self, path: Path, fps: float, height: int, width: int, codec: str = "libsvtav1"):
        try:
            import av
        except ImportError as error:
            raise OSError("writing mp4 video needs PyAV (pip install av)") from error
        from fractions import Fraction

        if height % 2 or width % 2:
            raise ValueError(f"video frames need an even height and width (yuv420p), got {height}x{width}")
        self.path, self.fps = Path(path), fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        options = {"g": "2", "crf": "30"} if codec in ("libsvtav1", "libx264") else {}
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self.frames = 0

    def add_episode(self, frames: np.ndarray) -> tuple[float, float]:
        """Encode (T, H, W, 3) uint8 RGB frames; returns the episode's (from, to) timestamps in the file."""
        import av

        start = self.frames / self.fps
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames  # in units of 1/fps: the stream's rate sets the codec's time base
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1
        return start, self.frames / self.fps

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def video_info(height: int, width: int, fps: float, codec: str) -> dict:
    """The `info` record LeRobot keeps in a video feature."""
    return {"video.height": height, "video.width": width, "video.codec": "av1" if codec == "libsvtav1" else codec,
            "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
            "has_audio": False}
