"""Liveness, readiness (open to all) and Prometheus metrics (behind the API key when one is set)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from ..auth import require_api_key
from ..errors import ModelUnavailable, StorageUnhealthy
from ..schemas import Health, Readiness
from ..service import PlanningService
from .deps import error_responses, get_service

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and answering (never touches the model)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses=error_responses(503))
async def readyz(service: PlanningService = Depends(get_service)) -> Readiness:
    """200 once the model has loaded and storage is healthy (the database reads, the goals table is
    sound, the data directory takes writes); 503 with the reason otherwise."""
    problem = await asyncio.to_thread(service.storage.health_problem)
    if problem is not None:
        raise StorageUnhealthy(problem)
    if not service.worker.ready:
        raise ModelUnavailable(service.worker.unavailable_reason())
    return Readiness(model=service.settings.model)


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_api_key)],
            responses={200: {"content": {"text/plain": {}}}, **error_responses(401)})
async def metrics(service: PlanningService = Depends(get_service)) -> Response:
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
