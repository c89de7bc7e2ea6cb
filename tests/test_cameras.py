"""Cameras: OpenCV capture of a real video file, replay folders, freshness, and the client loop's
refusal to send a stale frame (issue 11)."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from bridge_kit import ClientThread, PointArm, StepPlanner, wait_until
from robot_bridge.arm import NoFreshObservation
from robot_bridge.cameras import (
    CameraError,
    OpenCVCamera,
    ReplayCamera,
    StaleFrame,
    crop_and_resize,
    open_camera,
)
from robot_bridge.client import ArmClient
from robot_bridge.service import BridgeService

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]   # RGB, one per frame


def write_video(path, frames: int = 4, size=(48, 64), fps: float = 20.0):
    """An MJPG .avi of solid RGB colours (height, width = size), written with cv2.VideoWriter."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for index in range(frames):
        rgb = np.zeros((*size, 3), dtype=np.uint8)
        rgb[:] = COLOURS[index % len(COLOURS)]
        writer.write(rgb[..., ::-1].copy())     # OpenCV writes BGR
    writer.release()
    return path


def test_a_video_file_plays_through_the_opencv_camera_as_timestamped_rgb_frames(tmp_path):
    video = write_video(tmp_path / "clip.avi")
    with open_camera(str(video), size=(32, 32)) as camera:
        assert isinstance(camera, OpenCVCamera) and not camera.live
        before = time.time()
        frames = [camera.read() for _ in range(6)]
    for index, frame in enumerate(frames):
        assert frame.image.shape == (32, 32, 3) and frame.image.dtype == np.uint8
        expected = COLOURS[index % 4]                       # 4 frames, then the file loops
        np.testing.assert_allclose(frame.image.reshape(-1, 3).mean(0), expected, atol=12)   # RGB, not BGR
        assert before <= frame.timestamp <= time.time()
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)


def test_a_live_source_that_stops_delivering_goes_stale_and_is_refused(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=3, fps=50.0)
    with OpenCVCamera(str(video), size=(16, 16), live=True) as camera:
        assert camera.read_fresh(5.0).image.shape == (16, 16, 3)
        time.sleep(0.4)      # the "camera" ended after 3 frames at 50 fps: its newest frame now ages
        with pytest.raises(StaleFrame, match="old"):
            camera.read_fresh(0.2)
        assert isinstance(StaleFrame("x"), NoFreshObservation)


def test_replay_folder_of_images_loops_in_name_order(tmp_path):
    for index, colour in enumerate(COLOURS[:3]):
        rgb = np.zeros((20, 40, 3), dtype=np.uint8)
        rgb[:] = colour
        cv2.imwrite(str(tmp_path / f"frame-{index:03d}.png"), rgb[..., ::-1].copy())
    camera = open_camera(f"replay:{tmp_path}", size=(10, 10))
    assert isinstance(camera, ReplayCamera) and len(camera) == 3
    means = [tuple(camera.read().image.reshape(-1, 3).mean(0).round()) for _ in range(4)]
    assert means == [COLOURS[0], COLOURS[1], COLOURS[2], COLOURS[0]]


def test_crop_keeps_the_centre_and_the_aspect():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 50:150] = 255                       # the centre square is white, the sides black
    out = crop_and_resize(image, (50, 50))
    assert out.shape == (50, 50, 3) and out.min() == 255


@pytest.mark.parametrize("spec, error", [
    ("bogus:thing", ValueError), ("usb:x", ValueError), ("replay:/no/such/folder", CameraError),
    ("/no/such/clip.mp4", CameraError),
])
def test_bad_camera_specs_are_clear_errors(spec, error):
    with pytest.raises(error):
        open_camera(spec)


class StaleCameraArm(PointArm):
    """Its camera goes stale while `stale` is set: observe raises, as FrankaArm does via read_fresh."""

    stale = False

    def observe(self):
        if self.stale:
            raise StaleFrame("newest camera frame is 9.00 s old (bound 0.5 s)")
        return super().observe()


def test_the_client_sends_no_observation_while_the_frame_is_stale_and_holds():
    planner = StepPlanner(step=0.01)
    arm = StaleCameraArm(hz=40.0)
    with BridgeService("tcp://127.0.0.1:*", planner) as service:
        client = ArmClient(arm, service.endpoint, "cam-arm")
        runner = ClientThread(client)
        try:
            wait_until(lambda: len(arm.moves()) >= 3, timeout=20)
            arm.stale = True
            time.sleep(0.3)
            sent_while_stale = client.stats()["observations_sent"]
            planned_while_stale = len(planner.seen)
            time.sleep(0.5)
            assert client.stats()["observations_sent"] == sent_while_stale    # nothing sent while stale
            assert len(planner.seen) == planned_while_stale
            tail = arm.calls[-5:]
            assert all(kind == "hold" for kind, _, _ in tail)                 # and the arm holds
            arm.stale = False
            wait_until(lambda: client.stats()["observations_sent"] > sent_while_stale, timeout=10)
        finally:
            summary = runner.finish()
            client.close()
    assert summary.stats["no_fresh_observation"] >= 10
