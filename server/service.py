"""Everything one running service owns: settings, storage, the model worker and its plan scheduler,
goals, sessions, metrics and the ZeroMQ bridge. The HTTP app and `jepa-planner serve` share one instance."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .engine import Engine
from .goals import GoalLibrary
from .images import DecodeLimiter
from .metrics import ServiceMetrics
from .scheduler import PlanScheduler
from .schemas import parse_state
from .sessions import ActOutcome, PlannerValidator, SessionRegistry
from .settings import ServerSettings
from .storage import Storage
from .worker import ModelWorker

log = logging.getLogger(__name__)

EngineLoader = Callable[[ServerSettings], Engine]

# At close, how long to wait for the model worker: a cancelled plan ends at its next CEM iteration (within
# one budgeted plan), a model still loading is left behind (daemon thread), so SIGTERM ends within ~10 s.
_WORKER_STOP_S = 8.0


class PlanningService:
    def __init__(self, settings: ServerSettings, load_engine: EngineLoader, validate_planner: PlannerValidator):
        self.settings = settings
        self._load_engine = load_engine
        self.metrics = ServiceMetrics()
        self.storage = Storage(settings.data_dir)
        self.worker: ModelWorker[Engine] = ModelWorker()
        self.decoder = DecodeLimiter(settings.max_image_pixels, settings.max_concurrent_decodes, settings.decode_wait_s)
        self.scheduler = PlanScheduler(self.worker, self.metrics, lambda: self.settings.plan_batch_max)
        self.goals = GoalLibrary(self.storage, self.worker, self.decoder)
        self.sessions = SessionRegistry(self.storage, self.worker, self.scheduler, self.goals, self.metrics,
                                        validate_planner)
        self.metrics.worker_queue.set_function(lambda: self.worker.queued + self.scheduler.depth)
        self.metrics.model_ready.set_function(lambda: 1.0 if self.worker.ready else 0.0)
        self._stoppers: list[Callable[[], Any]] = []
        self.bridge: Any = None  # the ZeroMQ BridgeService when one runs (set by bridge_link.start_bridge)
        self._closed = False

    def start(self) -> None:
        """Begin loading the model on the worker (readiness flips when it is done)."""
        log.info("loading model %r on device %r (%s)", self.settings.model, self.settings.device, self.settings.dtype)
        self.worker.start(lambda: self._load_engine(self.settings)).add_done_callback(self._log_loaded)

    def on_stop(self, stopper: Callable[[], Any]) -> None:
        """Register cleanup to run at close (first registered, last run)."""
        self._stoppers.append(stopper)

    def begin_shutdown(self) -> None:
        """At SIGTERM, before the HTTP server drains: waiting and running plans are cancelled (their acts
        answer 503 shutting_down, nothing is recorded) and new acts are refused. Safe to call twice."""
        self.scheduler.close()

    def close(self) -> None:
        """Stop planning, the bridge and other registered parts, the worker, then storage. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        for stopper in reversed(self._stoppers):
            try:
                stopper()
            except Exception:
                log.exception("error while stopping %r", stopper)
        self._stoppers.clear()
        self.worker.stop(timeout=_WORKER_STOP_S)
        close_engine = getattr(self.worker.model, "close", None)  # an engine holding outside resources (Ray replicas)
        if close_engine is not None:
            try:
                close_engine()
            except Exception:
                log.exception("error while closing the engine")
        self.storage.close()

    async def act(self, session_id: str, image_bytes: bytes, state_text: str, seq: int | None) -> ActOutcome:
        """HTTP act: validate the state and the image (off the event loop), then plan through the scheduler,
        all within `settings.act_timeout_s` of arrival (ActTimeout after it)."""
        received = time.perf_counter()
        self.sessions.get(session_id)  # 404 before any decoding work
        state = parse_state(state_text)
        image = await self.decoder.decode(image_bytes)
        return await self.sessions.act(session_id, image.pixels, state, seq, received, self.settings.act_timeout_s)

    def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"source": self.settings.model, "state": self.worker.state, "error": self.worker.error,
                                "planner_defaults": self.settings.planner}
        engine = self.worker.model
        if engine is not None:
            info.update(engine.info())
        return info

    def _log_loaded(self, future) -> None:
        if future.exception() is None:
            log.info("model ready: %s", self.worker.model.info())
