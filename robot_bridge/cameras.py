"""Cameras for a real arm: OpenCV capture (USB index, RTSP/HTTP stream, video file), Intel RealSense,
and a replay camera (a folder of images or a recorded episode) for tests and dry runs.

Every frame carries the time it was captured (`time.time()`, the arm's clock). A live camera is read
by a grabber thread that keeps only the newest frame, because OpenCV and the RealSense SDK queue
frames and the first ones read after a pause are old. `Camera.read_fresh(max_age_s)` raises
`StaleFrame` (a `NoFreshObservation`) for a frame older than the bound, so the client loop holds and
never sends an old image as an observation.

Frames come out as (H, W, 3) uint8 RGB of the requested size: centre-cropped to its aspect ratio,
then resized (the world model sees square 256 x 256 frames; cropping keeps the scene undistorted).
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arm import NoFreshObservation

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPEC_HELP = ("camera spec: usb:N (or just N) for a USB camera, rtsp://... or http://... for a stream, "
             "a video file (file:PATH or PATH ending in " + "/".join(VIDEO_SUFFIXES) + "), realsense[:SERIAL], "
             "or replay:DIR (a folder of images or a recorded episode)")


class CameraError(RuntimeError):
    """The camera cannot be opened or has stopped delivering frames."""


class StaleFrame(NoFreshObservation):
    """The newest frame is older than the caller's bound."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray      # (H, W, 3) uint8 RGB
    timestamp: float       # capture time, time.time() seconds

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.timestamp


