"""The operator console: its static page at `/` (plain HTML/CSS/JS from server/console/, no build
step) and the live stream it reads, GET /v1/sessions/{id}/events (Server-Sent Events).

The page itself loads without the API key (it holds no data); every data call it makes, the
stream included, sends the key in the X-API-Key header (the stream is read with fetch, not
EventSource, precisely so that it can send headers and no key ever travels in a URL).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from ..auth import require_api_key
from ..errors import NotFound
from ..schemas import Session, Step
from ..service import PlanningService
from ..storage import ACTIVE
from .deps import API_PREFIX, error_responses, get_service

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page talks only to this origin; images it shows are blob: URLs made from authenticated fetches.
_CSP = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; "
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")

POLL_S = 0.25          # how often the stream looks for new steps: a 4 Hz arm's pace
KEEPALIVE_S = 15.0     # a comment line now and then keeps proxies from closing an idle stream
PAGE = 500             # steps read per storage query

page_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"], dependencies=[Depends(require_api_key)])


def _static(name: str) -> FileResponse:
    path = CONSOLE_DIR / name
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix],
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


@page_router.get("/")
def console_page() -> FileResponse:
    return _static("index.html")


@page_router.get("/console/{name}")
def console_asset(name: str) -> FileResponse:
    # Only the files that ship in server/console/ by exact name: no path ever reaches the file system.
    shipped = {path.name for path in CONSOLE_DIR.iterdir() if path.suffix in _MEDIA_TYPES and path.name != "index.html"}
    if name not in shipped:
        raise NotFound(f"no console file {name!r}")
    return _static(name)


def _event(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/{session_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`session` events (the session, on change), `step` events (one per planned action, "
                         "id = step number), `robot` events (the arm's newest state, on change); ends once the "
                         "session is stopped"},
    **error_responses(401, 404)})
async def session_events(
    request: Request,
    session_id: str,
    after: int = Query(0, ge=0, le=2**62, description="send steps after this step number (0: all)"),
    last_event_id: int | None = Header(None, ge=0, le=2**62, description="on reconnect: resume after this step"),
    service: PlanningService = Depends(get_service),
) -> StreamingResponse:
    service.sessions.get(session_id)  # 404 before the stream starts
    start = max(after, last_event_id or 0)
    return StreamingResponse(_stream(request, service, session_id, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, service: PlanningService, session_id: str, sent: int) -> AsyncIterator[str]:
    last_session = last_robot = None
    idle = 0.0
    while True:
        record = service.sessions.get(session_id)
        while True:  # every step recorded since the last look, in order
            steps = await asyncio.to_thread(service.storage.list_steps, session_id, PAGE, sent)
            for step in steps:
                yield _event("step", Step.from_record(step).model_dump(mode="json"), step.step)
                sent = step.step
            if len(steps) < PAGE:
                break
        session = Session.from_record(record).model_dump(mode="json")
        if session != last_session:
            yield _event("session", session)
            last_session, idle = session, 0.0
        robot = _robot_event(service, record.robot_id)
        if robot is not None and robot != last_robot:
            yield _event("robot", robot)
            last_robot, idle = robot, 0.0
        if record.status != ACTIVE:
            return
        if idle >= KEEPALIVE_S:
            yield ": keepalive\n\n"
            idle = 0.0
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)
        idle += POLL_S


def _robot_event(service: PlanningService, robot_id: str) -> dict | None:
    if service.bridge is None:
        return None
    view = next((v for v in service.bridge.robot_views() if v.robot_id == robot_id), None)
    if view is None or view.last_observation is None:
        return {"robot_id": robot_id, "connected": view is not None, "last_seq": None, "state": None,
                "last_observation_at": None}
    return {"robot_id": robot_id, "connected": True, "last_seq": view.last_observation.seq,
            "state": [float(v) for v in view.last_observation.state], "last_observation_at": view.last_observation_at}
