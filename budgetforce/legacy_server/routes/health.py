"""`GET /health` (engine alive: 200, else 503) and `GET /metrics` (Prometheus); both need no key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from budgetforce.legacy_server.errors import APIError, error_responses
from budgetforce.legacy_server.protocol import Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, responses=error_responses(503))
async def health(request: Request) -> Health:
    engine = request.app.state.engine
    if engine is None or engine.is_dead:
        raise APIError(503, "the engine is not running", code="engine_unavailable")
    return Health()


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
