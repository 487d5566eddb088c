"""Every invalid request gets a 4xx in OpenAI's error shape, never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from budgetforce.engine import Delta
from budgetforce.legacy_server.app import build_app
from budgetforce.legacy_server.settings import ServerSettings

pytestmark = pytest.mark.server
HELLO = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["message"] and isinstance(error["type"], str)
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


CHAT_CASES = [
    # wrong types
    ({"messages": "hi"}, "messages"),
    ({"messages": HELLO, "max_completion_tokens": "ten"}, "max_completion_tokens"),
    ({"messages": HELLO, "min_thinking_tokens": 1.5}, "min_thinking_tokens"),
    ({"messages": HELLO, "max_thinking_tokens": "many"}, "max_thinking_tokens"),
    ({"messages": HELLO, "wait_strings": "Wait"}, "wait_strings"),
    ({"messages": HELLO, "wait_strings": [""]}, "wait_strings[0]"),
    ({"messages": HELLO, "budget_strategy": "fast"}, "budget_strategy"),
    ({"messages": HELLO, "stream": "yes"}, "stream"),
    ({"messages": HELLO, "temperature": 3}, "temperature"),
    ({"messages": HELLO, "top_p": 0}, "top_p"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": HELLO, "seed": 2**64}, "seed"),
    ({"messages": HELLO, "stop": [""]}, "stop"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    # negative or inverted budgets
    ({"messages": HELLO, "min_thinking_tokens": -1}, "min_thinking_tokens"),
    ({"messages": HELLO, "max_thinking_tokens": -5}, "max_thinking_tokens"),
    ({"messages": HELLO, "max_waits": -1}, "max_waits"),
    ({"messages": HELLO, "min_thinking_tokens": 10, "max_thinking_tokens": 5}, "min_thinking_tokens"),
    ({"messages": HELLO, "thinking_token_budget": -2}, "thinking_token_budget"),
    ({"messages": HELLO, "thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": -1}}, "thinking.budget_tokens"),
    ({"messages": HELLO, "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"messages": HELLO, "reasoning": {"enabled": False, "max_tokens": 10}}, "reasoning.enabled"),
    ({"messages": HELLO, "reasoning_effort": "ultra"}, "reasoning_effort"),
    ({"messages": HELLO, "reasoning": {"effort": "maximum"}}, "reasoning.effort"),
    # a budget at or above the total token cap
    ({"messages": HELLO, "max_completion_tokens": 10, "max_thinking_tokens": 10}, "max_thinking_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 10, "max_thinking_tokens": 9}, "max_thinking_tokens"),
    ({"messages": HELLO, "max_tokens": 8, "min_thinking_tokens": 8}, "min_thinking_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 10, "thinking_token_budget": 12}, "thinking_token_budget"),
    ({"messages": HELLO, "max_completion_tokens": 10, "reasoning": {"max_tokens": 10}}, "reasoning.max_tokens"),
    (
        {"messages": HELLO, "max_tokens": 6, "thinking": {"type": "enabled", "budget_tokens": 6}},
        "thinking.budget_tokens",
    ),
    ({"messages": HELLO, "max_completion_tokens": 100000}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "apples " * 2000}]}, "messages"),
    # conflicting or unsupported fields
    ({"messages": HELLO, "max_completion_tokens": 10, "max_tokens": 20}, "max_tokens"),
    ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": HELLO, "logprobs": True}, "logprobs"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": HELLO, "response_format": {"type": "json_object"}}, "response_format.type"),
    ({"messages": HELLO, "max_completion_tokens": 5, "min_tokens": 6}, "min_tokens"),
    ({"messages": HELLO, "min_tokens": 5000}, "min_tokens"),  # vLLM's own check, at the edge
    # a misspelled budget field is not ignored (the request would run with no budget)
    ({"messages": HELLO, "max_thinking_token": 5}, "max_thinking_token"),
    ({"messages": HELLO, "min_thinking": 5}, "min_thinking"),
    ({"messages": HELLO, "max_wait": 1}, "max_wait"),
    ({"messages": HELLO, "thinking_budget": 8}, "thinking_budget"),
]


@pytest.mark.parametrize(("body", "param"), CHAT_CASES, ids=[f"chat{i}" for i in range(len(CHAT_CASES))])
def test_chat_rejects(live_server_url: str, body: dict[str, Any], param: str | None) -> None:
    for stream in (False, True):
        sent = {**body, "stream": True} if stream and "stream" not in body and "stream_options" not in body else body
        r = httpx.post(f"{live_server_url}/chat/completions", json=sent, timeout=30)
        assert_error(r, 400, param)


COMPLETION_CASES = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": "hi", "echo": True}, "echo"),
    ({"prompt": "hi", "suffix": "x"}, "suffix"),
    ({"prompt": "hi", "max_tokens": 4, "max_thinking_tokens": 4}, "max_thinking_tokens"),
    ({"prompt": "hi", "n": 65}, "n"),
    ({"prompt": ["a"] * 40, "n": 2}, "n"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "hi", "max_thinking_token": 5}, "max_thinking_token"),
    ({"prompt": "hi", "wait_string": ["Hmm"]}, "wait_string"),
]


@pytest.mark.parametrize(("body", "param"), COMPLETION_CASES, ids=[f"cmpl{i}" for i in range(len(COMPLETION_CASES))])
def test_completions_reject(live_server_url: str, body: dict[str, Any], param: str) -> None:
    assert_error(httpx.post(f"{live_server_url}/completions", json=body, timeout=30), 400, param)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [',
        b"not json",
        b"",
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"messages": [{"role": "user", "content": "\xff"}]}',
    ],
)
def test_malformed_bodies_are_400(live_server_url: str, raw: bytes) -> None:
    r = httpx.post(f"{live_server_url}/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_unknown_model_is_404(live_server_url: str) -> None:
    r = httpx.post(f"{live_server_url}/chat/completions", json={"model": "gpt-5", "messages": HELLO})
    assert_error(r, 404, "model", "model_not_found")
    assert_error(httpx.post(f"{live_server_url}/completions", json={"model": "x", "prompt": "hi"}), 404, "model")
    assert_error(httpx.get(f"{live_server_url}/models/gpt-5"), 404, "model")


def test_oversized_body_is_413(live_server_url: str) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (1 << 20)}]}).encode()
    assert_error(httpx.post(f"{live_server_url}/chat/completions", content=big), 413, code="request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"a" * (64 << 10)
        yield b'"}]}'

    assert_error(httpx.post(f"{live_server_url}/chat/completions", content=chunks()), 413)


@pytest.mark.parametrize(
    ("path", "body", "typo", "meant"),
    [
        ("chat/completions", {"messages": HELLO}, "max_thinking_token", "max_thinking_tokens"),
        ("chat/completions", {"messages": HELLO}, "min_thinking", "min_thinking_tokens"),
        ("chat/completions", {"messages": HELLO}, "max_wait", "max_waits"),
        ("chat/completions", {"messages": HELLO}, "budget_stratgy", "budget_strategy"),
        ("completions", {"prompt": "hi"}, "answer_prefx", "answer_prefix"),
        ("completions", {"prompt": "hi"}, "thinking_tokens_budget", "thinking_token_budget"),
    ],
)
def test_misspelled_budget_field_names_the_field_it_resembles(
    live_server_url: str, path: str, body: dict[str, Any], typo: str, meant: str
) -> None:
    r = httpx.post(f"{live_server_url}/{path}", json={**body, typo: 8, "max_tokens": 16, "seed": 0}, timeout=30)
    error = assert_error(r, 400, typo, "invalid_value")
    assert f"`{meant}`" in error["message"] and f"`{typo}`" in error["message"], error


def test_unknown_fields_are_ignored_and_unknown_routes_404(live_server_url: str) -> None:
    unrelated = {"metadata": {"a": 1}, "store": False, "whatever": [1], "max_new_tokens": 4, "strategy": "x"}
    ok = httpx.post(
        f"{live_server_url}/chat/completions",
        json={"messages": HELLO, "max_completion_tokens": 4, "seed": 0, **unrelated},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    # OpenAI's chat cap sent to /v1/completions resembles `max_thinking_tokens` but is no typo of it
    text = httpx.post(
        f"{live_server_url}/completions",
        json={"prompt": "hi", "max_tokens": 4, "max_completion_tokens": 4, "seed": 0, **unrelated},
        timeout=30,
    )
    assert text.status_code == 200, text.text
    assert_error(httpx.get(f"{live_server_url}/nothing"), 404)
    assert_error(httpx.get(f"{live_server_url}/chat/completions"), 405)


def test_server_limit_on_budgets(loop: asyncio.AbstractEventLoop, engine: Any) -> None:
    settings = ServerSettings(served_model_name="tiny", max_thinking_tokens_limit=16, default_max_thinking_tokens=8)
    with serve(loop, build_app(settings, engine=engine)) as url:
        too_big = httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO, "thinking_token_budget": 17})
        assert_error(too_big, 400, "thinking_token_budget")
        assert_error(httpx.post(f"{url}/v1/chat/completions", json={"messages": HELLO, "min_thinking_tokens": 20}), 400)
        # The minimum pins the outcome (a random model may close its thinking on its own before 8);
        # the maximum is the server's default: `forced_end` says it was applied.
        default = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": HELLO, "max_completion_tokens": 30, "min_thinking_tokens": 8, "seed": 0},
            timeout=30,
        )
        budget = default.json()["choices"][0]["budget"]
        assert budget["thinking_tokens"] == 8 and budget["forced_end"] is True, budget
        for effort in ({"reasoning_effort": "high"}, {"reasoning_effort": "xhigh"}, {"reasoning": {"effort": "max"}}):
            body = {"messages": HELLO, "max_completion_tokens": 30, "seed": 0, **effort}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            assert r.json()["choices"][0]["budget"]["thinking_tokens"] == 16, effort  # the table's min and max, capped


# -- auth ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(loop: asyncio.AbstractEventLoop, app: Any) -> Iterator[str]:
    """Another uvicorn on the engine's loop, for apps with other settings."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    done = asyncio.run_coroutine_threadsafe(server.serve(), loop)
    deadline = time.time() + 30
    while not server.started:
        assert not done.done() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        done.result(timeout=30)


