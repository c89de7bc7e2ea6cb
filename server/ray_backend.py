"""Scale-out: the scheduler's planning rounds run on model replicas in Ray Serve (`serve --replicas K`).

Only imported when `--replicas` or `--ray-address` asks for it (ray is the optional `[ray]` extra).
The front door stays what it was: the FastAPI app, the ZeroMQ bridge, the session registry and the
one `PlanScheduler`, whose model worker holds a `RayEngine` instead of the local `WorldModelEngine`.
A `RayEngine` encodes and checks with a local copy of the model (one encode per observation is a
tiny share of a plan's compute: ViT-g, 800 samples x 10 iterations x horizon 2 rolls out ~5,000
times the encoder's work) and sends each round's plans to the replicas:

- a replica is one Serve application with one deployment of one replica (`server/ray_replica.py`),
  `num_gpus=1` when the cluster has GPUs, else `replica_cpus` CPUs; the front door addresses each
  by name, so it knows who plans what;
- every session is pinned to a replica (`ReplicaPool`: new sessions go to the least loaded one) for
  cache locality only: the session's whole planner state (sub-goal position, warm start, noise
  position) lives in the front door (`RemoteSessionPlanner`) and travels with each request, and
  the new state comes back with the plan. So a plan through a replica is the plan the local engine
  makes with the same noise, and when a replica dies (its call fails) its sessions are re-pinned
  and their plans of that round re-sent to a live replica at once: the arm holds past its action
  deadline meanwhile and never sees an error (none left: `ModelUnavailable`, a hold / HTTP 503);
- goal latents are content-addressed (sha256 of the weights fingerprint and the latent) and sent
  to a replica once; a replica that lost them (restarted) says so and gets them again;
- one planning queue: a round is grouped by replica and the groups are planned concurrently;
  each item is answered when its replica answers. Cancellation keeps its one path: the front
  door watches every item's `should_stop` while it waits and tells the replica, which stops
  that plan at its next CEM iteration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np

from .engine import PlanStep, RoundItem, WorldModelEngine, load_engine
from .errors import ModelUnavailable
from .ray_replica import MODEL_SETTINGS, PlanningReplica, ReplicaItem, SessionSpec

log = logging.getLogger(__name__)

APP_PREFIX = "jepa-planner-replica-"
DEPLOYMENT_NAME = "PlanningReplica"
_POLL_S = 0.005                 # between looks at outstanding replica calls
_PROBE_EVERY_S = 2.0            # how often a replica marked down is asked whether it is back
_CANCEL_GRACE_S = 10.0          # a call whose every item was cancelled this long ago is abandoned
_MAX_ATTEMPTS = 3               # an item is sent to at most this many replicas in one round
# A live replica takes a call at once (a replica runs at most a few calls; the front door sends one or two
# per round). A call that no replica has taken this long after it was sent means the replica is gone and
# Serve is starting another (which would take it only once loaded, tens of seconds later): plan elsewhere.
_UNASSIGNED_S = 3.0
_READY_TIMEOUT_S = 600.0


class RayUnavailable(RuntimeError):
    """ray[serve] is not installed or the cluster cannot be used; the message says what to do."""


# Read by Ray when it is imported, so set before: no Ray call may start a cluster of its own (after the
# service shut Ray down, Serve's handle threads would otherwise start a fresh local Ray, dashboard and
# all), and no C++ failure-signal handler in this process (it turned SIGTERM into an abort instead of the
# service's clean shutdown). Replicas run in Ray's workers and keep Ray's defaults.
RAY_ENV = {"RAY_ENABLE_AUTO_CONNECT": "0", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def import_ray():
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise RayUnavailable(f"--replicas / --ray-address need Ray Serve ({error}): pip install -e '.[ray]'") from None
    return ray, serve


class RemoteSessionPlanner:
    """A session's planner as the front door holds it (SessionPlanner): its spec and its state; the
    plans are made by a replica. `snapshot`/`restore` are the state itself (an immutable value)."""

    def __init__(self, backend: "RayEngine", spec: SessionSpec):
        self.key = uuid.uuid4().hex
        self.spec = spec
        self.state = None   # planner.controller.ControllerState after the last applied plan; None: fresh
        self._backend = backend

    def snapshot(self):
        return self.state

    def restore(self, snapshot) -> None:
        self.state = snapshot

    def resume(self, goal_index: int, steps_on_goal: int, arrived: bool) -> None:
        from planner.controller import ControllerState

        self.state = ControllerState(goal_index, steps_on_goal, None, None, arrived)

    def step(self, observation_latent: Any, state: list[float], should_stop: Callable[[], bool] | None = None,
             arm_limits: Any = None) -> PlanStep:
        item = RoundItem(self, observation_latent, state, should_stop or (lambda: False), arm_limits)
        ((_, result),) = list(self._backend.plan_round([item], lambda: False))
        if isinstance(result, BaseException):
            raise result
        return result


@dataclasses.dataclass(eq=False)
class Replica:
    """One replica as the front door sees it: its Serve handle, health and which goal latents it has."""

    index: int
    app: str
    handle: Any
    up: bool = True
    instance: str | None = None
    known_goals: set[str] = dataclasses.field(default_factory=set)
    probe: Any = None            # an identity() call in flight while it is down
    probe_sent: float = 0.0
    next_probe: float = 0.0

    def saw(self, instance: str) -> None:
        """A reply came from `instance`: a new one (restarted) has an empty goal cache."""
        if instance != self.instance:
            self.instance, self.known_goals = instance, set()


class ReplicaPool:
    """Which replica plans which session (the assignment table) and which replicas are up."""

    def __init__(self, replicas: list[Replica]):
        self.replicas = replicas
        # The assignment table; a stopped session's planner drops out of it by itself. Written on the model
        # worker, read by /v1/model on the event loop: under the lock.
        self._pinned: "weakref.WeakKeyDictionary[RemoteSessionPlanner, Replica]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def replica_for(self, planner: RemoteSessionPlanner) -> Replica | None:
        """The session's replica while it is up; else the least loaded live one (None when none is up)."""
        with self._lock:
            pinned = self._pinned.get(planner)
            if pinned is not None and pinned.up:
                return pinned
            live = [replica for replica in self.replicas if replica.up]
            if not live:
                return None
            load = Counter(replica.index for replica in self._pinned.values())
            chosen = min(live, key=lambda replica: (load[replica.index], replica.index))
            self._pinned[planner] = chosen
        if pinned is not None:
            log.warning("session planner %s moves from replica %d (down) to replica %d", planner.key[:8],
                        pinned.index, chosen.index)
        return chosen

    def placement(self) -> dict[str, int]:
        """Session planner key -> replica index (for tests, logs and /v1/model)."""
        with self._lock:
            return {planner.key: replica.index for planner, replica in self._pinned.items()}

    def mark_down(self, replica: Replica, why: BaseException | str) -> None:
        if replica.up:
            log.warning("planning replica %d (%s) is down: %s; its sessions move to the others", replica.index,
                        replica.app, why)
        replica.up, replica.probe, replica.next_probe = False, None, time.monotonic() + _PROBE_EVERY_S

    def revive(self, failures: tuple[type[BaseException], ...]) -> None:
        """Ask replicas that are down whether they are back (Serve restarts a dead replica); never blocks."""
        now = time.monotonic()
        for replica in self.replicas:
            if replica.up or now < replica.next_probe:
                continue
            if replica.probe is None:
                replica.probe, replica.probe_sent = replica.handle.identity.remote(), now
                continue
            try:
                identity = replica.probe.result(timeout_s=0)
            except TimeoutError:
                if now - replica.probe_sent > 30.0:
                    replica.probe, replica.next_probe = None, now + _PROBE_EVERY_S
                continue
            except failures + (Exception,) as error:
                replica.probe, replica.next_probe = None, now + _PROBE_EVERY_S
                log.debug("replica %d still down: %s", replica.index, error)
                continue
            replica.probe, replica.up = None, True
            replica.saw(identity["instance"])
            log.warning("planning replica %d (%s) is back: %s", replica.index, replica.app, identity)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            load = Counter(replica.index for replica in self._pinned.values())
        return [{"replica": replica.index, "app": replica.app, "up": replica.up, "sessions": load[replica.index]}
                for replica in self.replicas]


