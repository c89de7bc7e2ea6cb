"""The session registry, shared by the HTTP routes and the ZeroMQ bridge (one process, one model).

A session drives one robot towards a goal (or a schedule of sub-goals). Its planner state (warm
start) lives in memory; its record and every step live in storage, so a restart keeps the history
and the session simply resumes with a cold planner. Every act, HTTP or bridge, is one request to the
plan scheduler (server/scheduler.py), which plans it on the model worker; a plan that fails answers
its own caller with an error and leaves every other session alone. A plan that is cancelled (its
deadline passed, its session stopped, its robot reconnected, the service is shutting down) leaves
its session as if the observation never came: no step, no seq, warm start and sub-goal put back.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .engine import Engine, PlanStep, RoundItem, SessionPlanner
from .errors import (ActTimeout, Conflict, InvalidInput, ModelUnavailable, NotFound, ServiceError, StaleObservation,
                     StorageFull)
from .goals import GoalLibrary
from .metrics import ServiceMetrics
from .scheduler import PlanRequest, PlanScheduler
from .storage import ACTIVE, STOPPED, SessionRecord, StepRecord, Storage, new_id
from .worker import ModelWorker

log = logging.getLogger(__name__)

PlannerValidator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ActOutcome:
    session_id: str
    step: int
    seq: int | None
    action: list[float]
    target_pose: list[float] | None
    energy: float
    goal_index: int
    plan_ms: float
    total_ms: float
    held: bool = False


@dataclass
class _LiveSession:
    record: SessionRecord
    planner: SessionPlanner | None = None  # built on the worker at the first act
    seq_token: Any = None                  # the connection last_seq was counted on (bridge hello epoch; None: HTTP)


@dataclass(frozen=True)
class _ActWork:
    """What a plan request carries for the registry."""

    live: _LiveSession
    pixels: np.ndarray | Callable[[], np.ndarray]   # the bridge decodes on the model thread, not its I/O thread
    state: list[float]
    received: float                                  # perf_counter() at arrival (total_ms)
    arm_limits: Any = None                           # planner.controller.ArmLimits the arm announced (bridge)


class SessionRegistry:
    def __init__(self, storage: Storage, worker: ModelWorker[Engine], scheduler: PlanScheduler, goals: GoalLibrary,
                 metrics: ServiceMetrics, validate_planner: PlannerValidator):
        self.storage = storage
        self.worker = worker
        self.scheduler = scheduler
        scheduler.handler = self
        self.goals = goals
        self.metrics = metrics
        self.validate_planner = validate_planner
        self._lock = threading.Lock()  # guards _live and the one-active-session-per-robot rule
        self.stop_listeners: list[Callable[[SessionRecord], None]] = []  # e.g. tell the arm over the bridge
        self._live: dict[str, _LiveSession] = {
            record.id: _LiveSession(record) for record in storage.list_sessions(status=ACTIVE, limit=1_000_000)
        }
        self._update_gauge()

    # operator side
    def create(self, robot_id: str, goal_ids: list[str], planner_overrides: dict[str, Any],
               schedule: dict[str, Any] | None = None) -> SessionRecord:
        for goal_id in goal_ids:
            self.goals.check_usable(goal_id)  # 404 unknown, 409 goal_broken without its image
        planner = self.validate_planner(planner_overrides)
        engine = self.worker.model
        if engine is not None:  # while the model loads, model limits are checked at the first act
            engine.check_planner(planner)
        with self._lock:
            current = self._active_for_robot(robot_id)
            if current is not None:
                raise Conflict(f"robot {robot_id!r} already has active session {current.record.id}; stop it first",
                               code="robot_busy")
            for leftover in self.storage.list_sessions(status=ACTIVE, robot_id=robot_id):
                if leftover.id not in self._live:   # stopped while the disk was full: its stop is recorded now
                    self.storage.stop_session(leftover.id)
            record = self.storage.add_session(SessionRecord(
                id=new_id(), robot_id=robot_id, goal_ids=list(goal_ids), planner=planner,
                schedule=dict(schedule or {}), status=ACTIVE, created_at=time.time(),
            ))
            self._live[record.id] = _LiveSession(record)
        self._update_gauge()
        return record

    def get(self, session_id: str) -> SessionRecord:
        live = self._live.get(session_id)
        if live is not None:
            return live.record
        record = self.storage.get_session(session_id)
        if record is None:
            raise NotFound(f"session {session_id!r} not found")
        return record

    def list(self, status: str | None, robot_id: str | None, limit: int, offset: int) -> list[SessionRecord]:
        records = self.storage.list_sessions(status=status, robot_id=robot_id, limit=limit, offset=offset)
        # Live counters are the freshest view of an active session.
        return [self._live[r.id].record if r.id in self._live else r for r in records]

    def stop(self, session_id: str) -> SessionRecord:
        """Stop a session: its arm is told and its plans are cancelled first, then the stop is stored, so
        that a storage failure (a full disk) never keeps an arm going; StorageFull then says so."""
        self.get(session_id)
        with self._lock:
            live = self._live.pop(session_id, None)
        self._update_gauge()
        if live is not None:  # a plan being made for it ends at its next CEM iteration and records nothing
            self.scheduler.cancel(session_id, Conflict(f"session {session_id!r} was stopped", code="session_stopped"))
            stopped = dataclasses.replace(live.record, status=STOPPED, stopped_at=time.time())
            for listener in self.stop_listeners:
                try:
                    listener(stopped)
                except Exception:
                    log.exception("stop listener failed for session %s", session_id)
        try:
            record = self.storage.stop_session(session_id)
        except StorageFull:
            raise StorageFull(f"session {session_id!r} was stopped and its arm told to stop, but the stop was not "
                              "recorded: the data directory's disk is full. It would be active again after a restart; "
                              "free some space and stop it again") from None
        assert record is not None
        return record

    def steps(self, session_id: str, limit: int, offset: int) -> list[StepRecord]:
        self.get(session_id)
        return self.storage.list_steps(session_id, limit=limit, offset=offset)

    def active_for_robot(self, robot_id: str) -> SessionRecord | None:
        with self._lock:
            live = self._active_for_robot(robot_id)
        return None if live is None else live.record

    # robot side
    async def act(self, session_id: str, pixels: np.ndarray, state: list[float], seq: int | None,
                  received: float | None = None, timeout: float | None = None) -> ActOutcome:
        """HTTP act. `received`: perf_counter() when the request arrived (for total_ms and the deadline);
        now if not given. `timeout`: seconds from `received` before ActTimeout (the plan is cancelled)."""
        received = received or time.perf_counter()
        live = self._live_for_act(session_id, seq)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def done(outcome: ActOutcome | None, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle_future, answer, outcome, error)

        request = self.submit(live, pixels, state, seq, None, "http", received, timeout, done)
        try:
            return await answer
        except asyncio.CancelledError:  # the caller went away: nothing may be recorded for it
            self.scheduler.cancel_request(request, ActTimeout("the caller stopped waiting"))
            raise

    def submit_for_robot(self, robot_id: str, pixels: Callable[[], np.ndarray], state: list[float], seq: int,
                         connection: Any, timeout: float, done, arm_limits: Any = None) -> bool:
        """Bridge act (the bridge's I/O thread; never blocks): False when the robot has no active session.
        `connection` is the robot's hello epoch: seq freshness is per connection, and a newer connection
        cancels what an older one asked for (see `connection_changed`)."""
        with self._lock:
            live = self._active_for_robot(robot_id)
        if live is None:
            return False
        self.submit(live, pixels, state, seq, connection, "bridge", time.perf_counter(), timeout, done, arm_limits)
        return True

    def connection_changed(self, robot_id: str, connection: Any) -> None:
        """A robot said hello again (restarted): plans asked for by its older connections are cancelled."""
        with self._lock:
            live = self._active_for_robot(robot_id)
        if live is not None:
            self.scheduler.cancel(live.record.id, StaleObservation(
                "the robot connected again; plans for its earlier connection are discarded"), keep_token=connection)

    def plan_timeout_for(self, robot_id: str, floor_s: float, factor: float) -> float:
        """A plan deadline sized to the session's planner: at least `floor_s`, and `factor` x its last plan time."""
        record = self.active_for_robot(robot_id)
        last_plan_s = (record.last_plan_ms or 0.0) / 1000.0 if record is not None else 0.0
        return max(floor_s, factor * last_plan_s)

    def submit(self, live: _LiveSession, pixels, state: list[float], seq: int | None, connection: Any, source: str,
               received: float, timeout: float | None, done, arm_limits: Any = None) -> PlanRequest:
        """One plan request to the scheduler, with its deadline `timeout` s after `received`; `arm_limits`:
        what the arm announced in its hello, planned within (bridge_link.planner_limits_from_hello)."""
        if timeout is None:
            deadline, late = float("inf"), ActTimeout("no deadline")
        else:
            deadline = time.monotonic() + timeout - (time.perf_counter() - received)
            setting = "JEPA_ACT_TIMEOUT_S" if source == "http" else "JEPA_BRIDGE_PLAN_TIMEOUT_S"
            late = ActTimeout(
                f"no plan within {timeout:g} s ({setting}): the device is busy or this session's planner is too "
                "slow for it. The plan was discarded and the session is unchanged; send a fresh observation, and "
                f"if this repeats lower the session's samples/iterations/horizon or raise {setting}")
        if not self.worker.ready:
            raise ModelUnavailable(self.worker.unavailable_reason())
        planner = live.record.planner
        request = PlanRequest(key=live.record.id, source=source, seq=seq, token=connection, deadline=deadline,
                              late=late, work=_ActWork(live, pixels, state, received, arm_limits), done=done,
                              cost=planner["samples"] * planner["iterations"] * planner["horizon"])
        try:
            self.scheduler.submit(request)
        except StaleObservation:
            if source == "http":
                self.metrics.count_stale_http()
            raise
        return request

    def _live_for_act(self, session_id: str, seq: int | None) -> _LiveSession:
        live = self._live.get(session_id)
        if live is None:
            self.get(session_id)  # 404 when unknown
            raise Conflict(f"session {session_id!r} is stopped", code="session_stopped")
        if self._is_stale(live, seq, None):
            self.metrics.count_stale_http()
            raise StaleObservation(f"observation seq {seq} is not newer than {live.record.last_seq}; dropped")
        return live

    @staticmethod
    def _is_stale(live: _LiveSession, seq: int | None, connection: Any) -> bool:
        """The one freshness rule: a seq not above the last one planned on the same connection is stale."""
        last = live.record.last_seq
        return seq is not None and last is not None and live.seq_token == connection and seq <= last

    # the plan scheduler's side of a round (model worker thread)
    def prepare(self, engine: Engine, request: PlanRequest) -> tuple[RoundItem, tuple[Any, float]]:
        """Check the request still stands, build the session's planner at its first act, encode."""
        work: _ActWork = request.work
        live = work.live
        if live.record.id not in self._live:
            raise Conflict(f"session {live.record.id!r} was stopped", code="session_stopped")
        if self._is_stale(live, request.seq, request.token):
            raise StaleObservation(f"observation seq {request.seq} is not newer than {live.record.last_seq}; dropped")
        pixels = work.pixels() if callable(work.pixels) else work.pixels  # a bad image fails this request only
        try:
            if live.planner is None:
                engine.check_planner(live.record.planner)  # limits the model sets (horizon, budget), when it loaded late
                live.planner = self.build_planner(engine, live.record)
            started = time.perf_counter()
            latent = engine.encode(pixels)
        except ServiceError:
            raise
        except Exception:
            self.metrics.plan_failures.labels(request.source).inc()
            log.exception("preparing a plan failed for session %s (robot %s)", live.record.id, live.record.robot_id)
            raise
        encode_seconds = time.perf_counter() - started
        item = RoundItem(planner=live.planner, latent=latent, state=work.state, should_stop=request.should_stop,
                         arm_limits=work.arm_limits)
        return item, (live.planner.snapshot(), encode_seconds)

    def complete(self, engine: Engine, request: PlanRequest, context: tuple[Any, float], result: Any) -> None:
        """Apply the round's plan for `request` (record the step, answer) or discard it and answer why."""
        from planner.search import PlanCancelled

        work: _ActWork = request.work
        live, (before, encode_seconds) = work.live, context
        if isinstance(result, PlanCancelled):  # the controller put itself back
            self.scheduler.settle(request, error=self.scheduler.why_stopped(request))
            return
        if isinstance(result, BaseException):
            live.planner.restore(before)
            if not isinstance(result, ServiceError):
                self.metrics.plan_failures.labels(request.source).inc()
                log.error("planning failed for session %s (robot %s)", live.record.id, live.record.robot_id,
                          exc_info=result)
            self.scheduler.settle(request, error=result)
            return
        plan: PlanStep = result
        if not (np.all(np.isfinite(plan.action)) and np.isfinite(plan.energy)):
            live.planner.restore(before)  # this plan never reaches the robot either
            self.metrics.plan_failures.labels(request.source).inc()
            self.scheduler.settle(request, error=InvalidInput("the planner produced a non-finite action; holding",
                                                              code="plan_not_finite"))
            return
        plan_seconds = encode_seconds + plan.plan_ms / 1000.0
        # Under the registry lock, so a stop either comes first (nothing recorded, the plan is discarded) or
        # after this plan was answered (its reply is queued before the stop message).
        with self._lock:
            if live.record.id not in self._live:
                live.planner.restore(before)
                self.scheduler.settle(request, error=Conflict(f"session {live.record.id!r} was stopped",
                                                              code="session_stopped"))
                return
            if not self.scheduler.claim(request):
                live.planner.restore(before)
                log.warning("session %s: discarded a plan that took %.1f s (%s)", live.record.id, plan_seconds,
                            self.scheduler.why_stopped(request))
                self.scheduler.settle(request, error=self.scheduler.why_stopped(request))
                return
            try:
                outcome, failure = self._record(live, request, plan, plan_seconds), None
            except Exception as error:   # e.g. StorageFull: a plan the service did not keep is not sent either
                live.planner.restore(before)
                if not isinstance(error, ServiceError):
                    log.exception("recording a step of session %s failed", live.record.id)
                outcome, failure = None, error
            try:   # claimed above: answered here, whatever happened
                request.done(outcome, failure)
            except Exception:
                log.exception("completion callback of a %s plan failed", request.source)

    def _record(self, live: _LiveSession, request: PlanRequest, plan: PlanStep, plan_seconds: float) -> ActOutcome:
        seq = request.seq
        total_ms = (time.perf_counter() - request.work.received) * 1000.0
        step = StepRecord(
            session_id=live.record.id, step=live.record.steps + 1, seq=seq, source=request.source,
            received_at=time.time(), goal_index=plan.goal_index, action=[float(v) for v in plan.action],
            energy=float(plan.energy), plan_ms=plan_seconds * 1000.0, total_ms=total_ms, held=plan.held,
        )
        self.storage.record_step(step)
        live.record = dataclasses.replace(
            live.record, steps=step.step, goal_index=step.goal_index,
            last_seq=seq if seq is not None else live.record.last_seq, last_energy=step.energy,
            last_action=step.action, last_plan_ms=step.plan_ms,
        )
        if seq is not None:
            live.seq_token = request.token
        self.metrics.planning_seconds.labels(request.source).observe(plan_seconds)
        self.metrics.energy.observe(step.energy)
        self.metrics.actions.labels(request.source).inc()
        return ActOutcome(
            session_id=step.session_id, step=step.step, seq=seq, action=step.action,
            target_pose=None if plan.target_pose is None else [float(v) for v in plan.target_pose],
            energy=step.energy, goal_index=step.goal_index, plan_ms=step.plan_ms, total_ms=total_ms, held=step.held,
        )

    def build_planner(self, engine: Engine, record: SessionRecord) -> SessionPlanner:
        """Worker thread only: a fresh planner for `record` (goal latents from the library's cache). A session
        that already acted (the service restarted) goes on from where its schedule stood, not from its first
        sub-goal: a lift restarted mid-way would otherwise go back to its open-hand approach, cube in hand."""
        goal_latents = [self.goals.latent(engine, goal_id) for goal_id in record.goal_ids]
        planner = engine.new_session_planner(goal_latents, record.planner, record.schedule)
        position = self.storage.schedule_position(record.id) if record.steps else None
        if position is not None:
            planner.resume(*position)
        return planner

    def _active_for_robot(self, robot_id: str) -> _LiveSession | None:
        return next((live for live in self._live.values() if live.record.robot_id == robot_id), None)

    def _update_gauge(self) -> None:
        self.metrics.active_sessions.set(len(self._live))


def _settle_future(future: asyncio.Future, outcome: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting act was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)
