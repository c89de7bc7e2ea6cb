"""Pure ASGI middleware: unexpected errors as JSON, request body size limit and deadline, OPTIONS
answers, request metrics."""
from __future__ import annotations

import asyncio
import logging
import time

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServiceMetrics
from .schemas import error_body

log = logging.getLogger(__name__)


class UnexpectedErrorMiddleware:
    """Turns an unhandled exception into a JSON 500 here, inside the app, so the server sees a
    normal answer and keeps the client's connection open (Starlette's last-resort handler
    re-raises to the server, which then drops the connection)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            # The traceback goes to the server log only; the client learns nothing about internals.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await send_error(send, 500, "internal_error", "internal server error; the details are in the service log",
                             close=False)


# After the limit is crossed the rest of the body is read and thrown away (never stored), so the
# client, still sending, reads our 413 instead of a reset connection. Past this many bytes we stop
# reading and let the connection close.
_DRAIN_FACTOR = 4


class BodySizeLimitMiddleware:
    """413 as soon as a body is declared or streamed past `max_bytes`, without buffering it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= self.max_bytes * _DRAIN_FACTOR:
                await _drain(receive, self.max_bytes * _DRAIN_FACTOR)
            await send_error(send, 413, "payload_too_large", self._message())
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, self.max_bytes * _DRAIN_FACTOR - received)
                    # An HTTPException passes through FastAPI's body parsing untouched and reaches
                    # the app's JSON error handler.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"


class _BodyTimedOut(HTTPException):
    pass


class BodyTimeoutMiddleware:
    """408 (and the connection closed) when a request's body has not fully arrived within
    `timeout_s` of the first read: a client trickling bytes cannot hold a request open forever.
    Reads after the body (waiting for a disconnect) are not timed."""

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyTimedOut(408, self._message(), headers={"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimedOut:
            # Raised outside the app's own error handling (e.g. while another middleware drained).
            if started:
                raise
            await send_error(send, 408, "request_timeout", self._message())

    def _message(self) -> str:
        return f"the request body did not arrive within {self.timeout_s:g} s (JEPA_HTTP_BODY_TIMEOUT_S)"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(scope: Scope) -> set[str]:
    """Every method some route of the app accepts on this request's path (empty: no such path).
    Asked of the routes through their public `matches`, one method at a time, so that routes
    nested in included routers count too."""
    routes = getattr(scope.get("app"), "routes", ())
    return {method for method in _METHODS
            if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)}


class OptionsMiddleware:
    """`OPTIONS` on a known path answers 204 with an `Allow` header naming every method of that
    path (the router alone names only the first route's)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods = allowed_methods(scope)
        if not methods or "OPTIONS" in methods:
            await self.app(scope, receive, send)  # unknown path (404) or a route that answers OPTIONS itself
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
        await send({"type": "http.response.body", "body": b""})


class RequestMetricsMiddleware:
    """Counts and times every request by route template (not raw path, which would explode label sets)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(time.perf_counter() - started)


async def send_error(send: Send, status: int, code: str, message: str, close: bool = True) -> None:
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
