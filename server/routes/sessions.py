"""/v1/sessions: create, list, status, history, stop, and act (image + state -> next action)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from ..auth import require_api_key
from ..schemas import Action, Session, SessionCreate, SessionList, Step, StepList
from ..service import PlanningService
from .deps import API_PREFIX, Page, error_responses, get_service

router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"], dependencies=[Depends(require_api_key)])


@router.post("", status_code=201, response_model=Session, responses=error_responses(401, 404, 409, 422))
def create_session(body: SessionCreate, service: PlanningService = Depends(get_service)) -> Session:
    record = service.sessions.create(body.robot_id, body.schedule(), body.planner, body.schedule_rule())
    return Session.from_record(record)


@router.get("", response_model=SessionList, responses=error_responses(401, 422))
def list_sessions(
    status: Literal["active", "stopped"] | None = Query(None),
    robot_id: str | None = Query(None, max_length=128),
    page: Page = Depends(),
    service: PlanningService = Depends(get_service),
) -> SessionList:
    records = service.sessions.list(status, robot_id, page.limit, page.offset)
    return SessionList(items=[Session.from_record(record) for record in records])


@router.get("/{session_id}", response_model=Session, responses=error_responses(401, 404))
def get_session(session_id: str, service: PlanningService = Depends(get_service)) -> Session:
    return Session.from_record(service.sessions.get(session_id))


@router.get("/{session_id}/steps", response_model=StepList, responses=error_responses(401, 404, 422))
def list_steps(session_id: str, page: Page = Depends(), service: PlanningService = Depends(get_service)) -> StepList:
    records = service.sessions.steps(session_id, page.limit, page.offset)
    return StepList(items=[Step.from_record(record) for record in records])


@router.post("/{session_id}/stop", response_model=Session, responses=error_responses(401, 404))
def stop_session(session_id: str, service: PlanningService = Depends(get_service)) -> Session:
    return Session.from_record(service.sessions.stop(session_id))


@router.post("/{session_id}/act", response_model=Action, responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503, 504))
async def act(
    session_id: str,
    image: UploadFile = File(description="the robot's current camera image (PNG, JPEG or WebP)"),
    state: str = Form(description="JSON array of 7 numbers: [x, y, z, roll, pitch, yaw, gripper]"),
    seq: int | None = Form(None, ge=0, le=2**62, description="observation sequence number; older ones are dropped (409)"),
    service: PlanningService = Depends(get_service),
) -> Action:
    """Plan the next action for the robot's current image and end-effector state."""
    outcome = await service.act(session_id, await image.read(), state, seq)
    return Action(**outcome.__dict__)
