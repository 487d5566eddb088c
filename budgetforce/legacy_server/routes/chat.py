"""`POST /v1/chat/completions`: full JSON or an SSE stream, reasoning split from the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from jinja2 import TemplateError

from budgetforce.engine import BudgetForcingEngine
from budgetforce.legacy_server.errors import APIError, error_responses
from budgetforce.legacy_server.generation import ChoiceEvent, Job, Tally, prepare
from budgetforce.legacy_server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    Usage,
)
from budgetforce.legacy_server.routes.common import (
    SSE_HEADERS,
    check_model,
    collect,
    engine_of,
    new_request_id,
    settings_of,
    stream_events,
)

router = APIRouter(tags=["chat"])
ENDPOINT = "chat"
TEMPLATE_ERRORS = (TemplateError, ValueError, TypeError, KeyError, IndexError)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={
        **error_responses(400, 401, 404, 413, 500, 503),
        200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when `stream` is true."},
    },
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Any:
    model = check_model(request, body, body.model)
    engine = engine_of(request)
    try:
        prompt_ids = engine.prompt_ids(body.chat())
    except TEMPLATE_ERRORS as exc:  # the model's chat template rejected the conversation (raise_exception)
        raise APIError(400, f"the chat template rejected the messages: {exc}", "messages") from None
    request_id = new_request_id("chatcmpl")
    cap_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    job = prepare(engine, settings_of(request), body, [prompt_ids], "messages", cap_param, request_id)
    tally = Tally(prompt_tokens=len(prompt_ids))
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
        reasoning = "".join(e.reasoning for e in evs)
        assert final.report is not None and final.finish_reason is not None
        choices.append(
            ChatChoice(
                index=index,
                message=AssistantMessage(
                    content="".join(e.answer for e in evs),
                    reasoning_content=None if job.hide_reasoning else reasoning,
                    reasoning=None if job.hide_reasoning else reasoning,
                ),
                finish_reason=final.finish_reason,
                budget=final.report,
            )
        )
    return ChatCompletionResponse(id=request_id, created=created, model=model, choices=choices, usage=tally.usage())


def _stream(
    request: Request, body: ChatCompletionRequest, model: str, request_id: str, created: int, job: Job, tally: Tally,
    engine: BudgetForcingEngine,
) -> AsyncIterator[str]:  # fmt: skip
    usage_on = body.include_usage

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> dict[str, Any]:
        c = ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
        out = c.model_dump(mode="json", exclude={"choices", "usage"})
        out["choices"] = [
            {
                "index": ch.index,
                "delta": ch.delta.model_dump(exclude_none=True),
                "logprobs": None,
                "finish_reason": ch.finish_reason,
                **({"budget": ch.budget.model_dump()} if ch.budget is not None else {}),
            }
            for ch in choices
        ]
        if usage_on:
            out["usage"] = usage.model_dump() if usage is not None else None
        return out

    def render(event: ChoiceEvent) -> list[dict[str, Any]]:
        out = []
        if event.reasoning and not job.hide_reasoning:
            delta = ChatDelta(reasoning_content=event.reasoning, reasoning=event.reasoning)
            out.append(chunk([ChatChunkChoice(index=event.index, delta=delta)]))
        if event.answer:
            out.append(chunk([ChatChunkChoice(index=event.index, delta=ChatDelta(content=event.answer))]))
        if event.finish_reason is not None:
            last = ChatChunkChoice(
                index=event.index, delta=ChatDelta(), finish_reason=event.finish_reason, budget=event.report
            )
            out.append(chunk([last]))
        return out

    opening = [
        chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))]) for i in range(job.choices)
    ]

    def closing() -> list[dict[str, Any]]:
        return [chunk([], tally.usage())] if usage_on else []

    return stream_events(request, ENDPOINT, engine, job, tally, render, opening, closing)