@dataclasses.dataclass(eq=False)
class _Call:
    replica: Replica
    indices: list[int]
    response: Any
    sent: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: set[int] = dataclasses.field(default_factory=set)   # items whose cancel was sent
    all_cancelled_at: float | None = None


class RayEngine:
    """The Engine of a front door whose plans run on Ray Serve replicas (see the module docstring).

    Model work that is not planning (encode, latent arrays, planner checks, info) is the local engine's."""

    def __init__(self, local: WorldModelEngine, replicas: list[Replica], failures: tuple[type[BaseException], ...],
                 running: type[BaseException], close: Callable[[], None] = lambda: None):
        self.local = local
        self.source = local.source
        self.fingerprint = local.fingerprint
        self.pool = ReplicaPool(replicas)
        self._failures = failures
        self._running = running   # what result(timeout_s=0) raises for a call its replica is still planning
        self._close = close
        self._goal_arrays: dict[str, np.ndarray] = {}
        self._rounds = itertools.count(1)

    # -- the model side: the local engine ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {**self.local.info(), "backend": "ray", "replicas": self.pool.describe()}

    def encode(self, pixels: np.ndarray):
        return self.local.encode(pixels)

    def latent_to_array(self, latent) -> np.ndarray:
        return self.local.latent_to_array(latent)

    def latent_from_array(self, array: np.ndarray):
        return self.local.latent_from_array(array)

    def check_planner(self, planner: dict[str, Any]) -> None:
        self.local.check_planner(planner)

    # -- the planning backend: replicas ----------------------------------------------------------

    def new_session_planner(self, goal_latents: list[Any], planner: dict[str, Any],
                            schedule: dict[str, Any] | None = None) -> RemoteSessionPlanner:
        keys = tuple(self._goal_key(latent) for latent in goal_latents)
        return RemoteSessionPlanner(self, SessionSpec(dict(planner), dict(schedule or {}), keys))

    def plan_round(self, items: list[RoundItem], should_stop: Callable[[], bool]) -> Iterator[tuple[int, Any]]:
        """Plan every item on its session's replica, the replicas concurrently; yields (index, PlanStep or
        the exception) as each replica answers. A plan's new state is applied to its session planner
        before it is yielded (the registry's `restore` undoes it when the plan is discarded)."""
        from planner.search import PlanCancelled

        round_id = next(self._rounds)
        self.pool.revive(self._failures)
        latents = {index: self.local.latent_to_array(item.latent) for index, item in enumerate(items)}
        todo, answered, resent = list(range(len(items))), set(), Counter()
        for _attempt in range(_MAX_ATTEMPTS):
            calls, retry = [], []
            for index in todo:
                if items[index].should_stop():
                    answered.add(index)
                    yield index, PlanCancelled("cancelled before it reached a replica")
            todo = [index for index in todo if index not in answered]
            groups: dict[Replica, list[int]] = {}
            for index in todo:
                replica = self.pool.replica_for(items[index].planner)
                if replica is None:
                    break
                groups.setdefault(replica, []).append(index)
            else:
                for replica, indices in groups.items():
                    calls.append(self._send(replica, round_id, items, indices, latents))
            if not calls:
                break
            while calls:
                progressed = False
                for call in list(calls):
                    try:
                        instance, outcomes = call.response.result(timeout_s=0)
                    except self._running:   # taken by its replica, still planning
                        continue
                    except TimeoutError:    # not taken by a replica yet
                        if time.monotonic() - call.sent < _UNASSIGNED_S:
                            continue
                        call.response.cancel()
                        calls.remove(call)
                        self.pool.mark_down(call.replica, f"no replica took a call within {_UNASSIGNED_S:g} s")
                        retry += call.indices
                        continue
                    except self._failures as error:
                        calls.remove(call)
                        self.pool.mark_down(call.replica, error)
                        retry += call.indices
                        continue
                    except Exception as error:  # the replica raised outside any one item: all its items fail
                        calls.remove(call)
                        log.error("planning replica %d failed a round", call.replica.index, exc_info=error)
                        for index in call.indices:
                            answered.add(index)
                            yield index, error
                        continue
                    calls.remove(call)
                    progressed = True
                    call.replica.saw(instance)
                    resend = []
                    for index, outcome in zip(call.indices, outcomes):
                        if outcome.missing_goals and resent[index] < 2:  # a replica that lost its goal cache
                            call.replica.known_goals.difference_update(outcome.missing_goals)
                            resent[index] += 1
                            resend.append(index)
                            continue
                        answered.add(index)
                        if outcome.step is not None:
                            items[index].planner.state = outcome.state
                            yield index, outcome.step
                        elif outcome.error is not None:
                            yield index, outcome.error
                        else:
                            yield index, RuntimeError(f"planning replica {call.replica.index} kept missing goal "
                                                      f"latents {outcome.missing_goals} after they were sent")
                    if resend:
                        calls.append(self._send(call.replica, round_id, items, resend, latents))
                if should_stop():     # the service is shutting down: stop every replica's plans now
                    for call in calls:
                        self._cancel(call, round_id, items, set(call.indices))
                    break
                self._cancel_stopped(calls, round_id, items)
                for call in list(calls):
                    if call.all_cancelled_at is not None and time.monotonic() - call.all_cancelled_at > _CANCEL_GRACE_S:
                        calls.remove(call)
                        self.pool.mark_down(call.replica, f"no answer {_CANCEL_GRACE_S:g} s after its plans were cancelled")
                if not progressed:
                    time.sleep(_POLL_S)
            todo = [index for index in retry if index not in answered]
            if should_stop() or not todo:
                break
            log.warning("round %d: re-sending %d plan(s) of a lost replica", round_id, len(todo))
        for index in range(len(items)):
            if index in answered:
                continue
            if should_stop() or items[index].should_stop():
                yield index, PlanCancelled("cancelled while a replica planned it")
            else:
                yield index, ModelUnavailable("no planning replica is available (they are restarting); holding. "
                                              "Send a fresh observation shortly")

    def close(self) -> None:
        self._close()

    # -- helpers ---------------------------------------------------------------------------------

    def _goal_key(self, latent: Any) -> str:
        array = np.ascontiguousarray(self.local.latent_to_array(latent), dtype=np.float32)
        digest = hashlib.sha256(self.fingerprint.encode() + str(array.shape).encode() + array.tobytes())
        key = digest.hexdigest()[:32]
        self._goal_arrays.setdefault(key, array)
        return key

    def _send(self, replica: Replica, round_id: int, items: list[RoundItem], indices: list[int],
              latents: dict[int, np.ndarray]) -> _Call:
        wire = []
        for index in indices:
            item = items[index]
            planner: RemoteSessionPlanner = item.planner
            goals = {key: self._goal_arrays[key] for key in planner.spec.goal_keys if key not in replica.known_goals}
            wire.append(ReplicaItem(planner.key, planner.spec, planner.state, latents[index], list(item.state),
                                    item.arm_limits, goals))
            replica.known_goals.update(goals)
        return _Call(replica, list(indices), replica.handle.plan.remote(round_id, wire))

    def _cancel_stopped(self, calls: list[_Call], round_id: int, items: list[RoundItem]) -> None:
        for call in calls:
            stopped = {index for index in call.indices if index not in call.cancelled and items[index].should_stop()}
            if stopped:
                self._cancel(call, round_id, items, stopped)

    def _cancel(self, call: _Call, round_id: int, items: list[RoundItem], indices: set[int]) -> None:
        call.cancelled |= indices
        try:
            call.replica.handle.cancel.remote(round_id, [items[index].planner.key for index in indices])
        except Exception as error:  # the replica is gone: its call fails on its own
            log.debug("could not cancel on replica %d: %s", call.replica.index, error)
        if call.all_cancelled_at is None and call.cancelled >= set(call.indices):
            call.all_cancelled_at = time.monotonic()


