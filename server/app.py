"""The FastAPI application: routers, middleware, and one JSON shape for every error."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from .errors import ServiceError
from .middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware, UnexpectedErrorMiddleware
from .routes import console, goals, health, model, robots, sessions
from .schemas import error_body
from .service import PlanningService

log = logging.getLogger(__name__)

# Stable codes for framework-raised errors (HTTPStatus phrases differ between Python versions).
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "invalid_request", 503: "unavailable"}


def create_app(service: PlanningService) -> FastAPI:
    """The app serving `service`: app startup starts loading the model, app shutdown closes the
    service (bridge, worker, storage), so uvicorn's graceful shutdown cleans everything up."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="jepa-planner",
        version="0.1.0",
        summary="Goal-image planning for robot arms on a frozen V-JEPA 2-AC world model",
        lifespan=lifespan,
    )
    app.state.service = service

    for resource in (goals, sessions, model, health):
        app.include_router(resource.router)
    for resource in (robots, console):  # the operator console: its page at /, robots, live session events
        app.include_router(resource.router)
    app.include_router(console.page_router)

    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)  # last resort, for errors after a response started
    # Added last = outermost: the size limit guards everything, metrics see every answer (500s too).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=service.settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics)
    app.add_middleware(UnexpectedErrorMiddleware)
    return app


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


async def _service_error(_: Request, error: ServiceError) -> Response:
    return error_response(error.status, error.code, error.message)


async def _http_error(request: Request, error: HTTPException) -> Response:
    status = HTTPStatus(error.status_code)
    code = _HTTP_CODES.get(error.status_code) or status.phrase.lower().replace(" ", "_").replace("-", "_")
    if error.status_code == 404 and error.detail == status.phrase:
        message = f"no such route: {request.method} {request.url.path} (the API is described at /docs)"
    elif error.status_code == 405 and error.detail == status.phrase:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = error.detail if isinstance(error.detail, str) else status.description
    return error_response(error.status_code, code, message, getattr(error, "headers", None))


async def _validation_error(_: Request, error: RequestValidationError) -> Response:
    problems = []
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")


async def _unexpected_error(request: Request, error: Exception) -> Response:
    # The traceback goes to the server log only; the client learns nothing about internals.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal_error", "internal server error; the details are in the service log")
