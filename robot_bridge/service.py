"""The service side of the bridge: one ROUTER socket, each arm connects a DEALER and says hello.

The I/O thread owns every socket; it validates each frame, answers hello / heartbeat / bad input
at once, and hands each valid observation to the planner with `Planner.submit` (which never
blocks). The planner answers later through the request's `answer` callback, from its own thread;
the reply goes through an in-process queue back to the I/O thread, which sends it only if the
robot is still on the hello the observation came under: a plan made for an arm before it said
hello again (restarted, seq from 1) is dropped and counted, never sent. The planner keeps
newest-wins per robot: an observation overtaken by a newer one before it is planned is answered
with None (nothing sent) and counted. In `jepa-planner serve` the planner is the service's plan
scheduler; a plain blocking callback is run by `CallbackPlanner` (one thread, newest wins).

Identity: a robot id belongs to the connection whose `hello` claimed it (under CURVE only a
connection whose authenticated key, ZAP `User-Id`, is bound to that id: `security.ArmKeyBindings`).
Replies for a robot go to that connection's own routing id, never to a routing id the client
chose to match a robot id, and libzmq's handover is off, so an admitted key can neither take
another robot's replies nor knock its connection off by presenting its routing id.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Union

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .protocol import (
    ARM_TO_SERVICE,
    DEFAULT_LIMITS,
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    Message,
    ObservationMessage,
    PlanReply,
    ProtocolError,
    ProtocolLimits,
    StopMessage,
    WelcomeMessage,
    decode,
    encode,
)
from .security import ArmKeyBindings, ServerKeys, require_secure

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

PlanCallback = Callable[[str, ObservationMessage], PlanReply]
"""plan(robot_id, observation) -> ActionMessage | HoldMessage | ErrorMessage, run by `CallbackPlanner`.

The image is decoded first (`observation.image.decode()` is then free); the bridge stamps the
reply's `seq` (and an action's `planning_ms`, from hand-off to answer) and an exception becomes an
`error` reply with code `planner_error`. Return `ErrorMessage(ErrorCode.NO_SESSION.value, ...)`
when no planning session is bound to the robot.
"""


@dataclass(frozen=True)
class PlanRequest:
    """One observation handed to the planner."""

    robot_id: str
    connection: int                          # the hello it came under (a new hello, a new number)
    observation: ObservationMessage
    answer: Callable[["PlanReply | None"], None]   # exactly once, any thread; None: superseded, nothing sent
    hello: HelloMessage | None = None        # the hello it came under (its announced limits, camera)


class Planner(Protocol):
    def submit(self, request: PlanRequest) -> None:
        """Take the request (called on the I/O thread: must not block); answer it later."""

    def connection_changed(self, robot_id: str, connection: int) -> None:
        """The robot said hello again: what its earlier connections asked for may be dropped."""


SessionInfo = Callable[[str], "Mapping[str, str | int | float] | None"]

_MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_MAX_FRAMES_PER_WAKE = 256   # bound one I/O pass so queued replies are never starved by a flood


@dataclass
class _Robot:
    hello: HelloMessage
    last_seen: float
    epoch: int                 # which hello this is (a new hello, a new number): replies for an earlier one are never sent
    last_seq: int = -1
    latest: ObservationMessage | None = None   # newest valid observation, kept for operators (read-only views)
    latest_at: float | None = None             # its wall-clock arrival time (time.time())


@dataclass(frozen=True)
class RobotView:
    """What an operator may see of a connected arm: a snapshot, never the bridge's own state."""
    robot_id: str
    camera_height: int
    camera_width: int
    control_hz: float
    last_seen_at: float                        # wall clock of its last message (hello, observation, heartbeat)
    last_observation_at: float | None
    last_observation: ObservationMessage | None


