"""uvicorn, configured for clients that connect and then stall: the one place that builds the
server configuration, for `jepa-planner serve` and for `LocalServer` alike.

uvicorn times out idle keep-alive connections but not a connection that never finishes its
headers, and its `limit_concurrency` counts idle connections too, so a crowd of idle clients
turns every new request (health checks included) into a 503. Instead, each connection here:
- must send a request's complete headers within `http_header_timeout_s` of opening or of its
  previous answer, or it is closed (slowloris; the body has its own deadline, see middleware);
- counts against a cap below the process's descriptor limit; at the cap a new connection evicts
  the longest-idle one (no request in progress), so a short request like /healthz always gets in.
  Only when every connection is mid-request is the newcomer answered 503 and closed.
"""
from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .log_limits import install_repeat_filter
from .settings import ServerSettings

log = logging.getLogger(__name__)

# Descriptors kept free for everything but HTTP clients: SQLite, ZeroMQ, files being written, logs.
RESERVED_DESCRIPTORS = 128
_BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_BUSY_BODY = (b'{"error":{"code":"too_many_connections","message":"every connection is busy with a request; '
              b'retry in a second"}}')


def connection_cap(configured: int) -> int:
    """`configured`, lowered so that open connections never exhaust the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(8, min(configured, soft - RESERVED_DESCRIPTORS))


def uvicorn_config(app: Any, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn Config every server of this project runs with; `options` add to it (host, port, ...)."""
    cap = connection_cap(settings.max_connections)
    config = uvicorn.Config(
        app, http=guarded_protocol(cap, settings.http_header_timeout_s), server_header=False, proxy_headers=False,
        timeout_keep_alive=settings.http_keep_alive_s, h11_max_incomplete_event_size=16 * 1024, **options,
    )
    install_repeat_filter()  # after Config, which (re)configures uvicorn's loggers and handlers
    if cap < settings.max_connections:
        log.info("HTTP connections capped at %d (JEPA_MAX_CONNECTIONS=%d, descriptor limit %d)", cap,
                 settings.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return config


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools or h11) with the header deadline and the connection cap."""

    class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guard_opened = self.loop.time()
            self._guard_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections and not self._evict_longest_idle():
                transport.write(_BUSY_ANSWER % (len(_BUSY_BODY), _BUSY_BODY))
                transport.close()
                return
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._guard_opened = self.loop.time()
            self._arm_header_deadline()

        def _is_idle(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete

        def _evict_longest_idle(self) -> bool:
            idle = [other for other in self.connections
                    if other is not self and getattr(other, "_guard_opened", None) is not None and other._is_idle()]
            if not idle:
                return False
            oldest = min(idle, key=lambda other: other._guard_opened)
            oldest._close_idle("evicted at the connection cap")
            return True

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._guard_timer = self.loop.call_later(header_timeout_s, self._header_deadline_passed)

        def _cancel_header_deadline(self) -> None:
            timer = getattr(self, "_guard_timer", None)
            if timer is not None:
                timer.cancel()
                self._guard_timer = None

        def _header_deadline_passed(self) -> None:
            self._guard_timer = None
            if self._is_idle():  # a request in progress is the body deadline's business
                self._close_idle("no complete request headers in time")

        def _close_idle(self, why: str) -> None:
            self._cancel_header_deadline()
            self._guard_opened = None  # never picked twice
            if not self.transport.is_closing():
                log.debug("closing HTTP connection from %s: %s", self.client, why)
                self.transport.close()

    return GuardedHTTPProtocol
