"""`BudgetMiddleware`: thinking budgets on vLLM's own OpenAI-compatible server, as pure ASGI middleware.

    vllm serve MODEL --logits-processors budgetforce.vllm:BudgetForcing \\
        --middleware budgetforce.server.BudgetMiddleware --reasoning-parser deepseek_r1

(`budgetforce serve` adds both flags itself.) It touches only `POST /v1/chat/completions` and
`POST /v1/completions`: the request body is rewritten by `rewrite.prepare` (budget fields into
`vllm_xargs`, 400s before anything runs), and the response, full or streamed, is annotated by
`annotate.Annotator`. Everything else, and any request without a budget or stop strings, passes
through untouched, so the server is vLLM's, with every endpoint and feature it has.

A stream whose every choice a stop string has ended is closed early: the middleware tells vLLM's
response the client went away, which aborts the engine request, then ends the stream itself.

`budget_strategy: rounds` and early exit (`probe_*`) need engine requests of their own; the
middleware registers such a request with `orchestrate`, whose wrapper of vLLM's engine client runs
them when vLLM's route hands the request to the engine.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import random
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from budgetforce.core.budget import BudgetDefaults
from budgetforce.vllm.wire import BOARD_KEY_KEY, BOARD_NAME_KEY, NONCE_KEY
from budgetforce.server.annotate import Annotator, BoardRow
from budgetforce.server.metrics import record_rejection
from budgetforce.server.rewrite import Prepared, RequestError, ServedModel, prepare

log = logging.getLogger("budgetforce.server")
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
NO_BOARD_MESSAGE = (
    "early exit (`probe_every`) closes the thinking through the processor's stats board, which this server "
    "does not name: start it with `budgetforce serve`, or set `BUDGETFORCE_STATS_BOARD=NAME` in the "
    "environment of `vllm serve`"
)


class BudgetMiddleware:
    """The budget layer around vLLM's FastAPI app (see the module docstring).

    The served model's profile and tokenizer are loaded on the first budgeted request (in a
    thread) from the app's `vllm_config`; operator defaults come from `BUDGETFORCE_*` variables
    (`budgetforce.core.budget.BudgetDefaults`).
    """

    def __init__(self, app: ASGIApp, defaults: BudgetDefaults | None = None, model: ServedModel | None = None) -> None:
        self.app = app
        self.defaults = defaults if defaults is not None else BudgetDefaults()
        self._model = model
        self._lock = asyncio.Lock()
        self._auth: Any = False  # vLLM's key check, once known (None: no key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "") or "")
        endpoint = ENDPOINTS.get(path.rstrip("/"))
        if endpoint is None or not self._authorized(scope):
            await self.app(scope, receive, send)  # vLLM answers (404, 401, ...)
            return
        raw, disconnected = await _read_body(receive)
        if disconnected:
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        prepared: Prepared | None = None
        if isinstance(body, dict):
            try:
                prepared = prepare(body, endpoint, await self._served(scope), self.defaults)
            except RequestError as exc:
                record_rejection(exc.code)
                await _send_json(send, exc.status, exc.body())
                return
        if prepared is None:
            await self.app(scope, _replay(raw, receive), send)
            return
        stats: Any = None
        release: Any = None
        if prepared.budget is not None and prepared.annotate:
            if prepared.choices > 1 and prepared.body.get("seed") is None:
                # the processor tells the n choices apart by their seeds (seed, seed+1, ...)
                prepared.body["seed"] = random.getrandbits(31)
            if prepared.orchestrated:
                try:
                    stats, release = await self._orchestrate(scope, prepared)
                except RequestError as exc:
                    await _send_json(send, exc.status, exc.body())
                    return
            else:
                board = stats_board()
                if board is not None and prepared.choices == 1:
                    key, nonce = board.acquire()
                    stats, release = BoardRow(board, key, nonce), lambda: board.release(key)
                    xargs = prepared.body.setdefault("vllm_xargs", {})
                    xargs.update({BOARD_NAME_KEY: board.name, BOARD_KEY_KEY: key, NONCE_KEY: nonce})
        new = json.dumps(prepared.body, ensure_ascii=False).encode()
        scope = {**scope, "headers": _with_length(scope["headers"], len(new))}
        if not prepared.annotate:
            await self.app(scope, _replay(new, receive), send)
            return
        try:
            annotator = Annotator(prepared, await self._served(scope), stats)
            await _Exchange(self.app, prepared, annotator).run(scope, new, receive, send)
        finally:
            if release is not None:
                release()

    async def _orchestrate(self, scope: Scope, prepared: Prepared) -> tuple[Any, Any]:
        """Register a rounds or early-exit request with the layer's engine client (`orchestrate`); its
        nonce in `vllm_xargs` is how the route's engine call finds it. Returns (stats, release)."""
        from budgetforce.core.budget import Budget
        from budgetforce.vllm.engine import EngineSide
        from budgetforce.server import orchestrate

        client = getattr(getattr(scope.get("app"), "state", None), "engine_client", None)
        if client is None:  # a render-only front end, or a vLLM without the attribute
            param = "budget_strategy" if prepared.budget.strategy == "rounds" else "probe_every"
            raise RequestError("this server has no engine client for the budget layer's own engine requests", param,
                               code="unsupported_value", status=501)  # fmt: skip
        model = await self._served(scope)
        board = stats_board() if prepared.budget.probe_every is not None else None
        if prepared.budget.probe_every is not None and board is None:
            raise RequestError(NO_BOARD_MESSAGE, "probe_every", code="unsupported_value")
        side = EngineSide(orchestrate.install(client), model.tokenizer, model.profile.plan(Budget()), board)
        run = orchestrate.Orchestrated(prepared.budget, side, model.profile)
        nonce = random.getrandbits(62)
        prepared.body.setdefault("vllm_xargs", {})[NONCE_KEY] = nonce
        orchestrate.register(nonce, run)
        return run, lambda: orchestrate.unregister(nonce)

    # -- what the layer knows of the server -------------------------------------------------
    def _authorized(self, scope: Scope) -> bool:
        """False when vLLM will refuse the key anyway: let it answer 401 before any budget check."""
        if self._auth is False:
            self._auth = _key_check(scope)
        verify = getattr(self._auth, "verify_token", None)
        if verify is None:
            return True  # no key, or a vLLM whose check we cannot call: vLLM checks it after the budget
        from starlette.datastructures import Headers

        return bool(verify(Headers(scope=scope)))

    async def _served(self, scope: Scope) -> ServedModel:
        if self._model is None:
            async with self._lock:
                if self._model is None:
                    state = getattr(scope.get("app"), "state", None)
                    self._model = await asyncio.to_thread(served_model, state)
        return self._model


