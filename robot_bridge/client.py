"""The arm side of the bridge: a connection to the service and the control loop that drives an Arm.

Roles, as in a small robot runtime: the `Arm` is the environment (observe, move, hold), the
remote service is the agent (observation -> action), `Subscriber`s watch the episode (recording
is one), and `ArmClient.run` is the loop that keeps the rate and owns safety.

Streaming mode (default), every control period:
    observe -> send observation -> move towards the newest fresh target (at most one move per
    period: at the period start, or the moment a newer action arrives) -> read replies until the
    period ends -> hold if nothing was commanded this period.
Blocking mode (`blocking=True`, the paper's): hold still, send one observation, wait for its
answer up to `plan_deadline_s`, execute it for one period, hold, repeat.

- targets go through `SafetyLimits.clamp` (box, orientation range, step limits, gripper range;
  from a measured pose outside the limits only targets that move back in; others are a hold);
- an action is applied only if it answers an observation this loop sent and is newer (by seq)
  than every command already taken; invalid frames are dropped and counted, never answered;
- a command is fresh for `action_timeout` seconds after it arrived: at that deadline (its own
  timer, not the control period) the arm holds, and that target is never applied again;
  `stop` holds at once and ends the loop;
- heartbeats go out on their own timer whatever the loop is waiting for, and the link is judged
  dead only when they go unanswered (a slow plan is not a dead link).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import signal
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import zmq

from .arm import Arm, NoFreshObservation, Observation, SafetyLimits, TargetLeavesLimits, UnsafeTarget
from .protocol import (
    SERVICE_TO_ARM,
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    ImagePayload,
    MAX_CONTROL_HZ,
    MIN_CONTROL_HZ,
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
HEARTBEAT_BEFORE_WELCOME_S = 1.0   # until a welcome names the service's interval
SEND_RETRY_S = 0.02                # retry a hello or heartbeat that could not be queued after this
# A link re-made and still silent waits twice as long before the next re-make, up to this: a service
# too starved to echo within the first limit (seen: a niced service on a busy 2-core machine) answers
# late rather than never, and re-making the link every limit would discard every late reply.
MAX_SILENCE_LIMIT_S = 30.0


class BridgeConnection:
    """A DEALER socket speaking the protocol for one robot id; used by one thread at a time.

    Each socket gets a fresh random routing id (the robot id travels in `hello`): the service
    routes replies to the connection that said hello, so nobody can take a robot's replies by
    presenting a routing id. Frames that fail validation are dropped and counted in
    `invalid_frames` / `invalid_by_code`. `last_echo` is when the last heartbeat echo (or the
    socket itself) came: the link's liveness.
    """

    def __init__(self, endpoint: str, robot_id: str, *, keys: ClientKeys | None = None,
                 limits: ProtocolLimits = ARM_SIDE_LIMITS, send_queue: int = 8):
        require_secure(endpoint, keys, "arm client")
        self.endpoint, self.robot_id, self.limits = endpoint, robot_id, limits
        self._keys, self._send_queue = keys, send_queue
        self.invalid_frames = 0
        self.invalid_by_code: collections.Counter[str] = collections.Counter()
        self.send_failures = 0
        self.last_received = self.last_echo = time.monotonic()
        self._context = zmq.Context()
        self._socket = self._open_socket()

    def _open_socket(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        try:
            socket.routing_id = b"arm-" + secrets.token_bytes(16)   # unguessable; never a leading zero byte
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
        self.last_received = self.last_echo = time.monotonic()

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
                message = decode(frames[0], self.limits, accept=SERVICE_TO_ARM)
                if isinstance(message, HeartbeatMessage):
                    self.last_echo = self.last_received
                messages.append(message)
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
    expired: bool = False                # its freshness deadline passed: never applied again


@dataclass
class _LoopState:
    seq: int = -1                        # last observation seq sent
    welcome: WelcomeMessage | None = None
    hello_sent_at: float = -np.inf
    heartbeat_sent_at: float = -np.inf
    command: _Command | None = None      # the newest command taken
    moving: _Command | None = None       # the command whose target the arm is moving to (its deadline runs)
    observation: Observation | None = None   # this period's observation: targets are clamped against it
    moved_this_period: bool = False
    step: StepRecord | None = None       # what this period commanded last, for the subscribers
    stop: StopMessage | None = None
    counts: collections.Counter = field(default_factory=collections.Counter)
    silence_backoff: float = 1.0         # x the silence limit: doubles per re-make that hears no echo
    remade_at: float = -np.inf           # when the link was last re-made


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
        blocking: bool = False,
        plan_deadline_s: float = 60.0,
    ):
        self.arm, self.limits, self.action_timeout = arm, limits, action_timeout
        self.rate_hz = float(rate_hz if rate_hz is not None else arm.control_hz)
        if not action_timeout > 0 or not plan_deadline_s > 0:
            raise ValueError("action_timeout and plan_deadline_s must be positive")
        if not MIN_CONTROL_HZ <= self.rate_hz <= MAX_CONTROL_HZ:   # the service would refuse the hello, forever
            raise ValueError(f"rate_hz {self.rate_hz:g} is outside the bridge protocol's {MIN_CONTROL_HZ:g}.."
                             f"{MAX_CONTROL_HZ:g} Hz; the service would refuse this arm's hello")
        height, width = arm.camera_size
        self.hello = HelloMessage(robot_id=robot_id, camera_height=height, camera_width=width,
                                  control_hz=self.rate_hz, image_format=image_format, software="jepa-planner arm client",
                                  limits=limits.to_hello())
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.reconnect_after_s = reconnect_after_s   # unanswered heartbeats for this long: re-make the link
        self.blocking, self.plan_deadline_s = blocking, plan_deadline_s
        self.subscribers = list(subscribers)
        self.connection = BridgeConnection(endpoint, robot_id, keys=keys)
        self.rtt_ms: float | None = None
        # Seconds from each expiring action's arrival to the hold its deadline caused (the last 1000).
        self.hold_latencies_s: collections.deque[float] = collections.deque(maxlen=1000)
        self._last_refused_seq: int | None = None
        self._begin_s = 0.0                  # how long the last observe + send took
        self._stop_requested = threading.Event()
        self._state = _LoopState()

    def request_stop(self) -> None:
        """Ask the loop (running in another thread) to hold and return at the end of this period
        (in blocking mode, a wait for a plan ends at once)."""
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
        if self.hold_latencies_s:
            counts["hold_latency_max_s"] = max(self.hold_latencies_s)
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
                if self.blocking:
                    seq = self._blocking_step(period)
                else:
                    tick_end += period
                    seq = self._streaming_step(tick_end)
                if self._state.stop is not None:
                    reason = "stop"
                    break
                self._notify("on_step", dataclasses.replace(self._state.step, index=steps, seq=seq))
                steps += 1
                if not self.blocking and time.monotonic() > tick_end + period:   # fell a period behind: do not catch up
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

    def _begin_period(self) -> tuple[Observation, int | None]:
        state, started = self._state, time.monotonic()
        # Observing and sending cannot be interrupted: if the moving target's deadline would pass
        # meanwhile (judged by how long the last period's took), hold now rather than late.
        if state.moving is not None and started + self._begin_s >= state.moving.received_at + self.action_timeout:
            self._expire(state.moving, started)
        try:
            observation = self.arm.observe()
        except NoFreshObservation as error:   # never send a stale frame: hold, keep the link, send nothing
            state.moved_this_period, state.step = False, None
            self._keep_link()
            state.counts["no_fresh_observation"] += 1
            log.warning("holding: %s", error)
            return None, None
        state.observation, state.moved_this_period, state.step = observation, False, None
        self._keep_link()
        seq = self._send_observation(observation)
        self._begin_s = time.monotonic() - started
        return observation, seq

    def _streaming_step(self, tick_end: float) -> int | None:
        observation, seq = self._begin_period()
        if observation is None:               # nothing fresh to see: no move this period
            self._hold("hold")
            self._read_until(tick_end)
            return None
        self._move_if_fresh()                 # the newest command, clamped against this observation
        self._read_until(tick_end)
        if self._state.step is None and self._state.stop is None:   # nothing commanded this period
            self._hold("hold")
        return seq

    def _blocking_step(self, period: float) -> int | None:
        """Hold still, send one observation, wait for its answer, execute it for one period, hold."""
        state = self._state
        observation, seq = self._begin_period()
        if observation is None:               # nothing fresh to see: hold a period, ask again
            self._hold("hold")
            self._read_until(time.monotonic() + period)
            return None
        if seq is None:                       # not welcomed (or not sent): wait a period, holding
            self._read_until(time.monotonic() + period)
        else:
            asked_at = time.monotonic()
            self._read_until(asked_at + self.plan_deadline_s,
                             answered=lambda: (state.command is not None and state.command.seq >= seq)
                             or state.welcome is None    # link re-made or robot forgotten: no answer will come
                             or self._stop_requested.is_set())
            if state.moved_this_period:       # executing: let it run one period (or until its deadline)
                self._read_until(time.monotonic() + min(period, self.action_timeout))
            elif state.welcome is not None and (state.command is None or state.command.seq < seq):
                state.counts["plan_deadline_passed"] += 1
                log.warning("no answer to observation %d within %.1f s; holding and asking again",
                            seq, self.plan_deadline_s)
        if state.stop is None:
            if state.moving is not None:      # executed: never applied again, the next plan answers a new observation
                state.moving.expired = True
                state.moving = None
            self._hold("hold")
        return seq

    def _keep_link(self) -> None:
        """Heartbeat on time, re-make a link whose heartbeats go unanswered, greet until welcomed."""
        state, now = self._state, time.monotonic()
        interval = state.welcome.heartbeat_interval_s if state.welcome is not None else HEARTBEAT_BEFORE_WELCOME_S
        if self.connection.last_echo > state.remade_at:   # heard since the last re-make: the link works
            state.silence_backoff = 1.0
        silence_limit = min(max(self.reconnect_after_s, 3 * interval) * state.silence_backoff,
                            max(MAX_SILENCE_LIMIT_S, self.reconnect_after_s))
        if now - self.connection.last_echo > silence_limit:   # the service echoes heartbeats even before hello
            self.connection.reconnect()
            state.remade_at = self.connection.last_echo
            state.silence_backoff *= 2.0
            state.welcome, state.hello_sent_at, state.heartbeat_sent_at = None, -np.inf, -np.inf
            state.counts["reconnects"] += 1
            log.warning("no heartbeat echo from %s for %.1f s; reconnecting", self.connection.endpoint, silence_limit)
        # A send that could not be queued (not connected yet: IMMEDIATE) is retried soon, not at once.
        if state.welcome is None and now - state.hello_sent_at >= HELLO_RETRY_S:
            sent = self.connection.send(self.hello)
            state.hello_sent_at = now if sent else now - HELLO_RETRY_S + SEND_RETRY_S
        if now - state.heartbeat_sent_at >= interval:
            sent = self.connection.send(HeartbeatMessage(timestamp=now))
            state.heartbeat_sent_at = now if sent else now - interval + SEND_RETRY_S

    def _next_heartbeat_at(self) -> float:
        state = self._state
        interval = state.welcome.heartbeat_interval_s if state.welcome is not None else HEARTBEAT_BEFORE_WELCOME_S
        due = state.heartbeat_sent_at + interval
        if state.welcome is None:
            due = min(due, state.hello_sent_at + HELLO_RETRY_S)
        return due

    def _send_observation(self, observation: Observation) -> int | None:
        state = self._state
        if state.welcome is None:
            return None
        message = ObservationMessage(
            seq=state.seq + 1, timestamp=observation.timestamp,
            image=ImagePayload.from_array(observation.image, self.image_format, self.jpeg_quality),
            state=observation.state, joints=observation.joints)
        if not self.connection.send(message):
            return None
        state.seq = message.seq
        state.counts["observations_sent"] += 1
        return message.seq

    def _read_until(self, deadline: float, answered=lambda: False) -> None:
        """Handle replies until `deadline` (or `answered()`); keep the link and the hold deadline
        on their own timers meanwhile. A stop ends the wait at once."""
        state = self._state
        while state.stop is None and not answered():
            now = time.monotonic()
            if state.moving is not None and now >= state.moving.received_at + self.action_timeout:
                self._expire(state.moving, now)
            if now >= self._next_heartbeat_at():
                self._keep_link()
            wake = min(deadline, self._next_heartbeat_at())
            if state.moving is not None:
                wake = min(wake, state.moving.received_at + self.action_timeout)
            remaining = wake - time.monotonic()
            if now >= deadline:
                return
            for message in self.connection.receive(max(0.0, remaining)):
                self._handle(message)

    def _expire(self, command: _Command, now: float) -> None:
        """The target the arm is moving to went stale: hold now, never apply it again."""
        command.expired = True
        self._state.moving = None
        self.hold_latencies_s.append(now - command.received_at)
        self._state.counts["deadline_holds"] += 1
        self._hold("hold")

    def _handle(self, message: Message) -> None:
        state, now = self._state, time.monotonic()
        if isinstance(message, StopMessage):
            self.arm.hold()  # obey now, not at the end of the period
            state.moving = None
            state.stop = message
            state.counts["stops"] += 1
            log.warning("service stopped the arm: %s", message.reason)
        elif isinstance(message, (ActionMessage, HoldMessage)):
            self._take_command(message, now)
        elif isinstance(message, WelcomeMessage):
            if message.robot_id == self.hello.robot_id and state.welcome is None:
                state.welcome = message
                state.heartbeat_sent_at = -np.inf     # measure the link at once with the service's interval
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
        if action is None:                    # the service says keep still: now, not at the period end
            state.moving = None
            self._hold("hold", record=True)
        else:
            self._move_if_fresh()

    def _move_if_fresh(self) -> None:
        """Move towards the newest command's target if it is fresh and nothing moved this period."""
        state, command, now = self._state, self._state.command, time.monotonic()
        if (state.moved_this_period or state.observation is None or command is None or command.action is None
                or command.expired or now - command.received_at > self.action_timeout):
            return
        age = now - command.received_at
        try:
            target = self.limits.clamp(command.action.target, state.observation.state)
        except TargetLeavesLimits as error:
            state.counts["holds_outside_limits"] += 1
            if command.seq != self._last_refused_seq:   # once per command, not once per period
                log.warning("holding instead of seq %d: %s", command.seq, error)
            self._last_refused_seq = command.seq
            state.moving = None
            self._hold("hold", age)
            return
        except UnsafeTarget as error:
            state.counts["unsafe_targets"] += 1
            log.error("refusing target: %s", error)
            return
        self.arm.move_to(target)
        state.moved_this_period, state.moving = True, command
        state.counts["moves"] += 1
        state.step = StepRecord(0, state.observation, None, "move", target, command.action, age)

    def _hold(self, kind: str, age: float | None = None, *, record: bool = False) -> None:
        """Hold now. The period's record becomes this hold unless the period moved (its record is
        that move, ended by a deadline hold) or `record` (the service said hold)."""
        state = self._state
        self.arm.hold()
        state.counts["holds"] += 1
        if state.observation is not None and (record or not state.moved_this_period):
            if age is None and state.command is not None:
                age = time.monotonic() - state.command.received_at
            state.step = StepRecord(0, state.observation, None, kind, None, None, age)

    def _notify(self, event: str, argument: object) -> None:
        for subscriber in self.subscribers:
            try:
                getattr(subscriber, event)(argument)
            except Exception:
                log.exception("subscriber %s.%s failed", type(subscriber).__name__, event)


@contextlib.contextmanager
def stop_on_signals(client: "ArmClient", extra: dict | None = None):
    """While the block runs (main thread only), SIGINT/SIGTERM ask `client` to hold, finish its period and
    return; `extra` maps more signals to handlers (e.g. SIGUSR1 -> fault recovery). Handlers are restored after."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {signal.SIGINT: lambda *_: client.request_stop(), signal.SIGTERM: lambda *_: client.request_stop(),
                    **(extra or {})}
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