def test_api_key(loop: asyncio.AbstractEventLoop, engine: Any) -> None:
    from openai import AuthenticationError, OpenAI

    app = build_app(ServerSettings(served_model_name="tiny", api_key="sk-test"), engine=engine)
    with serve(loop, app) as url:
        body = {"messages": HELLO, "max_completion_tokens": 4, "seed": 0}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-test"}):
            error = assert_error(httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers), 401)
            assert error["code"] == "invalid_api_key"
            assert_error(httpx.get(f"{url}/v1/models", headers=headers), 401)
        # even a malformed body is refused for want of a key first
        assert_error(httpx.post(f"{url}/v1/chat/completions", content=b"{"), 401)
        good = {"Authorization": "Bearer sk-test"}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=good, timeout=30).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # open
        assert httpx.get(f"{url}/metrics").status_code == 200  # open
        assert OpenAI(base_url=f"{url}/v1", api_key="sk-test").models.list().data[0].id == "tiny"
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


# -- a generation that vLLM aborts --------------------------------------------------------------
# ~900 tokens (seconds on the CPU) unless aborted; the minimum keeps the thinking going.
LONG = {"max_tokens": 900, "min_thinking_tokens": 880, "max_thinking_tokens": 890, "seed": 0}


def _abort_when_running(engine: Any, run: Callable) -> None:
    """Abort inside vLLM, as it does on its own (a failed KV transfer, a drain), the one request it runs."""
    processor = engine.llm.output_processor
    deadline = time.monotonic() + 60
    while processor.get_num_unfinished_requests() != 1:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.01)
    run(engine.llm.abort(list(processor.request_states), internal=True))