_BOARD: list[Any] = []


def stats_board() -> Any:
    """This API process's handle on the stats board `BUDGETFORCE_STATS_BOARD` (set by `budgetforce
    serve` before vLLM starts, so the engine accepts that name and no other; shared by every API
    server process), or None."""
    if not _BOARD:
        from budgetforce.vllm.stats_board import StatsBoard
        from budgetforce.vllm.wire import BOARD_ENV

        name = os.environ.get(BOARD_ENV)
        board = None
        if name:
            try:  # the first API server process creates it, the others (`--api-server-count`) attach
                board = StatsBoard.shared(name)
                atexit.register(board.close)
            except (OSError, ValueError) as exc:
                log.warning("budgetforce: stats board %s unavailable in this process (%r): waits_inserted is null", name, exc)
        _BOARD.append(board)
    return _BOARD[0]


def _key_check(scope: Scope) -> Any:
    """vLLM's `AuthenticationMiddleware` for the server's keys (`--api-key`, `VLLM_API_KEY`), or None."""
    from vllm import envs

    try:
        from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware
    except ImportError:
        try:  # vLLM <= 0.2x keeps it in the server module
            from vllm.entrypoints.openai.api_server import AuthenticationMiddleware  # type: ignore[no-redef]
        except ImportError:  # another layout: vLLM checks the key itself, after the budget
            return None
    args = getattr(getattr(scope.get("app"), "state", None), "args", None)
    tokens = [k for k in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if k]
    if isinstance(getattr(args, "api_key", None), str):
        tokens = [args.api_key]
    return AuthenticationMiddleware(None, tokens) if tokens else None  # type: ignore[arg-type]


