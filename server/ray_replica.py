"""A planning replica: one copy of the model that plans rounds sent by the front door.

`jepa-planner serve --replicas K` runs K of these as Ray Serve deployments (server/ray_backend.py);
this module imports no ray, so what a replica does is plain Python (and testable in one process).
A replica is the engine's `plan_round` contract behind a process boundary: it receives each
session's whole planner state with the round and returns the new state with the plan, so the
front door owns every session's state and any replica can plan any session (failover moves
nothing but the next request). What it keeps is only a cache: goal latents by content key (sent
once; a replica that lacks one answers `missing_goals` and gets it again) and one controller per
session (rebuilt whenever the session's settings or goals differ, or its state is fresh).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_CACHED_GOALS = 256          # goal latents kept per replica (ViT-g: 1.4 MB each in float32)
MAX_CACHED_CONTROLLERS = 4096   # sessions whose controller a replica keeps between rounds
_MAX_CANCELLED_ROUNDS = 256     # cancellations remembered for rounds that may still arrive

# What a replica needs to load the same model as the front door (fields of ServerSettings).
MODEL_SETTINGS = ("model", "device", "dtype", "random_init_seed", "plan_budget")


@dataclass(frozen=True)
class SessionSpec:
    """What a session's controller is built from: its planner settings, sub-goal schedule and goals."""

    planner: dict[str, Any]
    schedule: dict[str, Any]
    goal_keys: tuple[str, ...]   # content keys of its goal latents, in schedule order


@dataclass(frozen=True)
class ReplicaItem:
    """One session's share of a round, as it crosses to a replica (host data only)."""

    key: str                            # the session planner's id: affinity and the controller cache
    spec: SessionSpec
    state: Any                          # planner.controller.ControllerState, or None for a fresh session
    latent: np.ndarray                  # the observation's frame latent (N, D), float32
    robot_state: list[float]
    arm_limits: Any = None              # planner.controller.ArmLimits the arm announced, if any
    goals: dict[str, np.ndarray] = field(default_factory=dict)  # goal latents the replica may lack


@dataclass(frozen=True)
class ReplicaOutcome:
    """One item's result: a plan and the state after it, an error, or the goal keys the replica lacks."""

    step: Any = None                    # server.engine.PlanStep
    state: Any = None                   # planner.controller.ControllerState after the step
    error: BaseException | None = None  # PlanCancelled included
    missing_goals: tuple[str, ...] = ()


class PlanningReplica:
    """The model plus a goal cache and per-session controllers; `plan` runs rounds on one device thread."""

    def __init__(self, model_settings: dict[str, Any], threads: int | None = None):
        import torch

        from .engine import load_engine

        if threads:
            torch.set_num_threads(threads)  # its CPU share; more threads than cores only contend
        self.engine = load_engine(SimpleNamespace(**model_settings))
        self.instance = uuid.uuid4().hex[:12]   # changes when the replica restarts (its caches are empty)
        self.planned: collections.Counter[str] = collections.Counter()   # plans per session key
        self._goals: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._controllers: collections.OrderedDict[str, tuple[SessionSpec, Any]] = collections.OrderedDict()
        self._cancelled: collections.OrderedDict[int, set[str]] = collections.OrderedDict()
        self._device_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="replica-device")
        log.info("planning replica %s ready: %s", self.instance, self.engine.info())

    def identity(self) -> dict[str, Any]:
        """Who answers: instance id, Ray actor name (when in Ray), weights fingerprint, device, plans per session."""
        return {"instance": self.instance, "actor_name": _actor_name(), "pid": os.getpid(),
                "fingerprint": self.engine.fingerprint, "device": self.engine.info()["device"],
                "planned": dict(self.planned)}

    async def plan(self, round_id: int, items: list[ReplicaItem]) -> tuple[str, list[ReplicaOutcome]]:
        """Plan a round on the device thread (the event loop stays free for `cancel`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._device_thread, self.plan_now, round_id, items)

    async def cancel(self, round_id: int, keys: list[str]) -> None:
        """Stop these sessions' plans of `round_id` at their next CEM iteration (deadline, stop, shutdown)."""
        self._cancelled.setdefault(round_id, set()).update(keys)
        while len(self._cancelled) > _MAX_CANCELLED_ROUNDS:
            self._cancelled.popitem(last=False)

    def plan_now(self, round_id: int, items: list[ReplicaItem]) -> tuple[str, list[ReplicaOutcome]]:
        """(this replica's instance id, one outcome per item, in order)."""
        from .engine import PlanStep, RoundItem

        outcomes: list[ReplicaOutcome | None] = [None] * len(items)
        runnable = []
        for index, item in enumerate(items):
            try:
                for key, array in item.goals.items():
                    self._remember_goal(key, array)
                missing = tuple(key for key in item.spec.goal_keys if key not in self._goals)
                if missing:
                    outcomes[index] = ReplicaOutcome(missing_goals=missing)
                    continue
                planner = self._planner_for(item)
                latent = self.engine.latent_from_array(np.asarray(item.latent, dtype=np.float32))
            except Exception as error:  # this item's problem only
                outcomes[index] = ReplicaOutcome(error=error)
                continue
            cancelled = lambda key=item.key: key in self._cancelled.get(round_id, ())  # noqa: E731
            runnable.append((index, item.key, planner,
                             RoundItem(planner, latent, item.robot_state, cancelled, item.arm_limits)))
        try:
            results = self.engine.plan_round([entry[3] for entry in runnable], lambda: False)
            for position, result in results:
                index, key, planner, _ = runnable[position]
                if isinstance(result, PlanStep):
                    self.planned[key] += 1
                    outcomes[index] = ReplicaOutcome(step=result, state=planner.controller.export_state())
                else:
                    outcomes[index] = ReplicaOutcome(error=result)
        finally:
            self._cancelled.pop(round_id, None)
        return self.instance, outcomes

    def _remember_goal(self, key: str, array: np.ndarray) -> None:
        if key not in self._goals:
            self._goals[key] = self.engine.latent_from_array(np.asarray(array, dtype=np.float32))
        self._goals.move_to_end(key)
        while len(self._goals) > MAX_CACHED_GOALS:
            self._goals.popitem(last=False)

    def _planner_for(self, item: ReplicaItem):
        """The session's controller, set to the state the front door sent (a fresh one for a fresh state)."""
        cached = self._controllers.get(item.key)
        if cached is not None and cached[0] == item.spec and item.state is not None:
            planner = cached[1]
            self._controllers.move_to_end(item.key)
        else:
            for key in item.spec.goal_keys:
                self._goals.move_to_end(key)
            goals = [self._goals[key] for key in item.spec.goal_keys]
            planner = self.engine.new_session_planner(goals, item.spec.planner, item.spec.schedule)
            self._controllers[item.key] = (item.spec, planner)
            while len(self._controllers) > MAX_CACHED_CONTROLLERS:
                self._controllers.popitem(last=False)
        if item.state is not None:
            planner.controller.import_state(item.state)
        return planner


def _actor_name() -> str | None:
    ray = sys.modules.get("ray")  # never imported here: only a replica running in Ray has a name
    try:
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_actor_name()
    except Exception:  # not in an actor
        pass
    return None