def crop_and_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop `image` to the aspect ratio of `size` (height, width), then resize to it."""
    import cv2

    height, width = image.shape[:2]
    want_h, want_w = size
    if height * want_w > width * want_h:        # too tall: crop rows
        crop = round(width * want_h / want_w)
        top = (height - crop) // 2
        image = image[top:top + crop]
    elif height * want_w < width * want_h:      # too wide: crop columns
        crop = round(height * want_w / want_h)
        left = (width - crop) // 2
        image = image[:, left:left + crop]
    if image.shape[:2] != (want_h, want_w):
        shrinking = image.shape[0] > want_h
        image = cv2.resize(image, (want_w, want_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)


class Camera(ABC):
    """A fixed exterior camera: `read()` returns the newest frame, already cropped and resized."""

    def __init__(self, size: tuple[int, int]):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"camera size must be (height, width) >= 1, got {size}")
        self.size = (int(size[0]), int(size[1]))

    @abstractmethod
    def read(self) -> Frame:
        """The newest frame; raises CameraError when the camera has none."""

    def read_fresh(self, max_age_s: float) -> Frame:
        """The newest frame if it is at most `max_age_s` old; StaleFrame otherwise."""
        frame = self.read()
        age = frame.age()
        if age > max_age_s:
            raise StaleFrame(f"newest camera frame is {age:.2f} s old (bound {max_age_s:g} s)")
        return frame

    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> "Camera":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _LatestFrameGrabber:
    """A thread that keeps reading a blocking source and keeps only the newest frame (and its time)."""

    def __init__(self, grab, name: str, pace_s: float = 0.0):
        self._grab, self._pace_s = grab, pace_s
        self._lock = threading.Lock()
        self._newest: Frame | None = None
        self._failure: str | None = None
        self._running = True
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while self._running:
            try:
                image = self._grab()
            except Exception as error:  # the source ended or failed: keep the last frame, let it age
                self._failure = str(error) or type(error).__name__
                self._first.set()
                return
            frame = Frame(image, time.time())
            with self._lock:
                self._newest = frame
            self._first.set()
            if self._pace_s:
                time.sleep(self._pace_s)

    def newest(self, wait_s: float) -> Frame:
        self._first.wait(wait_s)
        with self._lock:
            frame = self._newest
        if frame is None:
            raise CameraError(f"no frame from the camera ({self._failure or f'none within {wait_s:g} s'})")
        return frame

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=2.0)


class OpenCVCamera(Camera):
    """`cv2.VideoCapture` on a USB index, an RTSP/HTTP URL or a video file.

    Live sources (index, URL) are read by a grabber thread; `live=None` decides by the source.
    A file is played frame by frame, one per `read()`, looping at its end, unless `live=True`
    (then it plays at its own frame rate, once, like a camera that stops at the end).
    """

    def __init__(self, source: int | str, size: tuple[int, int] = (256, 256), live: bool | None = None,
                 open_timeout_s: float = 5.0):
        super().__init__(size)
        import cv2

        self.source = source
        self.live = not isinstance(source, str) or "://" in source if live is None else live
        if isinstance(source, str) and "://" not in source and not Path(source).is_file():
            raise CameraError(f"no video file at {source}")
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            raise CameraError(f"OpenCV cannot open camera {source!r}")
        self._open_timeout_s = open_timeout_s
        self._grabber: _LatestFrameGrabber | None = None
        if self.live:
            fps = self._capture.get(cv2.CAP_PROP_FPS) if isinstance(source, str) and "://" not in source else 0.0
            self._grabber = _LatestFrameGrabber(self._next_image, f"camera-{source}", 1.0 / fps if fps > 0 else 0.0)

    def _next_image(self) -> np.ndarray:
        ok, bgr = self._capture.read()
        if not ok:
            raise CameraError(f"camera {self.source!r} delivered no frame")
        return crop_and_resize(bgr[..., ::-1], self.size)

    def read(self) -> Frame:
        if self._grabber is not None:
            return self._grabber.newest(self._open_timeout_s)
        import cv2

        try:
            image = self._next_image()
        except CameraError:  # end of the file: start again
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            image = self._next_image()
        return Frame(image, time.time())

    def close(self) -> None:
        if self._grabber is not None:
            self._grabber.stop()
        self._capture.release()


class RealSenseCamera(Camera):
    """The colour stream of an Intel RealSense (pyrealsense2, optional: `pip install pyrealsense2`)."""

    def __init__(self, serial: str | None = None, size: tuple[int, int] = (256, 256),
                 stream: tuple[int, int, int] = (640, 480, 30)):
        super().__init__(size)
        try:
            import pyrealsense2 as rs
        except ImportError as error:
            raise CameraError("a RealSense camera needs pyrealsense2 (pip install pyrealsense2)") from error
        self._pipeline = rs.pipeline()
        config = rs.config()
        if serial:
            config.enable_device(serial)
        width, height, fps = stream
        config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        try:
            self._pipeline.start(config)
        except RuntimeError as error:
            raise CameraError(f"RealSense {serial or '(first found)'}: {error}") from error
        self._grabber = _LatestFrameGrabber(self._next_image, f"realsense-{serial or 0}")

    def _next_image(self) -> np.ndarray:
        frames = self._pipeline.wait_for_frames(2000)
        color = frames.get_color_frame()
        if not color:
            raise CameraError("RealSense delivered no colour frame")
        return crop_and_resize(np.asanyarray(color.get_data()), self.size)

    def read(self) -> Frame:
        return self._grabber.newest(5.0)

    def close(self) -> None:
        self._grabber.stop()
        self._pipeline.stop()


class ReplayCamera(Camera):
    """Frames from disk, one per `read()`, stamped when read, looping: a folder of images (sorted by
    name) or a recorded episode dataset (EPISODES.md; needs pyarrow)."""

    def __init__(self, folder: str | Path, size: tuple[int, int] = (256, 256), episode: int = 0):
        super().__init__(size)
        folder = Path(folder)
        if (folder / "meta" / "info.json").is_file():
            from .episodes import EpisodeReader

            frames = list(EpisodeReader(folder).frames(episode))
        elif folder.is_dir():
            import cv2

            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            frames = []
            for path in paths:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise CameraError(f"cannot read image {path}")
                frames.append(bgr[..., ::-1])
        else:
            raise CameraError(f"no replay folder at {folder}")
        if not frames:
            raise CameraError(f"no images in {folder}")
        self._frames = [crop_and_resize(np.asarray(f, dtype=np.uint8), self.size) for f in frames]
        self._index = 0

    def __len__(self) -> int:
        return len(self._frames)

    def read(self) -> Frame:
        image = self._frames[self._index % len(self._frames)]
        self._index += 1
        return Frame(image, time.time())


def open_camera(spec: str, size: tuple[int, int] = (256, 256)) -> Camera:
    """A camera from a command-line spec (SPEC_HELP)."""
    kind, _, rest = spec.partition(":")
    if spec.isdigit() or kind == "usb":
        index = spec if spec.isdigit() else rest
        if not index.isdigit():
            raise ValueError(f"usb camera spec needs an index, e.g. usb:0, got {spec!r}")
        return OpenCVCamera(int(index), size)
    if "://" in spec:
        return OpenCVCamera(spec, size, live=True)
    if kind == "file":
        return OpenCVCamera(rest, size)
    if kind == "realsense":
        return RealSenseCamera(rest or None, size)
    if kind == "replay":
        return ReplayCamera(rest, size)
    if Path(spec).suffix.lower() in VIDEO_SUFFIXES:
        return OpenCVCamera(spec, size)
    raise ValueError(f"unknown camera {spec!r}; {SPEC_HELP}")
