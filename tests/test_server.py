"""The live server with the real `openai` SDK and raw httpx: budgets, splitting, usage, streaming.

The tiny model's weights are random, so its thinking practically never closes by itself: the
budget's maximum is what ends it, which makes the counts below exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import OpenAI

pytestmark = pytest.mark.server
MESSAGES = [{"role": "user", "content": "Each bag has 3 apples. How many apples are in 4 bags?"}]


@pytest.fixture(scope="module")
def client(live_server_url: str) -> OpenAI:
    return OpenAI(base_url=live_server_url, api_key="unused", max_retries=0, timeout=120)


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body strictly: only `data:` lines, each followed by a blank line."""
    lines = response.text.split("\n")
    events: list[Any] = []
    assert lines[-2:] == ["", ""], "the stream must end with a blank line"
    for i in range(0, len(lines) - 1, 2):
        assert lines[i].startswith("data: ") and lines[i + 1] == "", (i, lines[i : i + 2])
        data = lines[i][len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_models_and_health(client: OpenAI, live_server: str) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{live_server}/health").json() == {"status": "ok"}
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_with_budget(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=40, seed=3, temperature=0.8,
        extra_body={"min_thinking_tokens": 4, "max_thinking_tokens": 12},
    )  # fmt: skip
    choice = out.choices[0]
    extra = choice.message.model_extra or {}
    budget = choice.model_extra["budget"]
    assert extra["reasoning_content"] == extra["reasoning"] and extra["reasoning_content"]
    assert 4 <= budget["thinking_tokens"] <= 12 and budget["strategy"] == "engine"
    assert budget["forced_end"] is (budget["thinking_tokens"] == 12)
    usage = out.usage
    assert usage.completion_tokens_details.reasoning_tokens == budget["thinking_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens <= 40
    assert choice.finish_reason in ("stop", "length")
    assert (choice.finish_reason == "length") is (usage.completion_tokens == 40)


def test_split_and_usage_match_the_engine(client: OpenAI, engine: Any, run: Callable) -> None:
    """Same seed through the server and straight through the engine: same ids, same split."""
    from budgetforce.budget import Budget

    budget = Budget(max_thinking_tokens=10)
    direct = run(engine.generate(MESSAGES, budget, max_tokens=30, seed=11, temperature=0.7))
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=30, seed=11, temperature=0.7,
        extra_body={"max_thinking_tokens": 10},
    )  # fmt: skip
    message = out.choices[0].message
    assert message.model_extra["reasoning_content"] == direct.reasoning
    assert message.content == direct.answer
    assert out.usage.prompt_tokens == direct.prompt_tokens == len(engine.prompt_ids(MESSAGES))
    assert out.usage.completion_tokens == len(direct.token_ids)
    assert out.usage.completion_tokens_details.reasoning_tokens == len(direct.reasoning_token_ids) == 10
    # The split is at the delimiter: the reasoning ids decode to the reasoning, `</think>` is in neither.
    think_end = engine.profile.think_end
    i = direct.token_ids.index(think_end[0])
    assert direct.reasoning_token_ids == direct.token_ids[:i]
    assert direct.answer_token_ids == direct.token_ids[i + len(think_end) :]
    assert engine.tokenizer.decode(direct.reasoning_token_ids, skip_special_tokens=True) == direct.reasoning
    assert "</think>" not in message.content + direct.reasoning


def test_stream_equals_non_stream(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "tiny", "messages": MESSAGES, "max_completion_tokens": 48, "seed": 7, "temperature": 0.9,
        "extra_body": {"min_thinking_tokens": 6, "max_thinking_tokens": 20},
    }  # fmt: skip
    full = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    reasoning, content, finish, budget, usage = [], [], None, None, None
    seen_content = False
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            delta = c.delta.model_extra or {}
            if delta.get("reasoning_content"):
                assert not seen_content, "reasoning deltas come before content deltas"
                assert delta["reasoning"] == delta["reasoning_content"]
                reasoning.append(delta["reasoning_content"])
            if c.delta.content:
                seen_content = True
                content.append(c.delta.content)
            if c.finish_reason:
                finish, budget = c.finish_reason, c.model_extra["budget"]
    message = full.choices[0].message
    assert "".join(reasoning) == message.model_extra["reasoning_content"]
    assert "".join(content) == message.content
    assert finish == full.choices[0].finish_reason
    assert budget == full.choices[0].model_extra["budget"]
    assert usage is not None and usage.model_dump() == full.usage.model_dump()


def test_n_choices_use_seed_plus_index(client: OpenAI) -> None:
    common: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 16, "temperature": 1.0}
    many = client.chat.completions.create(**common, n=3, seed=100, extra_body={"max_thinking_tokens": 6})
    assert [c.index for c in many.choices] == [0, 1, 2]
    for c in many.choices:
        one = client.chat.completions.create(**common, seed=100 + c.index, extra_body={"max_thinking_tokens": 6})
        assert one.choices[0].message.content == c.message.content
        assert one.choices[0].message.model_extra["reasoning"] == c.message.model_extra["reasoning"]
    assert many.usage.completion_tokens_details.reasoning_tokens == 18


