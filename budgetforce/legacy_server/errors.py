"""OpenAI's error shape for every failure: `{"error": {"message", "type", "param", "code"}}`.

Client mistakes are 4xx with `param` naming the field; only our own faults are 5xx, and those
never carry a traceback (it goes to the log).
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from budgetforce.budget import BudgetError
from budgetforce.engine import EngineDeadError, GenerationFailed
from budgetforce.profile import ProfileError
from budgetforce.legacy_server.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error with its HTTP status, raised by handlers and turned into OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            message=self.message, type=ERROR_TYPES.get(self.status, "server_error"), param=self.param, code=self.code
        )

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.info()).model_dump(), status_code=self.status, headers=headers)


def from_exception(exc: BaseException) -> APIError:
    """The API error for anything raised while serving a request (used mid-stream too)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BudgetError):
        return APIError(400, str(exc), param=exc.param, code="invalid_budget")
    if isinstance(exc, ProfileError):
        return APIError(400, str(exc), code="invalid_budget")
    if _is_vllm_client_error(exc):
        return APIError(400, str(exc), param=getattr(exc, "parameter", None), code="invalid_request")
    if isinstance(exc, EngineDeadError):
        return APIError(503, "the engine has stopped; the server needs a restart", code="engine_dead")
    if isinstance(exc, GenerationFailed):
        log.error("generation ended by vLLM with finish reason %s", exc.reason)
        code = "generation_aborted" if exc.reason == "abort" else "generation_failed"
        return APIError(500, f"{exc}; no answer was produced", code=code)
    log.error("internal error", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", code="internal_error")


def _is_vllm_client_error(exc: BaseException) -> bool:
    return isinstance(exc, vllm_client_errors())


@cache
def vllm_client_errors() -> tuple[type[BaseException], ...]:
    """vLLM's exception classes for a bad request, whichever the installed release has.

    vLLM 0.32 has `VLLMClientError`; 0.26 has only `VLLMValidationError` (a `ValueError`).
    """
    try:
        from vllm.exceptions import VLLMClientError

        return (VLLMClientError,)
    except ImportError:
        pass
    try:
        from vllm.exceptions import VLLMValidationError

        return (VLLMValidationError,)
    except ImportError:
        return ()


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route, so the OpenAPI spec documents its errors."""
    return {s: {"model": ErrorResponse, "description": ERROR_TYPES.get(s, "server_error")} for s in statuses}


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_label(part: Any) -> bool:
    """Whether a loc part names a union member (`str`, `list[int]`, `function-after[...]`), not a field."""
    return isinstance(part, str) and (not part.isidentifier() or part in TYPE_LABELS)


def validation_error(exc: RequestValidationError) -> APIError:
    """The first validation problem as a 400 naming its field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    err = errors[0]
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError(400, f"malformed JSON body: {detail}".rstrip(": "), code="invalid_json")
    loc = tuple(err.get("loc", ()))
    union_at = next((i for i, part in enumerate(loc) if _is_label(part)), None)
    param = _param(loc if union_at is None else loc[:union_at])
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    cause = (err.get("ctx") or {}).get("error")
    if getattr(cause, "param", None):  # a cross-field rule names its own field
        param = f"{param}.{cause.param}" if param else cause.param
        return APIError(400, msg, param=param, code="invalid_value")
    if union_at is not None:  # every member of a union failed: say why for a few of them
        same = [e for e in errors if tuple(e.get("loc", ()))[:union_at] == loc[:union_at]]
        reasons = list(dict.fromkeys(str(e.get("msg", "")) for e in same))[:3]
        return APIError(
            400, f"`{param}` fits none of its accepted forms: {'; '.join(reasons)}", param=param, code="invalid_value"
        )
    if kind == "missing":
        message = f"`{param}` is required"
    elif kind == "model_attributes_type" and param is None:
        message = "the request body must be a JSON object"
    else:
        shown = _short(err.get("input"))
        message = f"`{param}`: {msg} (got {shown})" if param else msg
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return APIError(400, message + more, param=param, code="invalid_value")


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install(app: FastAPI) -> None:
    """Register the handlers that give every failure OpenAI's shape."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return exc.response({"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message).response(getattr(exc, "headers", None))

    @app.exception_handler(BudgetError)
    async def _budget(request: Request, exc: BudgetError) -> JSONResponse:
        return from_exception(exc).response()

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return from_exception(exc).response()

    @app.exception_handler(GenerationFailed)
    async def _failed(request: Request, exc: GenerationFailed) -> JSONResponse:
        return from_exception(exc).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()
