"""What every generation route shares: the engine, the model check, SSE, and disconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request

from budgetforce.engine import BudgetForcingEngine
from budgetforce.legacy_server.errors import APIError, from_exception
from budgetforce.legacy_server.generation import ChoiceEvent, Job, Tally, record, run
from budgetforce.legacy_server.metrics import Metrics
from budgetforce.legacy_server.protocol import ErrorResponse, OpenAIModel
from budgetforce.legacy_server.settings import ServerSettings

log = logging.getLogger("budgetforce.server")
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def engine_of(request: Request) -> BudgetForcingEngine:
    engine: BudgetForcingEngine | None = request.app.state.engine
    if engine is None or engine.is_dead:
        raise APIError(503, "the engine is not running", code="engine_unavailable")
    return engine


def settings_of(request: Request) -> ServerSettings:
    return request.app.state.settings


def metrics_of(request: Request) -> Metrics:
    return request.app.state.metrics


def check_model(request: Request, body: OpenAIModel, model: str | None) -> str:
    """The served model id; 404 for any other name."""
    served = request.app.state.model_id
    if model is not None and model != served:
        raise APIError(
            404, f"the model `{model}` does not exist; this server serves `{served}`", "model", "model_not_found"
        )
    if body.ignored_fields:
        log.warning("ignored unknown request fields: %s", ", ".join(body.ignored_fields))
    return served


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless the client goes away first, in which case it is cancelled (None).

    The body has been read already, so the only message left to receive is the disconnect.
    """
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(
    request: Request, endpoint: str, engine: BudgetForcingEngine, job: Job, tally: Tally
) -> dict[int, list[ChoiceEvent]] | None:
    """All events of a non-streamed request, grouped by choice; None if the client left."""

    async def gather() -> dict[int, list[ChoiceEvent]]:
        out: dict[int, list[ChoiceEvent]] = {i: [] for i in range(job.choices)}
        async for event in run(engine, job):
            tally.add(event)
            out[event.index].append(event)
        return out

    metrics = metrics_of(request)
    metrics.running.inc()
    outcome = "error"
    try:
        result = await until_disconnect(request, gather())
        outcome = "ok" if result is not None else "aborted"
        return result
    finally:
        metrics.running.dec()
        record(metrics, settings_of(request), endpoint, job, tally, outcome)


async def stream_events(
    request: Request,
    endpoint: str,
    engine: BudgetForcingEngine,
    job: Job,
    tally: Tally,
    render: Callable[[ChoiceEvent], list[dict[str, Any]]],
    opening: list[dict[str, Any]],
    closing: Callable[[], list[dict[str, Any]]],
) -> AsyncIterator[str]:
    """SSE lines: ``opening`` chunks, one or more chunks per event, ``closing`` chunks, `[DONE]`.

    A failure mid-stream is sent as `data: {"error": ...}`; a client that goes away cancels the
    generator (Starlette), which cancels every engine request of the job.
    """
    metrics = metrics_of(request)
    metrics.running.inc()
    outcome = "aborted"
    try:
        for chunk in opening:
            yield sse(chunk)
        async for event in run(engine, job):
            tally.add(event)
            for chunk in render(event):
                yield sse(chunk)
        for chunk in closing():
            yield sse(chunk)
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure becomes an SSE error event
        outcome = "error"
        yield sse(ErrorResponse(error=from_exception(exc).info()).model_dump())
    finally:
        metrics.running.dec()
        record(metrics, settings_of(request), endpoint, job, tally, outcome)
    yield sse("[DONE]")