class RayConnection:
    """This process's connection to Ray: a local Ray on loopback that it started (`replicas` without
    `ray_address`) or an existing cluster. Made on the main thread (`connect_ray`): a Ray started from
    another thread took ~30 s to shut down (the model worker only deploys the replicas)."""

    def __init__(self, settings):
        self.ray, self.serve = import_ray()
        self.shared = bool(settings.ray_address)
        self.started = not self.ray.is_initialized()
        try:
            if self.started and self.shared:
                self.ray.init(address=settings.ray_address, namespace="jepa-planner", log_to_driver=False)
            elif self.started:
                self.ray.init(address="local", num_cpus=_local_cpus(settings), include_dashboard=False,
                              _node_ip_address="127.0.0.1", namespace="jepa-planner", log_to_driver=False)
        except Exception as error:  # an unreachable address, a local Ray that cannot start
            where = f"join the Ray cluster at {settings.ray_address}" if self.shared else "start a local Ray"
            raise RayUnavailable(f"cannot {where}: {type(error).__name__}: {error}") from None
        self.apps: list[str] = []
        self.handles: list[Any] = []
        self._closed = False

    def close(self) -> None:
        """Our applications go (on a shared cluster; a local Ray we started goes whole), then our connection."""
        if self._closed:
            return
        self._closed = True
        for handle in self.handles:   # their routers' threads call Ray: stop them before Ray goes
            try:
                handle.shutdown()
            except Exception as error:
                log.debug("could not shut a replica handle down: %s", error)
        if not (self.started and not self.shared):
            for app in self.apps:
                try:
                    self.serve.delete(app)
                except Exception as error:
                    log.warning("could not delete Serve application %s: %s", app, error)
        if self.started:
            self.ray.shutdown()