class BridgeService:
    """Serve plans to arms over ZeroMQ. Use as a context manager or call start() / close()."""

    def __init__(
        self,
        endpoint: str,
        plan: Union[Planner, PlanCallback],
        *,
        keys: ServerKeys | None = None,
        limits: ProtocolLimits = DEFAULT_LIMITS,
        session_info: SessionInfo | None = None,
        heartbeat_interval_s: float = 1.0,
        robot_timeout_s: float = 30.0,
        software: str = "jepa-planner",
    ):
        require_secure(endpoint, keys, "bridge service")
        self._requested_endpoint = endpoint
        self._planner: Planner = plan if hasattr(plan, "submit") else CallbackPlanner(plan)
        self._keys = keys
        self._limits = limits
        self._session_info = session_info
        self._heartbeat_interval_s = heartbeat_interval_s
        self._robot_timeout_s = robot_timeout_s
        self._software = software

        self._robots: dict[bytes, _Robot] = {}   # by robot id (UTF-8 bytes); `_connection_of` says where to reply
        self._epochs = itertools.count(1)
        self._work = threading.Lock()   # guards _robots
        self._counts: collections.Counter[str] = collections.Counter()
        self._error_counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._outbox_lock = threading.Lock()
        self._running = False
        self._threads: list[threading.Thread] = []
        self._context: zmq.Context | None = None
        self._authenticator: ThreadAuthenticator | None = None
        self._bindings: ArmKeyBindings | None = None   # set under CURVE: which robot ids each arm key may claim
        self._unbound_claims_logged: set[tuple[str, bytes]] = set()   # warn once per (key, claimed id), I/O thread only
        # Which connection (ROUTER routing id) speaks for which robot id, set by hello; I/O thread only.
        self._connection_of: dict[bytes, bytes] = {}   # robot id -> connection
        self._robot_of: dict[bytes, bytes] = {}        # connection -> robot id
        self._heard_at: dict[bytes, float] = {}        # bound connection -> when its last frame came
        self._probed_at: dict[bytes, float] = {}       # robot id -> when its connection was last probed
        # A bound connection heard from within this window is live (arms heartbeat every interval).
        self._live_window_s = max(3.0, 3 * heartbeat_interval_s)
        self.endpoint: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "BridgeService":
        """Bind and start serving; raises at once if the endpoint or the keys are unusable."""
        self._context = zmq.Context()
        try:
            self._router = self._bind_router()
        except Exception:
            self._shutdown_context()
            raise
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self._router.get_monitor_socket(_MONITOR_EVENTS)
        outbox = f"inproc://bridge-outbox-{id(self)}"
        self._outbox_pull = self._context.socket(zmq.PULL)
        self._outbox_pull.bind(outbox)
        self._outbox_push = self._context.socket(zmq.PUSH)
        self._outbox_push.connect(outbox)
        self._running = True
        self._threads = [threading.Thread(target=self._io_loop, name="bridge-io", daemon=True)]
        if isinstance(self._planner, CallbackPlanner):
            self._planner.start()
        for thread in self._threads:
            thread.start()
        log.info("bridge listening on %s (%s)", self.endpoint, "CURVE" if self._keys else "loopback, no CURVE")
        return self

    def _bind_router(self) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.linger = 0
        router.maxmsgsize = self._limits.max_message_bytes   # libzmq drops the peer past this
        router.router_handover = 0      # a routing id in use is never handed to a second connection
        router.router_mandatory = 1     # unroutable replies raise, so they are counted, never lost silently
        if self._keys is not None:
            public, secret = self._keys.key_pair()
            self._bindings = self._keys.arm_bindings()
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()
            # The same bindings admit the handshake and, per frame, the robot id claimed: one read of the folder.
            self._authenticator.configure_curve_callback(domain="*", credentials_provider=self._bindings)
            log.info("bridge admits %d arm key(s) from %s", len(self._bindings), self._keys.authorized_keys_dir)
            router.curve_secretkey = secret
            router.curve_publickey = public
            router.curve_server = True
        try:
            router.bind(self._requested_endpoint)
        except zmq.ZMQError:
            router.close()
            raise
        return router

    def close(self) -> None:
        if not self._running:
            return
        self._running = False
        if isinstance(self._planner, CallbackPlanner):
            self._planner.close()
        self._post(b"", b"")  # wakes the I/O thread, which sees _running is False and exits
        for thread in self._threads:
            thread.join(timeout=5.0)
        with self._outbox_lock:
            self._outbox_push.close()
        self._shutdown_context()

    def _shutdown_context(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    def __enter__(self) -> "BridgeService":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public controls and counters (any thread) ------------------------------------------

    def send_stop(self, robot_id: str, reason: str) -> None:
        """Tell an arm to hold and end its control loop."""
        self._count("stops_sent")
        self._post(robot_id.encode(), encode(StopMessage(reason[: self._limits.max_text])))

    def robots(self) -> list[str]:
        with self._work:
            return sorted(rid.decode() for rid in self._robots)

    def robot_views(self) -> list[RobotView]:
        """Read-only snapshots of the connected arms with their newest observation, by robot id."""
        wall_offset = time.time() - time.monotonic()
        with self._work:
            return [RobotView(rid.decode(), r.hello.camera_height, r.hello.camera_width, r.hello.control_hz,
                              r.last_seen + wall_offset, r.latest_at, r.latest)
                    for rid, r in sorted(self._robots.items())]

    def hello_of(self, robot_id: str) -> HelloMessage | None:
        """The hello the robot is connected under (None if unknown), e.g. for the limits it announced."""
        with self._work:
            robot = self._robots.get(robot_id.encode())
            return None if robot is None else robot.hello

    def stats(self) -> dict[str, int]:
        """Monotonic counters (plus robots_active, a gauge) for metrics."""
        with self._counts_lock:
            counts = dict(self._counts)
        with self._work:
            counts["robots_active"] = len(self._robots)
        for name in _COUNTER_NAMES:
            counts.setdefault(name, 0)
        return counts

    def error_counts(self) -> dict[str, int]:
        """Error replies sent, by error code."""
        with self._counts_lock:
            return dict(self._error_counts)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += amount

    def _post(self, robot_id: bytes, payload: bytes, epoch: int | None = None) -> None:
        """Queue a frame for the I/O thread to send to the robot's connection (thread-safe: the lock
        serialises the PUSH socket). With `epoch`, it is sent only while the robot is still on that hello."""
        tag = b"" if epoch is None else str(epoch).encode()
        with self._outbox_lock:
            if self._outbox_push.closed:
                return
            try:
                self._outbox_push.send_multipart([robot_id, tag, payload], zmq.NOBLOCK)
            except zmq.Again:  # the I/O thread has gone (closing): nobody left to deliver it
                self._count("replies_undeliverable")

    # -- I/O thread -------------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        for socket in (self._router, self._outbox_pull, self._monitor):
            poller.register(socket, zmq.POLLIN)
        next_sweep = time.monotonic() + 1.0
        try:
            while self._running:
                ready = dict(poller.poll(timeout=500))
                if self._router in ready:
                    self._receive_frames()
                if self._outbox_pull in ready:
                    self._send_outbox()
                if self._monitor in ready:
                    self._read_monitor()
                if time.monotonic() >= next_sweep:
                    self._forget_silent_robots()
                    next_sweep = time.monotonic() + 1.0
        except Exception:  # a bug here would silently stop every arm: make it loud
            log.exception("bridge I/O thread failed")
            raise
        finally:
            self._router.disable_monitor()
            for socket in (self._monitor, self._router, self._outbox_pull):
                socket.close(linger=0)

    def _receive_frames(self) -> None:
        for _ in range(_MAX_FRAMES_PER_WAKE):
            try:
                # Without copy, each frame keeps its connection's metadata (the CURVE User-Id).
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            with self._counts_lock:   # one lock round-trip per frame, not two
                self._counts["messages_received"] += 1
                self._counts["bytes_received"] += sum(len(f) for f in frames)
            connection = frames[0].bytes
            if len(frames) != 2:
                self._reply_error(connection, ProtocolError(
                    ErrorCode.MALFORMED, f"a message is exactly one frame, got {len(frames) - 1}"))
                continue
            message: Message | None = None
            if connection in self._robot_of:
                self._heard_at[connection] = time.monotonic()
            try:
                message = decode(frames[1].bytes, self._limits, accept=ARM_TO_SERVICE)
                robot_id = message.robot_id.encode() if isinstance(message, HelloMessage) else self._robot_of.get(connection)
                if self._bindings is not None and robot_id is not None:
                    self._check_key_binding(robot_id, frames[1], message)
                self._handle(connection, robot_id, message)
            except ProtocolError as error:
                if not isinstance(message, ErrorMessage):   # never answer an error, even a refused one
                    self._reply_error(connection, error)

    def _check_key_binding(self, robot_id: bytes, frame: zmq.Frame, message: Message) -> None:
        """Refuse a frame for a robot id (claimed by hello, or bound to its connection) that is not
        bound to its connection's CURVE key."""
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:   # no ZAP metadata on this frame: treat as unbound, never crash the I/O thread
            user_id = ""
        if self._bindings.may_claim(user_id, robot_id):
            return
        self._count("robot_id_not_bound")
        if (user_id, robot_id) not in self._unbound_claims_logged:
            if len(self._unbound_claims_logged) >= 1024:   # bounded: a flood of distinct claims cannot grow it
                self._unbound_claims_logged.clear()
            self._unbound_claims_logged.add((user_id, robot_id))
            log.warning("arm key %s claimed robot id %r; it is bound to %s", user_id, robot_id[:64],
                        self._bindings.robot_ids(user_id))
        bound = ", ".join(self._bindings.robot_ids(user_id)) or "no robot id"
        raise ProtocolError(
            ErrorCode.ROBOT_ID_MISMATCH,
            f"this arm's CURVE key may speak only for {bound}, not for robot id {robot_id[:64]!r}; "
            "connect with the key issued for that robot id (the service admits ROBOT_ID.key for ROBOT_ID)",
            message.seq if isinstance(message, ObservationMessage) else None)

    def _handle(self, connection: bytes, robot_id: bytes | None, message: Message) -> None:
        now = time.monotonic()
        if isinstance(message, HelloMessage):
            self._claim(robot_id, connection, now)
            self._bind_connection(robot_id, connection)
            self._handle_hello(robot_id, message, now)
        elif isinstance(message, ObservationMessage):
            if robot_id is None:
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello before observations", message.seq)
            self._handle_observation(robot_id, message, now)
        elif isinstance(message, HeartbeatMessage):   # echoed to the connection, before hello too
            if robot_id is not None:
                with self._work:
                    robot = self._robots.get(robot_id)
                    if robot is not None:
                        robot.last_seen = now
            self._send(connection, message)
        elif isinstance(message, ErrorMessage):  # never answered: no error ping-pong
            self._count("arm_errors_received")
            log.warning("arm %r reported %s: %s", robot_id or connection, message.code, message.message)

    def _claim(self, robot_id: bytes, connection: bytes, now: float) -> None:
        """Refuse a hello for a robot id that another live connection holds.

        The holder is live while heard from within the live window and still routable (probed at
        most twice a second with an error telling it of the claim, so a flood of claims cannot fill
        its queue). A silent or closed holder is replaced: that is how a restarted arm comes back.
        """
        holder = self._connection_of.get(robot_id)
        if holder is None or holder == connection or now - self._heard_at.get(holder, -np.inf) > self._live_window_s:
            return
        if now - self._probed_at.get(robot_id, -np.inf) >= 0.5:
            self._probed_at[robot_id] = now
            notice = ErrorMessage(ErrorCode.ROBOT_ID_MISMATCH.value,
                                  f"another connection said hello as {robot_id.decode()!r}; this connection keeps it")
            try:
                self._router.send_multipart([holder, encode(notice)], zmq.NOBLOCK)
            except zmq.ZMQError as error:
                if error.errno == zmq.EHOSTUNREACH:   # the holder's connection is gone
                    return
        self._count("robot_id_in_use")
        raise ProtocolError(ErrorCode.ROBOT_ID_MISMATCH,
                            f"robot id {robot_id.decode()!r} is in use by another live connection; the first "
                            "connection keeps it until it closes or falls silent (retry hello later)")

    def _bind_connection(self, robot_id: bytes, connection: bytes) -> None:
        """From now on `robot_id`'s replies go to `connection` (`_claim` has ruled out a live holder)."""
        previous_robot = self._robot_of.get(connection)
        if previous_robot is not None and previous_robot != robot_id and self._connection_of.get(previous_robot) == connection:
            del self._connection_of[previous_robot]
        previous_connection = self._connection_of.get(robot_id)
        if previous_connection is not None and previous_connection != connection:
            self._unbind(previous_connection)
            self._count("robot_connections_replaced")
        self._connection_of[robot_id] = connection
        self._robot_of[connection] = robot_id
        self._heard_at[connection] = time.monotonic()

    def _unbind(self, connection: bytes) -> None:
        self._robot_of.pop(connection, None)
        self._heard_at.pop(connection, None)

    def _handle_hello(self, routing_id: bytes, hello: HelloMessage, now: float) -> None:
        epoch = next(self._epochs)
        with self._work:
            again = routing_id in self._robots
            # A restarted arm: its numbering starts again, and nothing planned for its old hello is sent.
            self._robots[routing_id] = _Robot(hello=hello, last_seen=now, epoch=epoch)
        if again:
            try:
                self._planner.connection_changed(hello.robot_id, epoch)
            except Exception:
                log.exception("planner.connection_changed(%r) failed", hello.robot_id)
        self._count("hellos")
        session = None
        if self._session_info is not None:
            try:
                session = self._session_info(hello.robot_id)
            except Exception:
                log.exception("session_info(%r) failed", hello.robot_id)
        log.info("arm %s connected: camera %dx%d at %.1f Hz", hello.robot_id, hello.camera_height,
                 hello.camera_width, hello.control_hz)
        self._send_to_robot(routing_id, encode(WelcomeMessage(
            robot_id=hello.robot_id, max_message_bytes=self._limits.max_message_bytes,
            heartbeat_interval_s=self._heartbeat_interval_s,
            session=dict(session) if session is not None else None, software=self._software)))

    def _handle_observation(self, routing_id: bytes, observation: ObservationMessage, now: float) -> None:
        with self._work:
            robot = self._robots.get(routing_id)
            if robot is None:
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello before observations", observation.seq)
            if observation.seq <= robot.last_seq:
                raise ProtocolError(ErrorCode.OUT_OF_ORDER,
                                    f"seq {observation.seq} is not above the previous {robot.last_seq}", observation.seq)
            expected = (robot.hello.camera_height, robot.hello.camera_width)
            if (observation.image.height, observation.image.width) != expected:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"image is {observation.image.height}x{observation.image.width}, "
                                    f"hello announced {expected[0]}x{expected[1]}", observation.seq)
            robot.last_seq, robot.last_seen = observation.seq, now
            robot.latest, robot.latest_at = observation, time.time()
            epoch, hello = robot.epoch, robot.hello
        self._count("observations_received")
        started = time.perf_counter()
        request = PlanRequest(routing_id.decode(), epoch, observation,
                              lambda reply: self._answer(routing_id, epoch, observation.seq, started, reply), hello)
        try:
            self._planner.submit(request)
        except Exception as error:
            log.exception("handing an observation of %r to the planner failed", routing_id)
            self._answer(routing_id, epoch, observation.seq, started,
                         ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{type(error).__name__}: {error}"[:500]))


    def _answer(self, routing_id: bytes, epoch: int, seq: int, started: float, reply: PlanReply | None) -> None:
        """A request's answer (any thread): stamp and count it, then queue it for its connection only."""
        if reply is None:
            self._count("observations_dropped_stale")
            return
        self._count("observations_planned")
        if isinstance(reply, ActionMessage):
            self._count("actions_sent")
            reply = dataclasses.replace(reply, seq=seq, planning_ms=(time.perf_counter() - started) * 1000.0)
        elif isinstance(reply, HoldMessage):
            self._count("holds_sent")
            reply = dataclasses.replace(reply, seq=seq)
        elif isinstance(reply, ErrorMessage):
            if reply.code == ErrorCode.PLANNER_ERROR.value:
                self._count("planner_errors")
            self._count_error_code(reply.code)
            reply = dataclasses.replace(reply, seq=seq)
        else:
            self._count("planner_errors")
            reply = ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"planner returned {type(reply).__name__}", seq)
        try:
            payload = encode(reply)
        except ValueError as error:  # the reply cannot be sent (e.g. NaN target)
            self._count("planner_errors")
            payload = encode(ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"unsendable plan: {error}"[:200], seq))
        self._post(routing_id, payload, epoch)

    def _send_outbox(self) -> None:
        for _ in range(_MAX_FRAMES_PER_WAKE):
            try:
                robot_id, epoch, payload = self._outbox_pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not robot_id:
                continue
            if epoch:
                with self._work:
                    robot = self._robots.get(robot_id)
                    current = robot is not None and str(robot.epoch).encode() == epoch
                if not current:  # planned for an earlier hello of this robot (or a forgotten one): never sent
                    self._count("replies_for_old_connection")
                    continue
            self._send_to_robot(robot_id, payload)

    def _send_to_robot(self, robot_id: bytes, payload: bytes) -> None:
        """Deliver to the connection that said hello for `robot_id` (none: undeliverable)."""
        connection = self._connection_of.get(robot_id)
        if connection is None:
            self._count("replies_undeliverable")
            return
        self._send_raw(connection, payload)

    def _send(self, routing_id: bytes, message: Message) -> None:
        self._send_raw(routing_id, encode(message))

    def _send_raw(self, routing_id: bytes, payload: bytes) -> None:
        try:
            self._router.send_multipart([routing_id, payload], zmq.NOBLOCK)
            self._count("messages_sent")
        except zmq.ZMQError:  # peer gone (EHOSTUNREACH) or its queue full (EAGAIN): drop, never block
            self._count("replies_undeliverable")

    def _reply_error(self, routing_id: bytes, error: ProtocolError) -> None:
        with self._counts_lock:
            self._counts["invalid_messages"] += 1
            self._error_counts[error.code.value] += 1
        self._send(routing_id, ErrorMessage.from_exception(error))

    def _read_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_ACCEPTED:
                self._count("connections_accepted")
            elif event == zmq.EVENT_DISCONNECTED:
                self._count("disconnections")
            else:
                self._count("handshake_failures")

    def _forget_silent_robots(self) -> None:
        deadline = time.monotonic() - self._robot_timeout_s
        with self._work:
            silent = [rid for rid, robot in self._robots.items() if robot.last_seen < deadline]
            for routing_id in silent:
                del self._robots[routing_id]
        for routing_id in silent:
            self._probed_at.pop(routing_id, None)
            connection = self._connection_of.pop(routing_id, None)
            if connection is not None and self._robot_of.get(connection) == routing_id:
                self._unbind(connection)
            log.info("forgot silent arm %r", routing_id)

    def _count_error_code(self, code: str) -> None:
        with self._counts_lock:
            self._error_counts[code] += 1


