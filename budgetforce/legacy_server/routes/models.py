"""`GET /v1/models`: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter, Request

from budgetforce.legacy_server.errors import APIError, error_responses
from budgetforce.legacy_server.protocol import ModelCard, ModelList

router = APIRouter(tags=["models"])


def _card(request: Request) -> ModelCard:
    engine = request.app.state.engine
    return ModelCard(
        id=request.app.state.model_id,
        root=request.app.state.settings.model,
        max_model_len=engine.max_model_len if engine is not None else None,
    )


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401))
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=error_responses(401, 404))
async def get_model(model_id: str, request: Request) -> ModelCard:
    if model_id != request.app.state.model_id:
        raise APIError(404, f"the model `{model_id}` does not exist", "model", "model_not_found")
    return _card(request)
