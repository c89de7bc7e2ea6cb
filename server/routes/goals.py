"""/v1/goals: upload, list, get, fetch the image, delete."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from ..auth import require_api_key
from ..schemas import Goal, GoalList
from ..service import PlanningService
from ..uploads import GOAL_UPLOAD_OPENAPI, read_goal_upload
from .deps import API_PREFIX, Page, error_responses, get_service

router = APIRouter(prefix=f"{API_PREFIX}/goals", tags=["goals"], dependencies=[Depends(require_api_key)])


@router.post("", status_code=201, response_model=Goal, openapi_extra=GOAL_UPLOAD_OPENAPI,
             responses=error_responses(400, 401, 413, 415, 422, 503))
async def upload_goal(
    request: Request,
    name: str | None = Query(None, max_length=200, description="goal name (raw-body uploads)"),
    service: PlanningService = Depends(get_service),
) -> Goal:
    """Upload a goal image as multipart/form-data (`image` field) or as the raw request body."""
    upload = await read_goal_upload(request)
    goal = await service.goals.add(upload.data, upload.name or name, upload.metadata)
    return Goal.from_record(goal)


@router.get("", response_model=GoalList, responses=error_responses(401, 422))
def list_goals(page: Page = Depends(), service: PlanningService = Depends(get_service)) -> GoalList:
    return GoalList(items=[Goal.from_record(goal) for goal in service.goals.list(page.limit, page.offset)])


@router.get("/{goal_id}", response_model=Goal, responses=error_responses(401, 404))
def get_goal(goal_id: str, service: PlanningService = Depends(get_service)) -> Goal:
    return Goal.from_record(service.goals.get(goal_id))


@router.get("/{goal_id}/image", response_class=FileResponse, responses=error_responses(401, 404))
def get_goal_image(goal_id: str, service: PlanningService = Depends(get_service)) -> FileResponse:
    path, media_type = service.goals.image_path(goal_id)
    return FileResponse(path, media_type=media_type)


@router.delete("/{goal_id}", status_code=204, response_class=Response, responses=error_responses(401, 404, 409))
def delete_goal(goal_id: str, service: PlanningService = Depends(get_service)) -> Response:
    service.goals.delete(goal_id)
    return Response(status_code=204)
