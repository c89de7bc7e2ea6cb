"""The FastAPI application: routers, middleware, and one JSON shape for every error."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .auth import require_docs_key
from .errors import ServiceError
from .middleware import (BodySizeLimitMiddleware, BodyTimeoutMiddleware, OptionsMiddleware, RequestMetricsMiddleware,
                         UnexpectedErrorMiddleware, allowed_methods)
from .routes import console, goals, health, model, robots, sessions
from .schemas import error_body
from .service import PlanningService

log = logging.getLogger(__name__)

# Stable codes for framework-raised errors (HTTPStatus phrases differ between Python versions).
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable"}
_DOCS_PATHS = {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}


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

    settings = service.settings
    docs_open = settings.api_key is None or settings.public_docs
    app = FastAPI(
        title="jepa-planner",
        version="0.1.0",
        summary="Goal-image planning for robot arms on a frozen V-JEPA 2-AC world model",
        lifespan=lifespan,
        **(_DOCS_PATHS if docs_open else {name: None for name in _DOCS_PATHS}),
    )
    app.state.service = service
    if not docs_open:
        _add_docs_behind_the_key(app)

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
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.http_body_timeout_s)
    app.add_middleware(OptionsMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics)
    app.add_middleware(UnexpectedErrorMiddleware)
    return app


def _add_docs_behind_the_key(app: FastAPI) -> None:
    """The same three documentation routes FastAPI serves, each needing the API key
    (JEPA_PUBLIC_DOCS=true serves them open instead)."""
    guard = [Depends(require_docs_key)]

    @app.get(_DOCS_PATHS["openapi_url"], include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(_DOCS_PATHS["docs_url"], include_in_schema=False, dependencies=guard)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(openapi_url=_DOCS_PATHS["openapi_url"], title=f"{app.title} - API docs")

    @app.get(_DOCS_PATHS["redoc_url"], include_in_schema=False, dependencies=guard)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url=_DOCS_PATHS["openapi_url"], title=f"{app.title} - API docs")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


async def _service_error(_: Request, error: ServiceError) -> Response:
    retry_after = getattr(error, "retry_after_s", None)
    return error_response(error.status, error.code, error.message,
                          {"Retry-After": str(retry_after)} if retry_after is not None else None)


async def _http_error(request: Request, error: HTTPException) -> Response:
    status = HTTPStatus(error.status_code)
    code = _HTTP_CODES.get(error.status_code) or status.phrase.lower().replace(" ", "_").replace("-", "_")
    if error.status_code == 404 and error.detail == status.phrase:
        message = f"no such route: {request.method} {request.url.path} (the API is described at /docs)"
    elif error.status_code == 405 and error.detail == status.phrase:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = error.detail if isinstance(error.detail, str) else status.description
    headers = getattr(error, "headers", None)
    if error.status_code == 405:  # every method of the path, not only the first matching route's
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed_methods(request.scope) | {"OPTIONS"}))}
    return error_response(error.status_code, code, message, headers)


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
