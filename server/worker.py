"""The one thread that owns the model and the device.

Every model call (loading, encoding a goal, planning) runs here, so CUDA state is never touched
from two threads and the event loop never blocks on inference. Two kinds of work arrive:
- one-off jobs (load the model, encode an uploaded goal), run first-come first-served;
- planning rounds from the plan scheduler (server/scheduler.py), run whenever no job is waiting.
A job that raises fails only its own future; the thread carries on.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable, Generic, Protocol, TypeVar

from .errors import ModelUnavailable

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT")
ResultT = TypeVar("ResultT")

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


class Rounds(Protocol):
    """What the worker runs between jobs (the plan scheduler)."""

    def has_work(self) -> bool: ...

    def run_round(self, model: Any) -> None: ...


class ModelWorker(Generic[ModelT]):
    def __init__(self, name: str = "model-worker"):
        self._wake = threading.Condition()
        self._jobs: collections.deque[tuple[Future, Callable[[], Any]]] = collections.deque()
        self._running_job = False
        self._rounds: Rounds | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self.model: ModelT | None = None
        self.state = LOADING
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def queued(self) -> int:
        """One-off jobs submitted and not finished (the one running included)."""
        return len(self._jobs) + self._running_job

    def attach(self, rounds: Rounds) -> None:
        """The planning rounds to run between jobs; the scheduler calls `wake()` when it has work."""
        self._rounds = rounds

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

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

        future = self._enqueue(load_job)
        if not self._started:
            self._started = True
            self._thread.start()
        return future

    def submit(self, job: Callable[..., ResultT], *args: Any) -> "Future[ResultT]":
        """Queue `job(model, *args)`; raises ModelUnavailable until the model has loaded."""
        if self.state != READY:
            raise ModelUnavailable(self.unavailable_reason())
        return self._enqueue(lambda: job(self.model, *args))

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

    def stop(self, timeout: float = 10.0) -> None:
        """Drop queued jobs (their futures are cancelled) and wait up to `timeout` s for the thread.
        Stop the scheduler first: its cancelled plans end the running round between CEM iterations."""
        self.state = STOPPED
        with self._wake:
            dropped, self._jobs = list(self._jobs), collections.deque()
            self._wake.notify()
        for future, _ in dropped:
            future.cancel()
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():  # e.g. still loading a checkpoint: it is a daemon, the process may exit
                log.warning("the model worker is still busy after %.0f s; leaving it", timeout)

    def _enqueue(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._wake:
            self._jobs.append((future, job))
            self._wake.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._wake:
                while (not self._jobs and self.state != STOPPED
                       and not (self.state == READY and self._rounds is not None and self._rounds.has_work())):
                    self._wake.wait()
                if self.state == STOPPED:
                    return
                job = self._jobs.popleft() if self._jobs else None
                self._running_job = job is not None
            if job is not None:
                self._run_job(*job)
            else:
                try:
                    self._rounds.run_round(self.model)
                except Exception:  # a bug in a round must not kill the device thread
                    log.exception("planning round failed")

    def _run_job(self, future: Future, job: Callable[[], Any]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = job()
                except BaseException as error:
                    future.set_exception(error)
                else:
                    future.set_result(result)
        finally:
            self._running_job = False