@pytest.mark.parametrize(
    ("extra", "thinking", "hidden"),
    [
        ({"thinking_token_budget": 7}, 7, False),
        ({"thinking_token_budget": -1, "max_thinking_tokens": 5}, 5, False),
        ({"max_thinking_tokens": 4, "thinking_token_budget": 9, "reasoning_effort": "high"}, 4, False),
        ({"thinking": {"type": "enabled", "budget_tokens": 6}}, 6, False),
        ({"thinking": {"type": "disabled"}}, 0, False),
        ({"reasoning": {"max_tokens": 5, "exclude": True}}, 5, True),
        ({"reasoning": {"enabled": False}}, 0, False),
        ({"reasoning_effort": "none"}, 0, False),
        ({"reasoning_effort": "low"}, 22, False),  # the table's 1024 shrunk to fit 24 tokens
        ({"reasoning_effort": "xhigh"}, 22, False),  # the table's 2048..32768, shrunk: min = max
        ({"reasoning": {"effort": "max"}}, 22, False),
        ({"include_reasoning": False, "max_thinking_tokens": 3}, 3, True),
    ],
)
def test_compatible_budget_fields(client: OpenAI, extra: dict[str, Any], thinking: int, hidden: bool) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=24, temperature=0, extra_body=extra
    )
    choice = out.choices[0]
    assert choice.model_extra["budget"]["thinking_tokens"] == thinking
    assert out.usage.completion_tokens_details.reasoning_tokens == thinking
    message = choice.message.model_extra or {}
    if hidden:
        assert message.get("reasoning_content") is None and message.get("reasoning") is None
    else:
        assert (message["reasoning_content"] == "") is (thinking == 0)


def test_rounds_strategy(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=24, temperature=0,
        extra_body={"max_thinking_tokens": 8, "budget_strategy": "rounds"},
    )  # fmt: skip
    assert out.choices[0].model_extra["budget"] == {
        "thinking_tokens": 8, "waits_inserted": 0, "forced_end": True, "strategy": "rounds",
    }  # fmt: skip


