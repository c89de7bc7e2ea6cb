"""The session registry, shared by the HTTP routes and the ZeroMQ bridge (one process, one model).

A session drives one robot towards a goal (or a schedule of sub-goals). Its planner state (warm
start) lives in memory; its record and every step live in storage, so a restart keeps the history
and the session simply resumes with a cold planner. All planning runs on the model worker, one job
at a time; a job that fails answers its own caller with an error and leaves every other session alone.
An act whose caller stopped waiting (its deadline passed) leaves its session as if it never came.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .engine import Engine, PlanStep, SessionPlanner
from .errors import ActTimeout, Conflict, InvalidInput, NotFound, ServiceError, StaleObservation
from .goals import GoalLibrary
from .metrics import ServiceMetrics
from .storage import ACTIVE, SessionRecord, StepRecord, Storage, new_id
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


@dataclass
class _LiveSession:
    record: SessionRecord
    planner: SessionPlanner | None = None  # built on the worker at the first act


class _ActClaim:
    """Who settles one act: the worker when its plan is ready (the plan is applied), or the caller at
    its deadline (the plan will be discarded). The first to claim wins, so a plan is never applied
    after its caller has answered the robot with a timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._winner: str | None = None

    def apply(self) -> bool:
        return self._claim("worker")

    def abandon(self) -> bool:
        return self._claim("caller")

    def _claim(self, who: str) -> bool:
        with self._lock:
            self._winner = self._winner or who
            return self._winner == who


