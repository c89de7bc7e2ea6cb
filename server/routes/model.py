"""/v1/model: what the service is running."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import require_api_key
from ..schemas import ModelInfo
from ..service import PlanningService
from .deps import API_PREFIX, error_responses, get_service

router = APIRouter(prefix=API_PREFIX, tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model", response_model=ModelInfo, responses=error_responses(401))
def model_info(service: PlanningService = Depends(get_service)) -> ModelInfo:
    return ModelInfo(**service.model_info())
