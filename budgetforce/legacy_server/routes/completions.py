"""`POST /v1/completions`: raw prompts (text or token ids), the reasoning beside the text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from budgetforce.engine import BudgetForcingEngine
from budgetforce.legacy_server.errors import APIError, error_responses
from budgetforce.legacy_server.generation import ChoiceEvent, Job, Tally, prepare
from budgetforce.legacy_server.protocol import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from budgetforce.legacy_server.routes.common import (
    SSE_HEADERS,
    check_model,
    collect,
    engine_of,
    new_request_id,
    settings_of,
    stream_events,
)

router = APIRouter(tags=["completions"])
ENDPOINT = "completions"


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={
        **error_responses(400, 401, 404, 413, 500, 503),
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when `stream` is true."},
    },
)
async def create_completion(body: CompletionRequest, request: Request) -> Any:
    model = check_model(request, body, body.model)
    engine = engine_of(request)
    vocab = len(engine.tokenizer)
    prompts = []
    for p in body.prompts():
        if isinstance(p, list) and max(p) >= vocab:
            raise APIError(400, f"`prompt` has token id {max(p)}, beyond the vocabulary of {vocab}", "prompt")
        prompts.append(engine.prompt_ids(p))
    request_id = new_request_id("cmpl")
    job = prepare(engine, settings_of(request), body, prompts, "prompt", "max_tokens", request_id)
    tally = Tally(prompt_tokens=sum(len(p) for p in prompts))
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            _stream(request, body, model, request_id, created, job, tally, engine),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    events = await collect(request, ENDPOINT, engine, job, tally)
    if events is None:
        return Response(status_code=499)  # the client went away; nobody reads this
    choices = []
    for index, evs in events.items():
        final = evs[-1]
        reasoning = None if job.hide_reasoning else "".join(e.reasoning for e in evs)
        choices.append(
            CompletionChoice(
                index=index,
                text="".join(e.answer for e in evs),
                reasoning_content=reasoning,
                reasoning=reasoning,
                finish_reason=final.finish_reason,
                budget=final.report,
            )
        )
    return CompletionResponse(id=request_id, created=created, model=model, choices=choices, usage=tally.usage())


def _stream(
    request: Request, body: CompletionRequest, model: str, request_id: str, created: int, job: Job, tally: Tally,
    engine: BudgetForcingEngine,
) -> AsyncIterator[str]:  # fmt: skip
    usage_on = body.include_usage

    def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": request_id, "object": "text_completion", "created": created, "model": model, "choices": choices,
        }  # fmt: skip
        if usage_on:
            out["usage"] = usage.model_dump() if usage is not None else None
        return out

    def render(event: ChoiceEvent) -> list[dict[str, Any]]:
        if not (event.reasoning and not job.hide_reasoning) and not event.answer and event.finish_reason is None:
            return []
        choice: dict[str, Any] = {"index": event.index, "text": event.answer, "logprobs": None}
        if event.reasoning and not job.hide_reasoning:
            choice["reasoning_content"] = choice["reasoning"] = event.reasoning
        choice["finish_reason"] = event.finish_reason
        if event.report is not None:
            choice["budget"] = event.report.model_dump()
        return [chunk([choice])]

    def closing() -> list[dict[str, Any]]:
        return [chunk([], tally.usage())] if usage_on else []

    return stream_events(request, ENDPOINT, engine, job, tally, render, [], closing)
