"""Pure ASGI middleware (streams and disconnects pass through untouched): auth, body size, metrics."""

from __future__ import annotations

import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from budgetforce.legacy_server.errors import APIError
from budgetforce.legacy_server.metrics import Metrics

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/models": "models",
    "/health": "health",
    "/metrics": "metrics",
}


async def _reply(send: Send, error: APIError, headers: dict[str, str] | None = None) -> None:
    response = error.response(headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never receives
    return {"type": "http.disconnect"}


class RequireAPIKey:
    """`Authorization: Bearer <key>` on every /v1 route; health, metrics and the docs stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                message = "missing API key" if not given else "invalid API key"
                error = APIError(401, f"{message}; send `Authorization: Bearer <key>`", code="invalid_api_key")
                await _reply(send, error, {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


class LimitBody:
    """Reads a request body up to ``max_bytes`` (413 beyond), then replays it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, APIError(400, "invalid Content-Length header"))
                return
            if size > self.max_bytes:
                await _reply(send, self._too_large(size))
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await _reply(send, self._too_large(total))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> APIError:
        return APIError(
            413, f"the request body ({size} bytes or more) exceeds this server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )  # fmt: skip


class CountRequests:
    """Requests by endpoint and status, and their latency to the last byte (streams included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = ENDPOINTS.get(scope["path"].rstrip("/") or "/", "other")
        status: dict[str, Any] = {"code": 500}
        start = time.perf_counter()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            if endpoint in ("chat", "completions"):
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