def test_stop_string_ends_the_answer(client: OpenAI) -> None:
    common: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 40, "temperature": 0}
    full = client.chat.completions.create(**common, extra_body={"max_thinking_tokens": 6})
    answer = full.choices[0].message.content
    stop = answer[6:9]
    assert len(stop) == 3
    cut = client.chat.completions.create(**common, stop=[stop], extra_body={"max_thinking_tokens": 6})
    assert cut.choices[0].message.content == answer[: answer.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    budget = cut.choices[0].model_extra["budget"]
    assert budget["thinking_tokens"] == 6 and budget["forced_end"] is True and budget["waits_inserted"] is None
    assert cut.choices[0].message.model_extra["reasoning"] == full.choices[0].message.model_extra["reasoning"]
    assert cut.usage.completion_tokens < full.usage.completion_tokens


def test_stop_string_skips_the_whitespace_that_opens_the_answer(client: OpenAI) -> None:
    """lm-evaluation-harness's default stop "\\n\\n" must not match the blank line after `</think>`."""
    common: dict[str, Any] = {
        "model": "tiny", "messages": MESSAGES, "max_completion_tokens": 40, "temperature": 0, "seed": 0,
        "extra_body": {"max_thinking_tokens": 6, "answer_prefix": "\n\n"},  # an R1 answer's opening, forced
    }  # fmt: skip
    full = client.chat.completions.create(**common).choices[0].message.content
    body = full.lstrip()
    assert full.startswith("\n\n") and body, repr(full)
    cut = client.chat.completions.create(**common, stop=["\n\n"]).choices[0]
    assert cut.message.content == full[: len(full) - len(body)] + body.split("\n\n")[0]
    streamed = client.chat.completions.create(**common, stop=["\n\n"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.message.content


def test_stop_cutter_passes_the_answers_opening_whitespace() -> None:
    from budgetforce.legacy_server.generation import _StopCutter

    cutter = _StopCutter(["\n\n", "\nThe"])
    pieces = [cutter.push(t) for t in ["\n", "\n  The answer", " is 4.\n", "\nMore"]]
    assert "".join(text for text, _ in pieces) == "\n\n  The answer is 4."
    assert [cut for _, cut in pieces] == [False, False, False, True]
    only_space = _StopCutter(["\n\n"])
    assert [only_space.push(t) for t in ["\n\n", " \n\n"]] == [("\n\n", False), (" \n\n", False)]
    assert only_space.flush() == ""


def test_completions_text_and_ids(client: OpenAI, engine: Any) -> None:
    text = client.completions.create(
        model="tiny", prompt="How many apples?", max_tokens=20, temperature=0, extra_body={"max_thinking_tokens": 5}
    )
    choice = text.choices[0]
    assert choice.model_extra["budget"]["thinking_tokens"] == 5
    assert choice.model_extra["reasoning_content"] and isinstance(choice.text, str)
    ids = engine.tokenizer.encode("How many apples?", add_special_tokens=False)
    by_ids = client.completions.create(
        model="tiny", prompt=ids, max_tokens=20, temperature=0, extra_body={"max_thinking_tokens": 5}
    )
    assert by_ids.choices[0].text == choice.text
    assert by_ids.usage.prompt_tokens == text.usage.prompt_tokens == len(engine.prompt_ids(ids))
    streamed = client.completions.create(
        model="tiny", prompt="How many apples?", max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"max_thinking_tokens": 5},
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == text.usage.completion_tokens


def test_raw_sse_framing(live_server_url: str) -> None:
    body = {
        "model": "tiny", "messages": MESSAGES, "max_completion_tokens": 16, "max_thinking_tokens": 4, "n": 2,
        "stream": True, "stream_options": {"include_usage": True}, "seed": 1,
    }  # fmt: skip
    response = httpx.post(f"{live_server_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 32
    assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8
    finals = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(f["index"] for f in finals) == [0, 1]
    assert all(f["budget"]["thinking_tokens"] == 4 and f["finish_reason"] == "length" for f in finals)
    without_usage = httpx.post(
        f"{live_server_url}/chat/completions", json={**body, "stream_options": None, "n": 1}, timeout=60
    )
    assert all("usage" not in c for c in sse_events(without_usage)[:-1])


def test_metrics(live_server: str, client: OpenAI) -> None:
    client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=12, seed=0,
        extra_body={"min_thinking_tokens": 3, "max_thinking_tokens": 3},
    )  # fmt: skip
    text = httpx.get(f"{live_server}/metrics").text
    for name in (
        'budgetforce_requests_total{endpoint="chat",status="200"}',
        "budgetforce_completion_tokens_total",
        "budgetforce_thinking_tokens_total",
        "budgetforce_waits_inserted_total",
        "budgetforce_forced_ends_total",
        'budgetforce_request_latency_seconds_bucket{endpoint="chat"',
        'budgetforce_time_to_first_token_seconds_count{endpoint="chat"}',
        "budgetforce_requests_running",
    ):
        assert name in text, name
    forced = next(line for line in text.splitlines() if line.startswith("budgetforce_forced_ends_total"))
    assert float(forced.split()[-1]) >= 1


def _metric(live_server: str, name: str) -> float:
    for line in httpx.get(f"{live_server}/metrics").text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def aborts(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """(time, request id) of every abort vLLM's AsyncLLM performs during the test."""
    calls: list[tuple[float, str]] = []
    original = engine.llm.abort

    async def spy(request_id: Any, internal: bool = False) -> None:
        calls.append((time.perf_counter(), str(request_id)))
        await original(request_id, internal=internal)

    monkeypatch.setattr(engine.llm, "abort", spy)
    return calls


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate() and time.perf_counter() < deadline:
        time.sleep(0.01)
    return predicate()


# A request that would run 900 tokens (seconds on the CPU) if nobody aborted it.
LONG = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 900, "min_thinking_tokens": 880,
        "max_thinking_tokens": 890, "seed": 0}  # fmt: skip
ABORTED = 'budgetforce_requests_aborted_total{endpoint="chat"}'


def test_stream_disconnect_aborts_the_engine_request(
    live_server_url: str, live_server: str, engine: Any, aborts: list[tuple[float, str]]
) -> None:
    before = _metric(live_server, ABORTED)
    processor = engine.llm.output_processor
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{live_server_url}/chat/completions", json={**LONG, "stream": True}) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        assert processor.get_num_unfinished_requests() == 1
        left = time.perf_counter()
    assert _wait_for(lambda: bool(aborts), 2.0), "vLLM never aborted the request"
    assert aborts[0][0] - left < 1.0 and "chatcmpl-" in aborts[0][1]
    assert _wait_for(lambda: processor.get_num_unfinished_requests() == 0, 2.0)
    assert _wait_for(lambda: _metric(live_server, ABORTED) == before + 1, 2.0)


def test_non_stream_disconnect_aborts_the_engine_request(
    live_server_url: str, live_server: str, engine: Any, aborts: list[tuple[float, str]]
) -> None:
    before = _metric(live_server, ABORTED)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live_server_url}/chat/completions", json=LONG, timeout=httpx.Timeout(60, read=0.3))
    left = time.perf_counter()
    assert _wait_for(lambda: bool(aborts), 2.0), "vLLM never aborted the request"
    assert aborts[0][0] - left < 1.0 and "chatcmpl-" in aborts[0][1]
    assert _wait_for(lambda: engine.llm.output_processor.get_num_unfinished_requests() == 0, 2.0)
    assert _wait_for(lambda: _metric(live_server, ABORTED) == before + 1, 2.0)


# -- budget precedence (no engine) ---------------------------------------------------------------
def _resolve(settings: Any = None, **fields: Any) -> tuple[int, int | None, str | None]:
    from budgetforce.legacy_server.protocol import ChatCompletionRequest
    from budgetforce.legacy_server.settings import ServerSettings

    request = ChatCompletionRequest.model_validate({"messages": MESSAGES, **fields})
    resolved = request.resolve_budget(settings or ServerSettings())
    budget = resolved.budget
    return (budget.min_thinking_tokens, budget.max_thinking_tokens, resolved.max_source) if budget else (0, None, None)


def test_budget_precedence() -> None:
    from budgetforce.legacy_server.settings import ServerSettings

    every = {
        "thinking_token_budget": 50, "reasoning": {"max_tokens": 40, "effort": "low"},
        "thinking": {"type": "enabled", "budget_tokens": 30}, "reasoning_effort": "minimal",
    }  # fmt: skip
    assert _resolve(**every, max_thinking_tokens=60) == (0, 60, "max_thinking_tokens")
    assert _resolve(**every) == (0, 50, "thinking_token_budget")
    assert _resolve(**{**every, "thinking_token_budget": -1}) == (0, 40, "reasoning.max_tokens")
    assert _resolve(thinking={"type": "enabled", "budget_tokens": 30}, reasoning={"effort": "low"}) == (
        0,
        30,
        "thinking.budget_tokens",
    )
    assert _resolve(reasoning={"effort": "low"}, reasoning_effort="minimal") == (0, 1024, None)
    assert _resolve(reasoning_effort="high") == (1024, 16384, None)
    assert _resolve(reasoning_effort="xhigh") == (2048, 32768, None)
    assert _resolve(reasoning_effort="max") == (4096, 65536, None)
    assert _resolve(reasoning={"effort": "xhigh"}, reasoning_effort="low") == (2048, 32768, None)
    assert _resolve(reasoning={"effort": "max"}) == (4096, 65536, None)
    assert _resolve(thinking={"type": "enabled"}) == (0, None, None)  # enabled without a budget: no change
    defaults = ServerSettings(default_min_thinking_tokens=100, default_max_thinking_tokens=200)
    assert _resolve(defaults) == (100, 200, None)
    assert _resolve(defaults, thinking_token_budget=10) == (10, 10, "thinking_token_budget")  # the default min yields
    assert _resolve(min_thinking_tokens=2000, reasoning_effort="low") == (2000, 2000, None)  # the table's max yields
    assert _resolve(defaults, min_thinking_tokens=5) == (5, 200, None)


def test_effort_table_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetforce.legacy_server.settings import ServerSettings

    table = '{"low": {"max_thinking_tokens": 512}, "max": {"min_thinking_tokens": 3000}}'
    monkeypatch.setenv("BUDGETFORCE_REASONING_EFFORT_BUDGETS", table)
    monkeypatch.setenv("BUDGETFORCE_MAX_THINKING_TOKENS_LIMIT", "4096")
    settings = ServerSettings()
    assert _resolve(settings, reasoning_effort="low") == (0, 512, None)
    assert _resolve(settings, reasoning_effort="max") == (3000, 4096, None)  # the operator's, capped by the limit
    assert _resolve(settings, reasoning={"effort": "xhigh"}) == (2048, 4096, None)  # default entry, capped
    assert _resolve(settings, reasoning_effort="medium") == (0, 4096, None)  # default table entry
    assert _resolve(settings, reasoning_effort="high") == (1024, 4096, None)  # capped by the limit
    assert _resolve(settings) == (0, 4096, None)  # the limit is also the maximum of requests without one
