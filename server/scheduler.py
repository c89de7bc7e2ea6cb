"""The one planning queue, shared by HTTP acts and the ZeroMQ bridge.

A request asks for one plan for one session: an observation, its seq, the connection it came on
(the bridge's hello epoch; None for HTTP), a deadline and a completion callback. The scheduler
keeps at most one pending request per session (newest wins: a newer one replaces the pending one,
which is answered as superseded) and, on the model worker thread, plans every session that has a
pending request as one round through ONE engine call, `engine.plan_round(items, should_stop)`.
A round takes at most `plan_batch_max` sessions, oldest waiting first (a session keeps its place in
line when a newer observation replaces its pending one), and plans them cheapest first, each
answered as soon as its plan is done; so no session waits behind more than one plan of another.

Cancellation has one path. A request is cancelled when its deadline passes, its session stops, a
newer connection of its robot supersedes it, or the service shuts down: it is answered at once
(a deadline is noticed between CEM iterations), and a running plan stops at its next CEM
iteration (its `should_stop`), is discarded and leaves the session as if the observation never came. Completion callbacks are called exactly
once, from whichever thread settles the request; they must be quick (set an asyncio future with
`call_soon_threadsafe`, post to the bridge's outbox).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol

from .errors import ServiceError, ShuttingDown, StaleObservation
from .metrics import ServiceMetrics
from .worker import ModelWorker

log = logging.getLogger(__name__)

Done = Callable[[Any, "BaseException | None"], None]
"""done(outcome, None) for a plan that was applied; done(None, error) otherwise."""

_NO_TOKEN = object()
_SWEEP_INTERVAL_S = 0.05   # how often a running round looks for queued requests past their deadline


@dataclass(eq=False)
class PlanRequest:
    key: str                    # the session: newest-wins and fairness are per session
    source: str                 # "http" | "bridge" (metrics labels)
    seq: int | None
    token: Hashable             # the connection the observation came on (bridge hello epoch; None for HTTP)
    deadline: float             # time.monotonic() after which the plan is useless
    late: ServiceError          # the answer when the deadline passes
    work: Any                   # what the session registry needs to plan it
    done: Done
    cost: int = 0               # what its plan costs (orders a round: cheapest first)
    cancel_reason: BaseException | None = field(default=None, repr=False)
    settled: bool = field(default=False, repr=False)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) > self.deadline

    def should_stop(self) -> bool:
        """Cheap, host-side: asked by the planner before each CEM iteration."""
        return self.cancel_reason is not None or time.monotonic() > self.deadline


class RoundHandler(Protocol):
    """The session side of a round (server/sessions.py)."""

    def prepare(self, engine: Any, request: PlanRequest) -> tuple[Any, Any]:
        """(the engine's round item, context for `complete`); raises to answer the request with the error."""

    def complete(self, engine: Any, request: PlanRequest, context: Any, result: Any) -> None:
        """Apply (or discard) the round's result for `request` and answer it (claim / settle)."""


class PlanScheduler:
    def __init__(self, worker: ModelWorker, metrics: ServiceMetrics, batch_max: Callable[[], int]):
        self.worker = worker
        self.metrics = metrics
        self.batch_max = batch_max          # read per round, so the setting can change on a live service
        self.handler: RoundHandler | None = None
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[str, PlanRequest] = collections.OrderedDict()
        self._running: list[PlanRequest] = []
        self._closed: BaseException | None = None
        self._next_sweep = 0.0
        self.rounds = 0                     # rounds run (for tests and benches)
        self.planned_per_round: collections.Counter[int] = collections.Counter()
        worker.attach(self)

    # -- any thread -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests pending or being planned."""
        return len(self._pending) + len(self._running)

    def submit(self, request: PlanRequest) -> None:
        """Queue `request` (newest wins per session). Raises StaleObservation when it is older than the
        session's pending request from the same connection, ShuttingDown after close()."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
            older = self._pending.get(request.key)
            if (older is not None and older.token == request.token and request.seq is not None
                    and older.seq is not None and request.seq <= older.seq):
                raise StaleObservation(f"observation seq {request.seq} is not newer than the pending {older.seq}; dropped")
            self._pending[request.key] = request   # a replaced request keeps the session's place in line
        if older is not None:
            if older.source == "http":
                self.metrics.count_stale_http()
            self.settle(older, error=StaleObservation(
                f"observation seq {older.seq} was superseded by a newer one (seq {request.seq}) before it was planned"))
        self.worker.wake()

    def cancel(self, key: str, reason: BaseException, keep_token: Any = _NO_TOKEN) -> None:
        """Cancel the session's waiting and running requests (with `keep_token`: only those from other
        connections). Each is answered with `reason` now; a running plan ends at its next CEM iteration and
        is discarded."""
        def hit(request: PlanRequest) -> bool:
            return request.key == key and (keep_token is _NO_TOKEN or request.token != keep_token)

        with self._lock:
            victims = [r for r in self._running if hit(r)]
            pending = self._pending.get(key)
            if pending is not None and hit(pending):
                del self._pending[key]
                victims.append(pending)
            for request in victims:
                request.cancel_reason = request.cancel_reason or reason
        for request in victims:
            self.settle(request, error=reason)

    def cancel_request(self, request: PlanRequest, reason: BaseException) -> None:
        """Cancel one request (e.g. its HTTP caller went away)."""
        with self._lock:
            if self._pending.get(request.key) is request:
                del self._pending[request.key]
            request.cancel_reason = request.cancel_reason or reason
        self.settle(request, error=reason)

    def close(self, reason: BaseException | None = None) -> None:
        """Shutting down: refuse new requests and answer every waiting and running one with `reason` now
        (running plans end at their next CEM iteration and record nothing)."""
        reason = reason or ShuttingDown("the service is shutting down; nothing was planned or recorded for this "
                                        "observation; retry when the service is back")
        with self._lock:
            if self._closed is not None:
                return
            self._closed = reason
            victims = list(self._pending.values()) + list(self._running)
            self._pending = collections.OrderedDict()
            for request in victims:
                request.cancel_reason = request.cancel_reason or reason
        for request in victims:
            self.settle(request, error=reason)
        self.worker.wake()

    def claim(self, request: PlanRequest) -> bool:
        """The round's right to apply this plan: False when it was cancelled, is past its deadline or already
        answered (the plan is then discarded). Whoever claims must answer with `request.done`."""
        with self._lock:
            if request.settled or request.cancel_reason is not None or request.expired():
                return False
            request.settled = True
            return True

    def why_stopped(self, request: PlanRequest) -> BaseException:
        """The answer for a request whose plan was cancelled or came too late."""
        return request.cancel_reason or request.late

    def settle(self, request: PlanRequest, outcome: Any = None, error: BaseException | None = None) -> bool:
        """Answer `request` unless it has been answered already."""
        with self._lock:
            if request.settled:
                return False
            request.settled = True
        if error is request.late:
            self.metrics.act_timeouts.labels(request.source).inc()
        try:
            request.done(outcome, error)
        except Exception:
            log.exception("completion callback of a %s plan request failed", request.source)
        return True

    # -- the model worker thread ------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._pending)

    def run_round(self, engine: Any) -> None:
        """Plan every waiting session (up to batch_max, oldest waiting first) through one engine call."""
        with self._lock:
            taken = []
            now = time.monotonic()
            expired = [r for r in self._pending.values() if r.expired(now)]
            for request in expired:
                del self._pending[request.key]
            while self._pending and len(taken) < max(1, self.batch_max()):
                taken.append(self._pending.popitem(last=False)[1])
            # Cheapest plans first: each is answered as soon as it is done, so a light robot in a round
            # with a heavy one waits for nothing but the plan that was running when it arrived.
            taken.sort(key=lambda request: request.cost)
            self._running = taken
        for request in expired:
            self.settle(request, error=request.late)
        prepared = []
        for request in taken:
            if request.should_stop():
                self.settle(request, error=self.why_stopped(request))
                continue
            try:
                item, context = self.handler.prepare(engine, request)
            except Exception as error:  # the registry logged what needs a log; the caller learns why
                self.settle(request, error=error)
                continue
            prepared.append((request, item, context))
        try:
            if prepared:
                self.rounds += 1
                self.planned_per_round[len(prepared)] += 1
                for index, result in engine.plan_round([item for _, item, _ in prepared], self._round_should_stop):
                    request, _, context = prepared[index]
                    try:
                        self.handler.complete(engine, request, context, result)
                    except Exception as error:
                        log.exception("completing the plan of session %s failed", request.key)
                        self.settle(request, error=error)
        finally:
            with self._lock:
                self._running = []

    def _round_should_stop(self) -> bool:
        """Asked between CEM iterations of every plan of the round: true once the service shuts down.
        Meanwhile, queued requests past their deadline are answered (so a long plan never makes them late)."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_INTERVAL_S
            with self._lock:
                expired = [r for r in self._pending.values() if r.expired(now)]
                for request in expired:
                    del self._pending[request.key]
                expired += [r for r in self._running if r.expired(now)]
            for request in expired:
                self.settle(request, error=request.late)
        return self._closed is not None