def connect_ray(settings) -> RayConnection:
    """Main thread, before serving: start a local Ray on loopback, or join `settings.ray_address`."""
    return RayConnection(settings)


def load_ray_engine(settings, connection: RayConnection) -> RayEngine:
    """Model worker: load the local engine, deploy the replicas on `connection`, check that each loaded the
    same weights. On failure the connection is closed; otherwise `RayEngine.close` closes it."""
    try:
        local = load_engine(settings)
        replicas = _deploy(connection.ray, connection.serve, settings, connection.apps, local.fingerprint)
        connection.handles.extend(replica.handle for replica in replicas)
    except BaseException:
        connection.close()
        raise
    return RayEngine(local, replicas, _replica_failures(connection.ray), connection.ray.exceptions.GetTimeoutError,
                     connection.close)


def _deploy(ray, serve, settings, apps: list[str], fingerprint: str) -> list[Replica]:
    gpus = ray.cluster_resources().get("GPU", 0)
    count = settings.replicas or max(1, int(gpus))
    if gpus >= 1 and count > gpus and not settings.ray_address:  # a cluster may add GPU nodes; this machine cannot
        raise RayUnavailable(f"{count} replicas need one GPU each; this machine has {int(gpus)}: use --replicas {int(gpus)}")
    resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": settings.replica_cpus}
    model_settings = {name: getattr(settings, name) for name in MODEL_SETTINGS}
    if str(model_settings["device"]).startswith("cuda") or gpus >= 1:
        model_settings["device"] = "auto"    # each replica's own GPU (Ray sets CUDA_VISIBLE_DEVICES)
    threads = None if gpus >= 1 else max(1, int(settings.replica_cpus))
    serve.start(proxy_location="Disabled")   # the HTTP API stays the front door's: no Serve proxy
    deployment = serve.deployment(
        PlanningReplica, name=DEPLOYMENT_NAME, num_replicas=1, ray_actor_options=resources,
        max_ongoing_requests=8, health_check_period_s=2.0, health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=5.0)
    targets = []
    for index in range(count):
        app = f"{APP_PREFIX}{index}"
        apps.append(app)
        targets.append(serve.RunTarget(deployment.bind(model_settings, threads), name=app, route_prefix=None))
    log.info("deploying %d planning replica(s) with %s each", count, resources)
    handles = serve.run_many(targets)
    replicas = []
    for index, (app, handle) in enumerate(zip(apps, handles)):
        identity = handle.identity.remote().result(timeout_s=_READY_TIMEOUT_S)
        if identity["fingerprint"] != fingerprint:  # same file, or same random-init seed, on every node
            raise RayUnavailable(f"planning replica {index} loaded other weights (fingerprint {identity['fingerprint']}, "
                                 f"the front door has {fingerprint}): the model must be the same file on every node")
        replicas.append(Replica(index, app, handle, instance=identity["instance"]))
        log.info("planning replica %d: %s", index, identity)
    return replicas


def _local_cpus(settings) -> int:
    return max(int(settings.replicas * settings.replica_cpus + 0.999), os.cpu_count() or 1)


def _replica_failures(ray) -> tuple[type[BaseException], ...]:
    """What a call raises when its replica is gone (died, killed, unreachable) rather than failing a plan."""
    from ray import exceptions
    from ray.serve import exceptions as serve_exceptions

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError")
    found = [getattr(exceptions, name) for name in names if hasattr(exceptions, name)]
    found += [getattr(serve_exceptions, name) for name in ("ReplicaUnavailableError", "DeploymentUnavailableError")
              if hasattr(serve_exceptions, name)]
    return tuple(found)
