"""Dependencies shared by the routers."""
from __future__ import annotations

from fastapi import Query, Request

from ..schemas import ErrorResponse
from ..service import PlanningService

API_PREFIX = "/v1"  # the API version; a breaking change gets /v2 beside it


def get_service(request: Request) -> PlanningService:
    return request.app.state.service


class Page:
    def __init__(self, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=2**62)):
        self.limit, self.offset = limit, offset


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI entries for the JSON errors a route may answer."""
    return {status: {"model": ErrorResponse} for status in statuses}
