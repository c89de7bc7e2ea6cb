"""Run the full service (real uvicorn, real sockets) inside this process, on a free loopback port.

Used by `jepa-planner bench server`, the demo and the integration tests: the same app and the
same lifecycle as `jepa-planner serve`, minus signal handling (it runs in a background thread).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from .app import create_app
from .http_server import uvicorn_config
from .service import PlanningService


class LocalServer:
    """`with LocalServer(service) as server:` -> `server.url` answers until the block ends."""

    def __init__(self, service: PlanningService, *, with_bridge: bool = False, log_level: str = "warning"):
        self.service = service
        self.with_bridge = with_bridge
        self.log_level = log_level
        self.url = ""
        self.bridge: Any = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LocalServer":
        if self.with_bridge:
            from .bridge_link import start_bridge

            self.bridge = start_bridge(self.service)
        # Binding here and handing uvicorn the socket leaves no window for another process to
        # take the port between choosing and binding it.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        host, port = listener.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn_config(create_app(self.service), self.service.settings, log_level=self.log_level,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [listener]},
                                        name="local-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.service.close()
                raise RuntimeError("the local server did not start; see the log above")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the model has loaded; raise with the load error if it failed."""
        deadline = time.monotonic() + timeout
        while self.service.worker.state == "loading":
            if time.monotonic() > deadline:
                raise TimeoutError(f"model not loaded after {timeout:.0f} s")
            time.sleep(0.02)
        if not self.service.worker.ready:
            raise RuntimeError(self.service.worker.unavailable_reason())

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.service.close()  # no-op when the app's shutdown already closed it
