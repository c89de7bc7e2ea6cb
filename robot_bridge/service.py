"""The service side of the bridge: one ROUTER socket, arms connect as DEALERs named by robot id.

The I/O thread owns every socket; it validates each frame, answers hello / heartbeat / bad input
at once, and hands each valid observation to the planner with `Planner.submit` (which never
blocks). The planner answers later through the request's `answer` callback, from its own thread;
the reply goes through an in-process queue back to the I/O thread, which sends it only if the
robot's connection is still the one the observation came on: a plan made for an arm before it
said hello again (restarted, seq from 1) is dropped and counted, never sent. The planner keeps
newest-wins per robot: an observation overtaken by a newer one before it is planned is answered
with None (nothing sent) and counted. In `jepa-planner serve` the planner is the service's plan
scheduler; a plain blocking callback is run by `CallbackPlanner` (one thread, newest wins).

Under CURVE every frame carries its connection's authenticated key (ZAP `User-Id`); a frame
whose routing id (= robot id) is not bound to that key is refused before it is handled, so an
admitted arm can neither greet nor steer as another robot (see `security.ArmKeyBindings`).
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
    connection: int            # which hello this is: replies for an earlier one are never sent
    last_seq: int = -1


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

        self._robots: dict[bytes, _Robot] = {}
        self._connections = itertools.count(1)
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
        if isinstance(self._planner, CallbackPlanner):
            self._planner.start()
        self._threads = [threading.Thread(target=self._io_loop, name="bridge-io", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("bridge listening on %s (%s)", self.endpoint, "CURVE" if self._keys else "loopback, no CURVE")
        return self

    def _bind_router(self) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.linger = 0
        router.maxmsgsize = self._limits.max_message_bytes   # libzmq drops the peer past this
        router.router_handover = 1      # a restarted arm reclaims its robot id at once
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
        self._post(robot_id.encode(), encode(StopMessage(reason[: self._limits.max_text])))  # to any connection

    def robots(self) -> list[str]:
        with self._work:
            return sorted(rid.decode() for rid in self._robots)

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

    def _post(self, routing_id: bytes, payload: bytes, connection: int | None = None) -> None:
        """Queue a frame for the I/O thread to send (thread-safe: the lock serialises the PUSH socket).
        With `connection`, it is sent only while the robot is still on that connection (same hello)."""
        tag = b"" if connection is None else str(connection).encode()
        with self._outbox_lock:
            if self._outbox_push.closed:
                return
            try:
                self._outbox_push.send_multipart([routing_id, tag, payload], zmq.NOBLOCK)
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
            routing_id = frames[0].bytes
            if len(frames) != 2:
                self._reply_error(routing_id, ProtocolError(
                    ErrorCode.MALFORMED, f"a message is exactly one frame, got {len(frames) - 1}"))
                continue
            message: Message | None = None
            try:
                message = decode(frames[1].bytes, self._limits, accept=ARM_TO_SERVICE)
                if self._bindings is not None:
                    self._check_key_binding(routing_id, frames[1], message)
                self._handle(routing_id, message)
            except ProtocolError as error:
                if not isinstance(message, ErrorMessage):   # never answer an error, even a refused one
                    self._reply_error(routing_id, error)

    def _check_key_binding(self, routing_id: bytes, frame: zmq.Frame, message: Message) -> None:
        """Refuse a frame whose robot id (its routing id) is not bound to its connection's CURVE key."""
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:   # no ZAP metadata on this frame: treat as unbound, never crash the I/O thread
            user_id = ""
        if self._bindings.may_claim(user_id, routing_id):
            return
        self._count("robot_id_not_bound")
        if (user_id, routing_id) not in self._unbound_claims_logged:
            if len(self._unbound_claims_logged) >= 1024:   # bounded: a flood of distinct claims cannot grow it
                self._unbound_claims_logged.clear()
            self._unbound_claims_logged.add((user_id, routing_id))
            log.warning("arm key %s claimed robot id %r; it is bound to %s", user_id, routing_id[:64],
                        self._bindings.robot_ids(user_id))
        bound = ", ".join(self._bindings.robot_ids(user_id)) or "no robot id"
        raise ProtocolError(
            ErrorCode.ROBOT_ID_MISMATCH,
            f"this arm's CURVE key may speak only for {bound}, not for routing id {routing_id[:64]!r}; "
            "connect with the key issued for that robot id (the service admits ROBOT_ID.key for ROBOT_ID)",
            message.seq if isinstance(message, ObservationMessage) else None)

    def _handle(self, routing_id: bytes, message: Message) -> None:
        now = time.monotonic()
        if isinstance(message, HelloMessage):
            self._handle_hello(routing_id, message, now)
        elif isinstance(message, ObservationMessage):
            self._handle_observation(routing_id, message, now)
        elif isinstance(message, HeartbeatMessage):
            with self._work:
                robot = self._robots.get(routing_id)
                if robot is not None:
                    robot.last_seen = now
            self._send(routing_id, message)
        elif isinstance(message, ErrorMessage):  # never answered: no error ping-pong
            self._count("arm_errors_received")
            log.warning("arm %r reported %s: %s", routing_id, message.code, message.message)

    def _handle_hello(self, routing_id: bytes, hello: HelloMessage, now: float) -> None:
        if hello.robot_id.encode() != routing_id:
            raise ProtocolError(ErrorCode.ROBOT_ID_MISMATCH,
                                f"hello says robot_id {hello.robot_id!r} but the socket routing id is "
                                f"{routing_id[:64]!r}; set ZMQ_ROUTING_ID to the robot id before connecting")
        connection = next(self._connections)
        with self._work:
            again = routing_id in self._robots
            # A restarted arm: its numbering starts again, and nothing planned for its old connection is sent.
            self._robots[routing_id] = _Robot(hello=hello, last_seen=now, connection=connection)
        if again:
            try:
                self._planner.connection_changed(hello.robot_id, connection)
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
        self._send(routing_id, WelcomeMessage(
            robot_id=hello.robot_id, max_message_bytes=self._limits.max_message_bytes,
            heartbeat_interval_s=self._heartbeat_interval_s,
            session=dict(session) if session is not None else None, software=self._software))

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
            connection = robot.connection
        self._count("observations_received")
        started = time.perf_counter()
        request = PlanRequest(routing_id.decode(), connection, observation,
                              lambda reply: self._answer(routing_id, connection, observation.seq, started, reply))
        try:
            self._planner.submit(request)
        except Exception as error:
            log.exception("handing an observation of %r to the planner failed", routing_id)
            self._answer(routing_id, connection, observation.seq, started,
                         ErrorMessage(ErrorCode.PLANNER_ERROR.value, f"{type(error).__name__}: {error}"[:500]))

    def _answer(self, routing_id: bytes, connection: int, seq: int, started: float, reply: PlanReply | None) -> None:
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
        self._post(routing_id, payload, connection)

    def _send_outbox(self) -> None:
        for _ in range(_MAX_FRAMES_PER_WAKE):
            try:
                routing_id, connection, payload = self._outbox_pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not routing_id:
                continue
            if connection:
                with self._work:
                    robot = self._robots.get(routing_id)
                    current = robot is not None and str(robot.connection).encode() == connection
                if not current:  # planned for an earlier hello of this robot (or a forgotten one): never sent
                    self._count("replies_for_old_connection")
                    continue
            self._send_raw(routing_id, payload)

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
            log.info("forgot silent arm %r", routing_id)

    def _count_error_code(self, code: str) -> None:
        with self._counts_lock:
            self._error_counts[code] += 1


_COUNTER_NAMES = (
    "messages_received", "bytes_received", "messages_sent", "invalid_messages", "hellos",
    "observations_received", "observations_dropped_stale", "observations_planned", "actions_sent",
    "holds_sent", "stops_sent", "planner_errors", "replies_undeliverable", "arm_errors_received",
    "connections_accepted", "disconnections", "handshake_failures", "robot_id_not_bound",
    "replies_for_old_connection",
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