_COUNTER_NAMES = (
    "messages_received", "bytes_received", "messages_sent", "invalid_messages", "hellos",
    "observations_received", "observations_dropped_stale", "observations_planned", "actions_sent",
    "holds_sent", "stops_sent", "planner_errors", "replies_undeliverable", "arm_errors_received",
    "connections_accepted", "disconnections", "handshake_failures", "robot_id_not_bound",
    "robot_connections_replaced", "robot_id_in_use", "replies_for_old_connection",
)


class CallbackPlanner:
    """Runs a blocking `PlanCallback` for the bridge on one thread of its own (the planner, like a model
    worker), newest wins per robot: for standalone bridges and tests. `jepa-planner serve` submits to
    its plan scheduler instead."""

    def __init__(self, plan: PlanCallback):
        self._plan = plan
        self._wake = threading.Condition()
        self._pending: "collections.OrderedDict[str, PlanRequest]" = collections.OrderedDict()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="bridge-callback-planner", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def submit(self, request: PlanRequest) -> None:
        with self._wake:
            older = self._pending.get(request.robot_id)
            self._pending[request.robot_id] = request   # a replaced request keeps the robot's place in line
            self._wake.notify()
        if older is not None:
            older.answer(None)

    def connection_changed(self, robot_id: str, connection: int) -> None:
        with self._wake:
            older = self._pending.get(robot_id)
            if older is None or older.connection == connection:
                return
            del self._pending[robot_id]
        older.answer(None)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._running and not self._pending:
                    self._wake.wait()
                if not self._running:
                    return
                _, request = self._pending.popitem(last=False)
            request.answer(self._plan_one(request))

    def _plan_one(self, request: PlanRequest) -> PlanReply:
        observation = request.observation
        try:
            observation.image.decode()
        except ProtocolError as error:
            return ErrorMessage(error.code.value, error.message, observation.seq)
        try:
            return self._plan(request.robot_id, observation)
        except Exception as error:
            log.exception("planning for %s failed", request.robot_id)
            return ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{type(error).__name__}: {error}"[:500],
                                observation.seq)