def test_aborted_generation_is_a_500(live_server_url: str, engine: Any, run: Callable) -> None:
    with ThreadPoolExecutor(1) as pool:
        body = {**LONG, "messages": HELLO}
        pending = pool.submit(httpx.post, f"{live_server_url}/chat/completions", json=body, timeout=120)
        _abort_when_running(engine, run)
        error = assert_error(pending.result(), 500, code="generation_aborted")
    assert error["type"] == "server_error" and "abort" in error["message"]


def test_aborted_stream_ends_with_an_error_event(live_server_url: str, engine: Any, run: Callable) -> None:
    with (
        httpx.Client(timeout=120) as http,
        http.stream("POST", f"{live_server_url}/completions", json={**LONG, "prompt": "hi", "stream": True}) as r,
    ):
        assert r.status_code == 200
        _abort_when_running(engine, run)
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert set(error) == {"error"} and error["error"]["code"] == "generation_aborted", error
    assert all(c["finish_reason"] is None for e in events[:-2] for c in json.loads(e)["choices"])


def test_failed_finish_reasons_are_5xx_not_stop() -> None:
    """vLLM's `error` (a KV load failure, ...) cannot be produced cheaply on the CPU: the mapping itself."""
    from budgetforce.engine import GenerationFailed, _finish
    from budgetforce.legacy_server.errors import from_exception

    assert [_finish(r) for r in ("stop", "length", "repetition")] == ["stop", "length", "stop"]
    for reason, code in (("abort", "generation_aborted"), ("error", "generation_failed")):
        with pytest.raises(GenerationFailed) as failed:
            _finish(reason)
        error = from_exception(failed.value)
        assert (error.status, error.code, error.info().type) == (500, code, "server_error")