def served_model(state: Any) -> ServedModel:
    """The served model's profile, tokenizer and limits, from the vLLM app's state (blocking: run in a thread)."""
    from transformers import AutoTokenizer

    from budgetforce.core.profile import detect_profile

    config = state.vllm_config.model_config
    name = config.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=getattr(config, "tokenizer_revision", None), trust_remote_code=config.trust_remote_code
    )
    # the layer checks room with the exact forced-end length before vLLM's frontend sees the request
    profile = detect_profile(tokenizer, str(config.model)).resolve(tokenizer)
    args = getattr(state, "args", None)
    return ServedModel(
        profile=profile,
        tokenizer=tokenizer,
        max_model_len=int(config.max_model_len),
        chat_fields=_fields("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        completion_fields=_fields("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
        reasoning_parser=_has_reasoning_parser(args),
        child_safe=_child_safe(state.vllm_config),
        effort_map=bool(getattr(args, "reasoning_effort_map", None)),  # vLLM >= 0.33
        completion_max_tokens=_completion_default(),
    )


def _has_reasoning_parser(args: Any) -> bool:
    structured = getattr(args, "structured_outputs_config", None)
    return bool(getattr(args, "reasoning_parser", None) or getattr(structured, "reasoning_parser", None))


def _fields(module: str, name: str) -> frozenset[str]:
    import importlib

    try:
        return frozenset(getattr(importlib.import_module(module), name).model_fields)
    except (ImportError, AttributeError):  # vLLM 0.26 keeps both in one module
        from vllm.entrypoints.openai import protocol

        return frozenset(getattr(protocol, name).model_fields)


def _completion_default() -> int | None:
    """vLLM's default `max_tokens` of a text completion (16 in vLLM 0.26 to 0.32)."""
    try:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    except ImportError:
        from vllm.entrypoints.openai.protocol import CompletionRequest  # type: ignore[no-redef]
    default = CompletionRequest.model_fields["max_tokens"].default
    return default if isinstance(default, int) else None


def _child_safe(vllm_config: Any) -> bool:
    """Whether the processor keeps one budget state per choice of an n > 1 request (see docs/vllm-serve.md).

    Both runners do: each choice reaches the engine with the request's nonce and its own seed, and the
    processor keys its state by the two. On runner V2 this was traced inside the engine on the H200
    (benchmarks/gpu/v2_children.py, benchmarks/results/2026-12-02-h200/v2-children/): the n = 3 choices
    equal three n = 1 requests with seeds seed, seed+1, seed+2, each forced to its maximum."""
    from budgetforce.vllm import wire

    del vllm_config  # the runner no longer matters; kept so the layer can refuse per engine again
    return bool(getattr(wire, "XARGS_CHILD_SAFE", False))


# -- ASGI plumbing ------------------------------------------------------------------------------
async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, stop: asyncio.Event | None = None) -> Receive:
    """The app's `receive`: the (rewritten) body once, then the client's messages; once ``stop`` is
    set, a disconnect, which makes vLLM abort its request (the budget layer ended the stream)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if stop is None:
            return await receive()
        if stop.is_set():
            return {"type": "http.disconnect"}
        real = asyncio.ensure_future(receive())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({real, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when vLLM stops listening (cancelled): leave no receive pending
            stopped.cancel()
            if not real.done():
                real.cancel()
        if not real.cancelled():
            return real.result()
        return {"type": "http.disconnect"}

    return replay


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    out.append((b"content-length", str(length).encode()))
    return out


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Exchange:
    """One annotated request: the rewritten body in, vLLM's response annotated out."""

    def __init__(self, app: ASGIApp, prepared: Prepared, annotator: Annotator) -> None:
        self.app = app
        self.p = prepared
        self.annotator = annotator
        self.stop_upstream = asyncio.Event()  # set: vLLM's response is told the client left (aborts it)
        self.closed = False  # the client's response has ended; vLLM's later messages are dropped
        self.passthrough = False  # vLLM answered with an error: sent as it wrote it
        self.start: Message | None = None
        self.streaming = False
        self.parts: list[bytes] = []
        self.pending = b""
        self.lean = False  # a streamed 200 whose plain chunks `Annotator.plain_event` rewrites

    async def run(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        self.send = send
        try:
            await self.app(scope, _replay(body, receive, self.stop_upstream), self._send)
        except Exception:
            if not self.closed:
                raise
            log.debug("vLLM's response ended after the budget layer closed the stream", exc_info=True)

    async def _send(self, message: Message) -> None:
        if self.closed:
            return
        kind = message["type"]
        if self.lean and kind == "http.response.body" and not self.pending:
            # vLLM writes one event a message: a plain middle chunk is rewritten as bytes and sent on
            body = message.get("body", b"")
            if body.startswith(b"data: ") and body.endswith(b"\n\n") and body.count(b"\n\n") == 1:
                plain = self.annotator.plain_event(body[6:-2])
                if plain:
                    await self.send({**message, "body": b"data: " + plain + b"\n\n"})
                if plain is not None:
                    return
        if kind == "http.response.start":
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            if message["status"] != 200:
                self.passthrough = True
                await self.send(message)
                return
            if self.streaming:
                self.lean = self.annotator.lean  # most chunks of a budgeted stream: rewritten as bytes, not parsed
                await self.send(message)
            else:
                self.start = message
            return
        if kind != "http.response.body" or self.passthrough:
            await self.send(message)
            return
        more = message.get("more_body", False)
        if self.streaming:
            await self._stream_body(message.get("body", b""), more)
            return
        self.parts.append(message.get("body", b""))
        if more:
            return
        raw = b"".join(self.parts)
        try:
            out = _encode(self.annotator.json_body(_decode(raw)))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.exception("budgetforce: could not annotate a response; sent as vLLM wrote it")
            out = raw
        assert self.start is not None
        headers = _with_length(list(self.start.get("headers") or []), len(out))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": out, "more_body": False})

    async def _stream_body(self, data: bytes, more: bool) -> None:
        self.pending += data
        *events, self.pending = self.pending.split(b"\n\n")
        out: list[bytes] = []
        for event in events:
            out.extend(self._event(event))
            if self.annotator.all_done and not self.closed and self._done_early():
                out.extend(self._closing())
                break
        if out:
            await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        if self.closed:
            self.stop_upstream.set()  # vLLM's StreamingResponse sees a disconnect and aborts the request
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not more:
            if self.pending:
                await self.send({"type": "http.response.body", "body": self.pending, "more_body": True})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            self.closed = True

    def _done_early(self) -> bool:
        """Every choice ended by a stop string while vLLM still generates: end the stream here."""
        return any(st.cutter is not None and st.cutter.matched for st in self.annotator.choices.values())

    def _closing(self) -> list[bytes]:
        self.closed = True
        chunks = [*self.annotator.closing_chunks(), *self.annotator.vote_chunks()]
        return [_sse(c) for c in chunks] + [b"data: [DONE]\n\n"]

    def _event(self, event: bytes) -> list[bytes]:
        if not event.startswith(b"data: "):
            return [event + b"\n\n"]  # comments (keep-alives) and anything else, as they came
        data = event[len(b"data: ") :]
        if data.strip() == b"[DONE]":
            return [*(_sse(c) for c in self.annotator.vote_chunks()), event + b"\n\n"]
        try:
            chunk = _decode(data)
        except ValueError:
            return [event + b"\n\n"]
        if not isinstance(chunk, dict) or "error" in chunk:
            return [event + b"\n\n"]
        annotated = self.annotator.chunk(chunk)
        return [] if annotated is None else [_sse(annotated)]


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"


# A budgeted response's chunks that are not plain (`Annotator.plain_event` rewrites those as bytes) are
# parsed and written again by the API server, which is the bottleneck of a loaded GPU server: msgspec
# does both several times faster than `json`
# (benchmarks/layer_cost.py). `json` stays for what msgspec cannot read (NaN, Infinity: not JSON, and
# vLLM never writes them) or write (integers beyond 64 bits); a non-finite float goes out as null,
# as vLLM's own pydantic models write it.
_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def _decode(data: bytes) -> Any:
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError:
        return json.loads(data)  # a ValueError for what is no JSON at all


def _encode(obj: Any) -> bytes:
    try:
        return _ENCODER.encode(obj)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
