"""/v1/robots: the arms connected to the ZeroMQ bridge, their latest camera frame, a goal taken from
it, and the emergency stop of every session and every arm (POST /v1/sessions/stop-all)."""
from __future__ import annotations

import asyncio
import io
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from ..auth import require_api_key
from ..errors import Conflict, NotFound, StorageFull
from ..schemas import Goal
from ..service import PlanningService
from .deps import API_PREFIX, error_responses, get_service

router = APIRouter(prefix=API_PREFIX, tags=["robots"], dependencies=[Depends(require_api_key)])

STOP_ALL_REASON = "emergency stop from the operator (POST /v1/sessions/stop-all)"
STOP_ALL_PAGE = 1000


class Robot(BaseModel):
    robot_id: str
    connected: bool = Field(True, description="listed robots are connected (silent arms are forgotten after 30 s)")
    camera_height: int
    camera_width: int
    control_hz: float
    last_seen_at: datetime = Field(description="its last message of any kind (observation, heartbeat, hello)")
    last_observation_at: datetime | None
    last_seq: int | None = Field(description="sequence number of its newest observation")
    state: list[float] | None = Field(description="end-effector state of its newest observation")
    active_session_id: str | None
    frame_url: str | None = Field(description="its newest camera frame as PNG, once it has sent one")


class RobotList(BaseModel):
    bridge: bool = Field(description="whether this service runs a ZeroMQ bridge at all")
    items: list[Robot]


class StopAll(BaseModel):
    stopped_sessions: list[str] = Field(description="sessions that were active and are now stopped")
    robots_stopped: list[str] = Field(description="connected robots sent a `stop` message")


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _robot(service: PlanningService, view) -> Robot:
    observation = view.last_observation
    session = service.sessions.active_for_robot(view.robot_id)
    return Robot(
        robot_id=view.robot_id, camera_height=view.camera_height, camera_width=view.camera_width,
        control_hz=view.control_hz, last_seen_at=_utc(view.last_seen_at),
        last_observation_at=_utc(view.last_observation_at),
        last_seq=None if observation is None else observation.seq,
        state=None if observation is None else [float(v) for v in observation.state],
        active_session_id=None if session is None else session.id,
        frame_url=None if observation is None else f"{API_PREFIX}/robots/{view.robot_id}/frame",
    )


def _views(service: PlanningService) -> list:
    return [] if service.bridge is None else service.bridge.robot_views()


def _view(service: PlanningService, robot_id: str):
    view = next((v for v in _views(service) if v.robot_id == robot_id), None)
    if view is None:
        raise NotFound(f"robot {robot_id!r} is not connected to the bridge (GET /v1/robots lists those that are)")
    return view


def _latest_observation(service: PlanningService, robot_id: str):
    view = _view(service, robot_id)
    if view.last_observation is None:
        raise NotFound(f"robot {robot_id!r} has not sent an observation yet", code="no_observation")
    return view.last_observation


def _png(observation) -> bytes:
    """The observation's frame as PNG (decoding a JPEG and encoding take milliseconds: call off the event loop)."""
    from PIL import Image

    from robot_bridge.protocol import ProtocolError

    try:
        pixels = observation.image.decode()
    except ProtocolError as error:  # the bridge checks a JPEG's header on arrival, its body only here
        raise Conflict(f"the robot's newest frame (seq {observation.seq}) does not decode: {error.message}",
                       code="frame_undecodable") from None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@router.get("/robots", response_model=RobotList, responses=error_responses(401))
def list_robots(service: PlanningService = Depends(get_service)) -> RobotList:
    return RobotList(bridge=service.bridge is not None, items=[_robot(service, v) for v in _views(service)])


@router.get("/robots/{robot_id}", response_model=Robot, responses=error_responses(401, 404))
def get_robot(robot_id: str, service: PlanningService = Depends(get_service)) -> Robot:
    return _robot(service, _view(service, robot_id))


@router.get("/robots/{robot_id}/frame", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "the robot's newest camera frame"}, **error_responses(401, 404, 409)})
async def get_robot_frame(robot_id: str, service: PlanningService = Depends(get_service)) -> Response:
    observation = _latest_observation(service, robot_id)
    png = await asyncio.to_thread(_png, observation)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store", "X-Seq": str(observation.seq)})


@router.post("/goals/from-robot/{robot_id}", status_code=201, response_model=Goal, tags=["goals"],
             responses=error_responses(401, 404, 409, 422, 503))
async def goal_from_robot(
    robot_id: str,
    name: str | None = Query(None, max_length=200, description="goal name (default: the robot id and seq)"),
    service: PlanningService = Depends(get_service),
) -> Goal:
    """Store the robot's newest camera frame as a goal image (PNG), with where it came from as metadata."""
    observation = _latest_observation(service, robot_id)
    png = await asyncio.to_thread(_png, observation)
    metadata = {"source": "robot", "robot_id": robot_id, "seq": observation.seq,
                "state": [float(v) for v in observation.state]}
    goal = await service.goals.add(png, name or f"{robot_id} frame {observation.seq}", metadata)
    return Goal.from_record(goal)


@router.post("/sessions/stop-all", response_model=StopAll, tags=["sessions"], responses=error_responses(401))
def stop_all(service: PlanningService = Depends(get_service)) -> StopAll:
    """Emergency stop: send `stop` to every connected arm, with or without a session (an arm obeys
    a stop at once: it holds and ends its control loop), then stop every active session."""
    robots = [view.robot_id for view in _views(service)]
    for robot_id in robots:  # the arms first: nothing else stands between an arm and a stop
        service.bridge.send_stop(robot_id, STOP_ALL_REASON)
    stopped: dict[str, None] = {}   # session ids in the order they were stopped
    unrecorded: list[str] = []   # stopped, but the disk was full: still "active" on disk
    offset = 0
    while True:  # a page at a time until none is left active (sessions created meanwhile are stopped too)
        page = service.sessions.list("active", None, STOP_ALL_PAGE, offset)
        fresh = [record for record in page if record.id not in stopped]
        if not fresh:
            if len(page) < STOP_ALL_PAGE:
                break
            offset += len(page)   # a page of sessions whose stops were not recorded
            continue
        for record in fresh:   # every session, even when one stop cannot be recorded
            try:
                service.sessions.stop(record.id)
            except StorageFull:
                unrecorded.append(record.id)
            stopped[record.id] = None
    if unrecorded:
        named = ", ".join(unrecorded[:20]) + (f" and {len(unrecorded) - 20} more" if len(unrecorded) > 20 else "")
        raise StorageFull(f"every session was stopped and every connected arm told to stop, but the disk is full: "
                          f"the stops of {len(unrecorded)} sessions were not recorded and they would be active again "
                          f"after a restart ({named}); free some space and stop them again")
    return StopAll(stopped_sessions=list(stopped), robots_stopped=robots)