# -- engine failures (a fake engine: no vLLM needed) ----------------------------------------------
class FakeEngine:
    """Just enough of `BudgetForcingEngine` for the server; `stream` fails after ``good`` deltas."""

    model_name = "fake"
    max_model_len = 128

    def __init__(self, dead: bool = False, good: int = 1) -> None:
        from budgetforce.profile import PRESETS

        self.is_dead = dead
        self.good = good
        self.profile = SimpleNamespace(
            plan=lambda budget: SimpleNamespace(forced_end_length=1), profile=PRESETS["generic"]
        )

    def prompt_ids(self, prompt: Any) -> list[int]:
        return [1, 2, 3]

    def plan(self, budget: Any, max_tokens: Any) -> None:
        return None

    async def stream(
        self, prompt: Any, budget: Any = None, request_id: str | None = None, **sampling: Any
    ) -> AsyncIterator[Delta]:
        for _ in range(self.good):
            yield Delta(reasoning="thinking", token_ids=(5,))
        raise RuntimeError("/secret/path/engine.py exploded")


async def _call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


def test_dead_engine_is_503() -> None:
    app = build_app(ServerSettings(served_model_name="fake"), engine=FakeEngine(dead=True))  # type: ignore[arg-type]
    assert_error(asyncio.run(_call(app, "GET", "/health")), 503, code="engine_unavailable")
    assert_error(asyncio.run(_call(app, "POST", "/v1/chat/completions", json={"messages": HELLO})), 503)
    assert asyncio.run(_call(app, "GET", "/metrics")).status_code == 200


def test_engine_failure_is_a_500_without_details() -> None:
    app = build_app(ServerSettings(served_model_name="fake"), engine=FakeEngine())  # type: ignore[arg-type]
    r = asyncio.run(_call(app, "POST", "/v1/chat/completions", json={"messages": HELLO}))
    error = assert_error(r, 500, code="internal_error")
    assert "secret" not in error["message"] and error["type"] == "server_error"


def test_mid_stream_failure_is_an_sse_error() -> None:
    app = build_app(ServerSettings(served_model_name="fake"), engine=FakeEngine(good=2))  # type: ignore[arg-type]
    r = asyncio.run(_call(app, "POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}))
    assert r.status_code == 200
    events = [line[len("data: ") :] for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert set(error) == {"error"} and error["error"]["code"] == "internal_error"
    assert "secret" not in error["error"]["message"]
    reasoning = [json.loads(e)["choices"][0]["delta"].get("reasoning_content") for e in events[1:-2]]
    assert reasoning == ["thinking", "thinking"]
