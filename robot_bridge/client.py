"""The arm side of the bridge: a connection to the service and the control loop that drives an Arm.

Roles, as in a small robot runtime: the `Arm` is the environment (observe, move, hold), the
remote service is the agent (observation -> action), `Subscriber`s watch the episode (recording
is one), and `ArmClient.run` is the loop that keeps the rate and owns safety:

    every control period:  observe -> send observation -> wait for the period, reading replies
                           -> move_to(clamped target of the newest fresh action) or hold()

- targets go through `SafetyLimits.clamp` (workspace box, step limits, gripper range);
- an action is applied only if it answers an observation this loop sent and is newer (by seq)
  than every command already taken; invalid frames are dropped and counted, never answered;
- without a fresh action for `action_timeout` seconds the arm holds; `stop` holds at once and
  ends the loop.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import zmq

from .arm import Arm, NoFreshObservation, Observation, SafetyLimits, UnsafeTarget
from .protocol import (
    SERVICE_TO_ARM,
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    ImagePayload,
    Message,
    ObservationMessage,
    ProtocolError,
    ProtocolLimits,
    StopMessage,
    WelcomeMessage,
    decode,
    encode,
)
from .security import ClientKeys, require_secure

log = logging.getLogger(__name__)

# Service -> arm messages are small; a tight cap makes a flood of huge frames cheap to refuse.
ARM_SIDE_LIMITS = ProtocolLimits(max_message_bytes=64 * 1024)
HELLO_RETRY_S = 0.5


class BridgeConnection:
    """A DEALER socket named by the robot id, speaking the protocol; used by one thread at a time.

    Frames that fail validation are dropped and counted in `invalid_frames` / `invalid_by_code`.
    """

    def __init__(self, endpoint: str, robot_id: str, *, keys: ClientKeys | None = None,
                 limits: ProtocolLimits = ARM_SIDE_LIMITS, send_queue: int = 8):
        require_secure(endpoint, keys, "arm client")
        self.endpoint, self.robot_id, self.limits = endpoint, robot_id, limits
        self._keys, self._send_queue = keys, send_queue
        self.invalid_frames = 0
        self.invalid_by_code: collections.Counter[str] = collections.Counter()
        self.send_failures = 0
        self.last_received = time.monotonic()
        self._context = zmq.Context()
        self._socket = self._open_socket()

    def _open_socket(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        try:
            socket.routing_id = self.robot_id.encode()
            socket.linger = 0
            socket.immediate = 1      # queue nothing while disconnected: old observations are worthless
            socket.sndhwm = self._send_queue
            socket.maxmsgsize = self.limits.max_message_bytes
            if self._keys is not None:
                self._keys.apply(socket)
            socket.connect(self.endpoint)
        except Exception:
            socket.close(linger=0)
            self._context.term()
            raise
        return socket

    def reconnect(self) -> None:
        """Replace the socket. libzmq never reconnects a socket dropped for a protocol error
        (e.g. an oversized frame), so a silent link is re-made from scratch."""
        self._socket.close(linger=0)
        self._socket = self._open_socket()
        self.last_received = time.monotonic()

    def send(self, message: Message) -> bool:
        """Queue a message without blocking; False if it could not be queued (not connected or full)."""
        try:
            self._socket.send(encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.send_failures += 1
            return False

    def receive(self, timeout_s: float) -> list[Message]:
        """Wait up to `timeout_s` for a frame, then return every valid message already queued."""
        messages: list[Message] = []
        if not self._socket.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            return messages
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            self.last_received = time.monotonic()
            try:
                if len(frames) != 1:
                    raise ProtocolError(ErrorCode.MALFORMED, f"{len(frames)} frames")
                messages.append(decode(frames[0], self.limits, accept=SERVICE_TO_ARM))
            except ProtocolError as error:
                self.invalid_frames += 1
                self.invalid_by_code[error.code.value] += 1

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> "BridgeConnection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class StepRecord:
    """One control period as the loop lived it, handed to subscribers."""

    index: int
    observation: Observation
    seq: int | None                      # seq the observation was sent under (None: not sent)
    command: str                         # "move" or "hold"
    target: np.ndarray | None            # the clamped target given to move_to
    action: ActionMessage | None         # the action that produced it
    action_age_s: float | None           # time since the newest command (action or hold) arrived


@dataclass
class RunSummary:
    steps: int
    reason: str                          # "stop", "max_steps", "duration", "requested"
    stats: dict[str, int | float]


class Subscriber:
    """Watches an episode; override what you need. Exceptions are logged, never stop the arm."""

    def on_start(self, hello: HelloMessage) -> None: ...

    def on_step(self, step: StepRecord) -> None: ...

    def on_end(self, summary: RunSummary) -> None: ...


@dataclass
class _Command:
    seq: int
    received_at: float
    action: ActionMessage | None         # None: a hold


@dataclass
class _LoopState:
    seq: int = -1                        # last observation seq sent
    welcome: WelcomeMessage | None = None
    hello_sent_at: float = -np.inf
    heartbeat_sent_at: float = -np.inf
    command: _Command | None = None
    stop: StopMessage | None = None
    counts: collections.Counter = field(default_factory=collections.Counter)


class ArmClient:
    """Connect an `Arm` to a bridge service and drive it safely at a fixed rate."""

    def __init__(
        self,
        arm: Arm,
        endpoint: str,
        robot_id: str,
        rate_hz: float | None = None,
        limits: SafetyLimits = SafetyLimits(),
        action_timeout: float = 0.5,
        *,
        keys: ClientKeys | None = None,
        image_format: str = "jpeg",
        jpeg_quality: int = 90,
        subscribers: Iterable[Subscriber] = (),
        reconnect_after_s: float = 3.0,
    ):
        self.arm, self.limits, self.action_timeout = arm, limits, action_timeout
        self.rate_hz = float(rate_hz if rate_hz is not None else arm.control_hz)
        if not self.rate_hz > 0 or not action_timeout > 0:
            raise ValueError("rate_hz and action_timeout must be positive")
        height, width = arm.camera_size
        self.hello = HelloMessage(robot_id=robot_id, camera_height=height, camera_width=width,
                                  control_hz=self.rate_hz, image_format=image_format, software="jepa-planner arm client",
                                  limits=limits.to_hello())
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.reconnect_after_s = reconnect_after_s   # silence (not even heartbeat echoes) before re-making the link
        self.subscribers = list(subscribers)
        self.connection = BridgeConnection(endpoint, robot_id, keys=keys)
        self.rtt_ms: float | None = None
        self._stop_requested = threading.Event()
        self._state = _LoopState()

    def request_stop(self) -> None:
        """Ask the loop (running in another thread) to hold and return at the end of this period."""
        self._stop_requested.set()

    @property
    def welcomed(self) -> bool:
        return self._state.welcome is not None

    def stats(self) -> dict[str, int | float]:
        counts: dict[str, int | float] = dict(self._state.counts)
        counts["invalid_frames"] = self.connection.invalid_frames
        counts["send_failures"] = self.connection.send_failures
        for code, count in self.connection.invalid_by_code.items():
            counts[f"invalid.{code}"] = count
        if self.rtt_ms is not None:
            counts["rtt_ms"] = self.rtt_ms
        return counts

    def run(self, max_steps: int | None = None, duration_s: float | None = None) -> RunSummary:
        period = 1.0 / self.rate_hz
        started = time.monotonic()
        self._notify("on_start", self.hello)
        steps, reason = 0, "requested"
        try:
            tick_end = time.monotonic()
            while True:
                if self._stop_requested.is_set():
                    break
                if max_steps is not None and steps >= max_steps:
                    reason = "max_steps"
                    break
                if duration_s is not None and time.monotonic() - started >= duration_s:
                    reason = "duration"
                    break
                tick_end += period
                try:
                    observation = self.arm.observe()
                except NoFreshObservation as error:   # never send a stale frame: hold, keep listening
                    self.arm.hold()
                    self._state.counts["no_fresh_observation"] += 1
                    log.warning("holding: %s", error)
                    self._read_until(tick_end)
                    if self._state.stop is not None:
                        reason = "stop"
                        break
                    continue
                seq = self._send_observation(observation)
                self._read_until(tick_end)
                if self._state.stop is not None:
                    reason = "stop"
                    break
                self._notify("on_step", self._command(steps, observation, seq))
                steps += 1
                if time.monotonic() > tick_end + period:   # fell a period behind: do not try to catch up
                    self._state.counts["overruns"] += 1
                    tick_end = time.monotonic()
        finally:
            self.arm.hold()  # whatever ended the loop, leave the arm still
        summary = RunSummary(steps=steps, reason=reason, stats=self.stats())
        self._notify("on_end", summary)
        return summary

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "ArmClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one period -------------------------------------------------------------------------

    def _send_observation(self, observation: Observation) -> int | None:
        state, now = self._state, time.monotonic()
        silence_limit = self.reconnect_after_s
        if state.welcome is not None:  # heartbeat echoes arrive every interval from a live service
            silence_limit = max(silence_limit, 3 * state.welcome.heartbeat_interval_s)
        if now - self.connection.last_received > silence_limit:
            self.connection.reconnect()
            state.welcome, state.hello_sent_at = None, -np.inf
            state.counts["reconnects"] += 1
            log.warning("no word from %s for %.1f s; reconnecting", self.connection.endpoint, silence_limit)
        if state.welcome is None:
            if now - state.hello_sent_at >= HELLO_RETRY_S and self.connection.send(self.hello):
                state.hello_sent_at = now
            return None
        if now - state.heartbeat_sent_at >= state.welcome.heartbeat_interval_s:
            if self.connection.send(HeartbeatMessage(timestamp=now)):
                state.heartbeat_sent_at = now
        message = ObservationMessage(
            seq=state.seq + 1, timestamp=observation.timestamp,
            image=ImagePayload.from_array(observation.image, self.image_format, self.jpeg_quality),
            state=observation.state, joints=observation.joints)
        if not self.connection.send(message):
            return None
        state.seq = message.seq
        state.counts["observations_sent"] += 1
        return message.seq

    def _read_until(self, deadline: float) -> None:
        """Handle replies until the period ends; a stop ends the wait at once."""
        while self._state.stop is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for message in self.connection.receive(remaining):
                self._handle(message)

    def _handle(self, message: Message) -> None:
        state, now = self._state, time.monotonic()
        if isinstance(message, StopMessage):
            self.arm.hold()  # obey now, not at the end of the period
            state.stop = message
            state.counts["stops"] += 1
            log.warning("service stopped the arm: %s", message.reason)
        elif isinstance(message, (ActionMessage, HoldMessage)):
            self._take_command(message, now)
        elif isinstance(message, WelcomeMessage):
            if message.robot_id == self.hello.robot_id and state.welcome is None:
                state.welcome = message
                log.info("welcomed by %s (session %s)", message.software or "service", message.session)
        elif isinstance(message, HeartbeatMessage):
            self.rtt_ms = (now - message.timestamp) * 1000.0
        elif isinstance(message, ErrorMessage):
            state.counts[f"error.{message.code}"] += 1
            if message.code == ErrorCode.HELLO_REQUIRED.value:  # the service restarted or forgot us
                state.welcome, state.hello_sent_at = None, -np.inf
            log.debug("service error %s (seq %s): %s", message.code, message.seq, message.message)

    def _take_command(self, message: ActionMessage | HoldMessage, now: float) -> None:
        state = self._state
        if message.seq > state.seq:
            state.counts["commands_for_unsent_seq"] += 1   # answers nothing this loop sent: forged or stale session
            return
        if state.command is not None and message.seq <= state.command.seq:
            state.counts["commands_out_of_order"] += 1
            return
        action = message if isinstance(message, ActionMessage) else None
        state.command = _Command(seq=message.seq, received_at=now, action=action)
        state.counts["actions_received" if action else "holds_received"] += 1

    def _command(self, index: int, observation: Observation, seq: int | None) -> StepRecord:
        command, now = self._state.command, time.monotonic()
        age = None if command is None else now - command.received_at
        if command is not None and command.action is not None and age <= self.action_timeout:
            try:
                target = self.limits.clamp(command.action.target, observation.state)
            except UnsafeTarget as error:
                self._state.counts["unsafe_targets"] += 1
                log.error("refusing target: %s", error)
            else:
                self.arm.move_to(target)
                self._state.counts["moves"] += 1
                return StepRecord(index, observation, seq, "move", target, command.action, age)
        self.arm.hold()
        self._state.counts["holds"] += 1
        return StepRecord(index, observation, seq, "hold", None, None, age)

    def _notify(self, event: str, argument: object) -> None:
        for subscriber in self.subscribers:
            try:
                getattr(subscriber, event)(argument)
            except Exception:
                log.exception("subscriber %s.%s failed", type(subscriber).__name__, event)