class SessionRegistry:
    def __init__(self, storage: Storage, worker: ModelWorker[Engine], goals: GoalLibrary,
                 metrics: ServiceMetrics, validate_planner: PlannerValidator):
        self.storage = storage
        self.worker = worker
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
        self.get(session_id)
        with self._lock:
            was_active = self._live.pop(session_id, None) is not None
        record = self.storage.stop_session(session_id)
        self._update_gauge()
        assert record is not None
        for listener in self.stop_listeners if was_active else ():
            try:
                listener(record)
            except Exception:
                log.exception("stop listener failed for session %s", session_id)
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
        """`received`: perf_counter() when the request arrived (for total_ms and the deadline); now if
        not given. `timeout`: seconds from `received` before ActTimeout; a later plan is discarded."""
        received = received or time.perf_counter()
        live = self._live_for_act(session_id, seq)
        claim = _ActClaim()
        future = self.worker.submit(self._act_job, live, claim, pixels, state, seq, "http", received)
        remaining = None if timeout is None else timeout - (time.perf_counter() - received)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), remaining)
        except asyncio.TimeoutError:
            if not self._give_up(future, claim, "http"):
                return await asyncio.wrap_future(future)
        raise ActTimeout(
            f"no plan within {timeout:g} s (JEPA_ACT_TIMEOUT_S): the model worker is busy or this session's planner "
            "is too slow for the device. The plan was discarded and the session is unchanged; send a fresh "
            "observation, and if this repeats lower the session's samples/iterations/horizon or raise JEPA_ACT_TIMEOUT_S")

    def act_for_robot(self, robot_id: str, pixels: np.ndarray, state: list[float], seq: int | None,
                      timeout: float | None = None, arm_limits: Any = None) -> ActOutcome | None:
        """Bridge entry (blocking, any thread): None when the robot has no active session.
        Raises concurrent.futures.TimeoutError after `timeout` s; a later plan is discarded.
        `arm_limits`: the limits the arm announced (bridge_link.planner_limits_from_hello), planned within."""
        with self._lock:
            live = self._active_for_robot(robot_id)
        if live is None:
            return None
        # The bridge orders observations per connection itself (and an arm restart restarts its
        # numbering), so its seq is recorded but not re-checked here.
        claim = _ActClaim()
        future = self.worker.submit(self._act_job, live, claim, pixels, state, seq, "bridge", time.perf_counter(),
                                    arm_limits)
        try:
            return future.result(timeout)
        except FutureTimeout:
            if not self._give_up(future, claim, "bridge"):
                return future.result()
            raise

    def _give_up(self, future: Future, claim: _ActClaim, source: str) -> bool:
        """At the caller's deadline: True when the act is abandoned (a queued job never runs, a running
        one discards its plan); False when the plan was applied just in time (its answer is moments away)."""
        future.cancel()
        if not claim.abandon():
            return False
        self.metrics.act_timeouts.labels(source).inc()
        return True

    def _live_for_act(self, session_id: str, seq: int | None) -> _LiveSession:
        live = self._live.get(session_id)
        if live is None:
            self.get(session_id)  # 404 when unknown
            raise Conflict(f"session {session_id!r} is stopped", code="session_stopped")
        self._check_fresh(live, seq)
        return live

    def _check_fresh(self, live: _LiveSession, seq: int | None) -> None:
        last = live.record.last_seq
        if seq is not None and last is not None and seq <= last:
            self.metrics.count_stale_http()
            raise StaleObservation(f"observation seq {seq} is not newer than {last}; dropped")

    def _act_job(self, engine: Engine, live: _LiveSession, claim: _ActClaim, pixels: np.ndarray, state: list[float],
                 seq: int | None, source: str, received: float, arm_limits: Any = None) -> ActOutcome:
        """Worker thread: encode, plan, record. Re-checks freshness: jobs may have queued out of order.
        A plan whose caller gave up is not recorded, and the planner is put back as it was before it."""
        if live.record.id not in self._live:
            raise Conflict(f"session {live.record.id!r} was stopped", code="session_stopped")
        if source == "http":
            self._check_fresh(live, seq)
        started = time.perf_counter()
        try:
            if live.planner is None:
                live.planner = self.build_planner(engine, live.record)
            before = live.planner.snapshot()
            plan: PlanStep = live.planner.step(engine.encode(pixels), state, arm_limits)
        except ServiceError:
            raise
        except Exception:
            self.metrics.plan_failures.labels(source).inc()
            log.exception("planning failed for session %s (robot %s)", live.record.id, live.record.robot_id)
            raise
        plan_seconds = time.perf_counter() - started
        total_ms = (time.perf_counter() - received) * 1000.0
        if not (np.all(np.isfinite(plan.action)) and np.isfinite(plan.energy)):
            live.planner.restore(before)  # this plan never reaches the robot either
            self.metrics.plan_failures.labels(source).inc()
            raise InvalidInput("the planner produced a non-finite action; holding", code="plan_not_finite")
        if not claim.apply():
            live.planner.restore(before)
            log.warning("session %s: discarded a plan that took %.1f s, after its caller's deadline",
                        live.record.id, plan_seconds)
            raise ActTimeout("the caller stopped waiting; the plan was discarded")
        step = StepRecord(
            session_id=live.record.id, step=live.record.steps + 1, seq=seq, source=source, received_at=time.time(),
            goal_index=plan.goal_index, action=[float(v) for v in plan.action], energy=float(plan.energy),
            plan_ms=plan_seconds * 1000.0, total_ms=total_ms,
        )
        self.storage.record_step(step)
        live.record = dataclasses.replace(
            live.record, steps=step.step, goal_index=step.goal_index,
            last_seq=seq if seq is not None else live.record.last_seq, last_energy=step.energy,
            last_action=step.action, last_plan_ms=step.plan_ms,
        )
        self.metrics.planning_seconds.labels(source).observe(plan_seconds)
        self.metrics.energy.observe(step.energy)
        self.metrics.actions.labels(source).inc()
        return ActOutcome(
            session_id=step.session_id, step=step.step, seq=seq, action=step.action,
            target_pose=None if plan.target_pose is None else [float(v) for v in plan.target_pose],
            energy=step.energy, goal_index=step.goal_index, plan_ms=step.plan_ms, total_ms=total_ms,
        )

    def build_planner(self, engine: Engine, record: SessionRecord) -> SessionPlanner:
        """Worker thread only: a fresh planner for `record` (goal latents from the library's cache)."""
        goal_latents = [self.goals.latent(engine, goal_id) for goal_id in record.goal_ids]
        return engine.new_session_planner(goal_latents, record.planner, record.schedule)

    def _active_for_robot(self, robot_id: str) -> _LiveSession | None:
        return next((live for live in self._live.values() if live.record.robot_id == robot_id), None)

    def _update_gauge(self) -> None:
        self.metrics.active_sessions.set(len(self._live))
