"""The one thread that owns the model and the device.

Every model call (loading, encoding, planning) runs here, one at a time, so CUDA state is never
touched from two threads and the event loop never blocks on inference. Callers get futures: the
HTTP routes await them, the ZeroMQ bridge thread waits on them. A job that raises fails only its
own future; the thread carries on with the next job.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generic, TypeVar

from .errors import ModelUnavailable

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")
ResultT = TypeVar("ResultT")

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


class ModelWorker(Generic[ModelT]):
    def __init__(self, name: str = "model-worker"):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queued = 0
        self.model: ModelT | None = None
        self.state = LOADING
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def queued(self) -> int:
        """Jobs submitted and not finished (the one running included)."""
        return self._queued

    def start(self, load: Callable[[], ModelT]) -> Future:
        """Load the model on the worker thread; `state` becomes ready or failed (with `error`)."""

        def load_job() -> ModelT:
            try:
                model = load()
            except Exception as error:
                self.state, self.error = FAILED, f"{type(error).__name__}: {error}"
                log.error("model failed to load: %s", self.error)
                raise
            self.model, self.state = model, READY
            return model

        return self._executor.submit(load_job)

    def submit(self, job: Callable[..., ResultT], *args: Any) -> "Future[ResultT]":
        """Queue `job(model, *args)`; raises ModelUnavailable until the model has loaded."""
        if self.state != READY:
            raise ModelUnavailable(self.unavailable_reason())
        with self._lock:
            self._queued += 1
        future = self._executor.submit(job, self.model, *args)
        future.add_done_callback(self._job_done)
        return future

    async def call(self, job: Callable[..., ResultT], *args: Any) -> ResultT:
        return await asyncio.wrap_future(self.submit(job, *args))

    def call_blocking(self, job: Callable[..., ResultT], *args: Any) -> ResultT:
        return self.submit(job, *args).result()

    def unavailable_reason(self) -> str:
        if self.state == LOADING:
            return "the model is still loading; retry when /readyz answers 200"
        if self.state == FAILED:
            return f"the model failed to load: {self.error}"
        return "the service is shutting down"

    def stop(self) -> None:
        """Finish the running job, drop queued ones (their futures are cancelled)."""
        self.state = STOPPED
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _job_done(self, _: Future) -> None:
        with self._lock:
            self._queued -= 1
