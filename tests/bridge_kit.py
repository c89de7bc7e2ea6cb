"""Shared pieces for the bridge tests: a tiny but real `Arm`, planners, a raw protocol peer.

`PointArm` is a kinematic point that jumps to each target, with a camera that renders it as a
bright square on a dark image (numpy only, no simulator): enough to exercise the bridge.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from robot_bridge.arm import Arm, Observation
from robot_bridge.client import ArmClient, RunSummary
from robot_bridge.protocol import (
    ActionMessage,
    HelloMessage,
    ImagePayload,
    Message,
    ObservationMessage,
    decode,
    encode,
)

START_POSE = (0.5, 0.0, 0.3, -3.0, 0.0, 0.0, 0.0)   # gripper near pointing down, as SafetyLimits expects


class PointArm(Arm):
    def __init__(self, size: int = 32, hz: float = 50.0, start=START_POSE):
        self._size, self._hz = size, hz
        self.state = np.array(start, dtype=np.float64)
        self.calls: list[tuple[str, float, np.ndarray | None]] = []   # ("move"|"hold", monotonic time, target)
        self._lock = threading.Lock()

    @property
    def camera_size(self) -> tuple[int, int]:
        return self._size, self._size

    @property
    def control_hz(self) -> float:
        return self._hz

    def observe(self) -> Observation:
        image = np.zeros((self._size, self._size, 3), dtype=np.uint8)
        # x in [0.25, 0.8] -> rows, y in [-0.45, 0.45] -> columns
        row = int(np.clip((self.state[0] - 0.25) / 0.55, 0, 1) * (self._size - 4))
        col = int(np.clip((self.state[1] + 0.45) / 0.9, 0, 1) * (self._size - 4))
        image[row:row + 4, col:col + 4] = (255, 200, 50)
        return Observation(image=image, state=self.state.copy(), timestamp=time.time())

    def move_to(self, target: np.ndarray) -> None:
        with self._lock:
            self.state = np.asarray(target, dtype=np.float64).copy()
            self.calls.append(("move", time.monotonic(), self.state.copy()))

    def hold(self) -> None:
        with self._lock:
            self.calls.append(("hold", time.monotonic(), None))

    def moves(self) -> list[np.ndarray]:
        with self._lock:
            return [target for kind, _, target in self.calls if kind == "move"]


class StepPlanner:
    """Planning callback: move `step` metres along +x from the observed state; records what it saw."""

    def __init__(self, step: float = 0.01, delay_s: float = 0.0):
        self.step, self.delay_s = step, delay_s
        self.seen: list[tuple[str, int, tuple[int, ...]]] = []   # (robot_id, seq, decoded image shape)
        self.gate = threading.Event()                             # cleared: the planner stalls (service silent)
        self.gate.set()

    def __call__(self, robot_id: str, observation: ObservationMessage) -> ActionMessage:
        self.gate.wait()
        if self.delay_s:
            time.sleep(self.delay_s)
        self.seen.append((robot_id, observation.seq, observation.image.decode().shape))
        delta = np.array([self.step, 0, 0, 0, 0, 0, 0.0])
        return ActionMessage(delta=delta, target=observation.state + delta, energy=1.0 / (1 + observation.seq))


class ClientThread:
    """Run `ArmClient.run` in a background thread; `finish()` stops it and returns the summary."""

    def __init__(self, client: ArmClient, **run_kwargs):
        self.client, self.summary = client, None
        self.thread = threading.Thread(target=self._run, kwargs=run_kwargs, daemon=True)
        self.thread.start()

    def _run(self, **run_kwargs) -> None:
        self.summary = self.client.run(**run_kwargs)

    def finish(self, timeout: float = 10.0) -> RunSummary:
        self.client.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "arm client loop did not stop"
        return self.summary


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `condition` until true; fail the test (not hang) if it never becomes true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class RawPeer:
    """A bare ZeroMQ socket speaking the protocol by hand (or not at all), for edge cases."""

    def __init__(self, endpoint: str, socket_type: int = zmq.DEALER, routing_id: bytes | None = None,
                 bind: bool = False, **options):
        self.context = zmq.Context()
        self.socket = self.context.socket(socket_type)
        self.socket.linger = 0
        if routing_id is not None:
            self.socket.routing_id = routing_id
        for name, value in options.items():
            setattr(self.socket, name, value)
        if bind:
            self.socket.bind(endpoint)
            self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.socket.connect(endpoint)
            self.endpoint = endpoint

    def send(self, *frames: bytes | Message) -> None:
        self.socket.send_multipart([f if isinstance(f, bytes) else encode(f) for f in frames])

    def receive(self, timeout: float = 5.0) -> list[bytes]:
        if not self.socket.poll(int(timeout * 1000)):
            raise AssertionError(f"no reply within {timeout} s")
        return self.socket.recv_multipart()

    def receive_message(self, timeout: float = 5.0) -> Message:
        return decode(self.receive(timeout)[-1])

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def hello(robot_id: str, size: int = 32) -> HelloMessage:
    return HelloMessage(robot_id, size, size, 50.0, "raw")


def observation(seq: int, size: int = 32, image: np.ndarray | None = None) -> ObservationMessage:
    image = np.full((size, size, 3), 80, dtype=np.uint8) if image is None else image
    return ObservationMessage(seq=seq, timestamp=time.time(), image=ImagePayload.from_array(image, "raw"),
                              state=np.array(START_POSE))
