"""`budgetforce serve` on the tiny model with the real `openai` SDK and raw httpx: budgets, splitting,
usage, streaming, both strategies.

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
from conftest import engine_gauges, generated_until_idle
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
    assert httpx.get(f"{live_server}/health").status_code == 200


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
    """Same seed through the server and straight through budgetforce's engine: same prompt, same ids, same split."""
    from budgetforce.core.budget import Budget

    budget = Budget(max_thinking_tokens=10)
    direct = run(engine.generate(MESSAGES, budget, max_tokens=30, seed=11, temperature=0.7))
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=30, seed=11, temperature=0.7,
        extra_body={"max_thinking_tokens": 10, "return_token_ids": True},
    )  # fmt: skip
    choice = out.choices[0]
    assert choice.model_extra["token_ids"] == direct.token_ids
    assert out.usage.prompt_tokens == direct.prompt_tokens == len(engine.prompt_ids(MESSAGES))
    assert out.usage.completion_tokens == len(direct.token_ids)
    assert out.usage.completion_tokens_details.reasoning_tokens == len(direct.reasoning_token_ids) == 10
    # vLLM ends a reasoning cut inside a character with U+FFFD; budgetforce's decoder drops it
    assert choice.message.model_extra["reasoning_content"].rstrip("\ufffd") == direct.reasoning.rstrip("\ufffd")
    # The split is at the delimiter: `</think>` is in neither text.
    think_end = engine.profile.think_end
    i = direct.token_ids.index(think_end[0])
    assert direct.reasoning_token_ids == direct.token_ids[:i]
    assert direct.answer_token_ids == direct.token_ids[i + len(think_end) :]
    assert "</think>" not in (choice.message.content or "") + choice.message.model_extra["reasoning_content"]


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
    """s1's loop on vLLM's server: the same ids as the engine strategy under greedy decoding (the
    student's test in test_serving.py has waits; here the maximum forces the end)."""
    common: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 24, "temperature": 0}
    budget = {"max_thinking_tokens": 8, "return_token_ids": True}
    out = client.chat.completions.create(**common, extra_body={**budget, "budget_strategy": "rounds"})
    assert out.choices[0].model_extra["budget"] == {
        "thinking_tokens": 8, "waits_inserted": 0, "forced_end": True, "strategy": "rounds", "enforced": True,
    }  # fmt: skip
    engine = client.chat.completions.create(**common, extra_body=budget)
    assert out.choices[0].model_extra["token_ids"] == engine.choices[0].model_extra["token_ids"]


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
    assert budget["thinking_tokens"] == 6 and budget["forced_end"] is True
    assert cut.choices[0].message.model_extra["reasoning"] == full.choices[0].message.model_extra["reasoning"]


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
    from budgetforce.core.stops import StopCutter as _StopCutter

    cutter = _StopCutter(["\n\n", "\nThe"])
    pieces = [cutter.push(t) for t in ["\n", "\n  The answer", " is 4.\n", "\nMore"]]
    assert "".join(text for text, _ in pieces) == "\n\n  The answer is 4."
    assert [cut for _, cut in pieces] == [False, False, False, True]
    only_space = _StopCutter(["\n\n"])
    assert [only_space.push(t) for t in ["\n\n", " \n\n"]] == [("\n\n", False), (" \n\n", False)]
    assert only_space.flush() == ""


def test_completions_text_and_ids(client: OpenAI, engine: Any) -> None:
    ids = engine.prompt_ids(MESSAGES)  # the chat prompt, thinking opened: a text completion is taken as it is
    prompt = engine.tokenizer.decode(ids)
    common: dict[str, Any] = {"model": "tiny", "max_tokens": 20, "temperature": 0, "extra_body": {"max_thinking_tokens": 5}}
    text = client.completions.create(prompt=prompt, **common)
    choice = text.choices[0]
    assert choice.model_extra["budget"]["thinking_tokens"] == 5
    assert choice.model_extra["reasoning_content"] and isinstance(choice.text, str)
    by_ids = client.completions.create(prompt=ids, **common)
    assert by_ids.choices[0].text == choice.text
    assert by_ids.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(prompt=prompt, stream=True, stream_options={"include_usage": True}, **common)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == text.usage.completion_tokens


def test_raw_sse_framing(live_server_url: str) -> None:
    body = {
        "model": "tiny", "messages": MESSAGES, "max_completion_tokens": 16, "max_thinking_tokens": 4, "n": 2,
        "stream": True, "stream_options": {"include_usage": True}, "seed": 1,
    }  # fmt: skip
    for strategy in ("engine", "rounds"):
        response = httpx.post(f"{live_server_url}/chat/completions", json={**body, "budget_strategy": strategy}, timeout=60)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        last = chunks[-1]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 32
        assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8
        finals = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
        assert sorted(f["index"] for f in finals) == [0, 1]
        assert all(f["budget"]["thinking_tokens"] == 4 and f["finish_reason"] == "length" for f in finals), finals
        assert all(f["budget"]["strategy"] == strategy for f in finals)


def test_metrics(live_server: str, client: OpenAI) -> None:
    client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=12, seed=0,
        extra_body={"min_thinking_tokens": 3, "max_thinking_tokens": 3},
    )  # fmt: skip
    text = httpx.get(f"{live_server}/metrics").text
    for name in (
        'budgetforce_budgeted_choices_total{strategy="engine"}',
        "budgetforce_thinking_tokens_total",
        "budgetforce_forced_ends_total",
        "budgetforce_thinking_tokens_per_choice_bucket",
        "vllm:num_requests_running",
    ):
        assert name in text, name
    forced = next(line for line in text.splitlines() if line.startswith("budgetforce_forced_ends_total"))
    assert float(forced.split()[-1]) >= 1


# A request that would run 900 tokens (seconds on the CPU) if nobody aborted it. The test counts
# the tokens the engine generated for it: polling the running gauge instead misses it on a
# 2-core machine, where the busy engine can hold the API server off for seconds.
LONG = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 900, "min_thinking_tokens": 880,
        "max_thinking_tokens": 890, "seed": 0}  # fmt: skip


@pytest.mark.parametrize("strategy", ["engine", "rounds"])
def test_stream_disconnect_aborts_the_engine_request(live_server_url: str, live_server: str, strategy: str) -> None:
    """A client that leaves mid-stream: vLLM aborts its engine request (the rounds loop's continuation too).

    The whole answer takes about 3 s on the tiny model; once in a full suite on 2 cores the engine
    ran all 900 tokens (alone the file passed every time): a starved client or API process can see
    the answer out before the disconnect lands. So a try that ran on is made again, up to three
    times, with the tokens of each in the message; an abort that does not work fails all three.
    """
    tries = []
    for _ in range(3):
        before = generated_until_idle(live_server, 0.0)
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", f"{live_server_url}/chat/completions",
                        json={**LONG, "stream": True, "budget_strategy": strategy}) as r,  # fmt: skip
        ):
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
        generated = generated_until_idle(live_server, before)
        tries.append(generated)
        assert generated > 0
        if generated < LONG["max_completion_tokens"]:
            return
    pytest.fail(f"{tries} tokens: the request of a client that left ran on, in every try")


def test_non_stream_disconnect_aborts_the_engine_request(live_server_url: str, live_server: str) -> None:
    """A non-streaming client that leaves while its request generates: vLLM aborts the engine request.

    The client leaves once the engine's token counter moves (the request is running). The whole
    answer takes about 3 s on the tiny model, yet on the 2-core CI machine a starved test process
    once woke only after it had arrived: such a try shows nothing either way (the client did not
    leave in time), so it is made again, up to three times; only a client that left and an engine
    that ran on fails the test.
    """
    tries = []
    for _ in range(3):
        outcome, generated = _leave_once_generating(live_server_url, live_server)
        tries.append(outcome)
        if outcome == "left":
            assert 0 < generated < LONG["max_completion_tokens"], (
                f"{generated} tokens: the request of a client that left ran on"
            )
            return
    pytest.fail(f"the client never left before the answer came back: {tries}")


def _leave_once_generating(live_server_url: str, live_server: str) -> tuple[str, float]:
    """Send LONG on a raw socket, close it once the engine generates; ("left", tokens the engine
    generated from then on) or ("answered: ...", 0) when the answer beat the client."""
    import select
    import socket
    from urllib.parse import urlsplit

    before = generated_until_idle(live_server, 0.0)
    url = urlsplit(f"{live_server_url}/chat/completions")
    body = json.dumps(LONG).encode()
    head = (f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    try:
        sock.sendall(head + body)
        deadline = time.perf_counter() + 60
        while engine_gauges(live_server)["vllm:generation_tokens_total"] <= before:
            assert time.perf_counter() < deadline, "the request never started generating"
            time.sleep(0.05)
        answered, _, _ = select.select([sock], [], [], 0)
        if answered:
            outcome = f"answered: {sock.recv(120)!r}"
        else:
            outcome = "left"
    finally:
        sock.close()  # the client leaves
    generated = generated_until_idle(live_server, before)
    return outcome, generated if outcome == "left" else 0.0


def test_real_vllm_chunks_take_the_bytes_path(live_server_url: str, tiny_r1: Any) -> None:
    """vLLM's own stream (a request without a budget passes the layer untouched) read by the bytes path:
    every middle chunk is plain, and what it writes is what parsing the chunk writes."""
    from transformers import AutoTokenizer

    from budgetforce.core.budget import BudgetDefaults
    from budgetforce.core.profile import detect_profile
    from budgetforce.server.annotate import Annotator
    from budgetforce.server.rewrite import ServedModel, prepare

    body = {"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 24, "seed": 3, "stream": True,
            "return_token_ids": True}  # fmt: skip
    response = httpx.post(f"{live_server_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    events = [e[len("data: ") :].encode() for e in response.text.split("\n\n") if e.startswith("data: {")]
    tok = AutoTokenizer.from_pretrained(tiny_r1)
    fields = frozenset({"messages", "model", "max_completion_tokens", "stream", "seed", "vllm_xargs", "return_token_ids",
                        "include_reasoning"})  # fmt: skip
    model = ServedModel(profile=detect_profile(tok).resolve(tok), tokenizer=tok, max_model_len=1024, chat_fields=fields,
                        completion_fields=fields, reasoning_parser=True)  # fmt: skip
    budgeted = {k: v for k, v in body.items() if k != "return_token_ids"} | {"max_thinking_tokens": 12}
    fast, slow = (Annotator(prepare(dict(budgeted), "chat", model, BudgetDefaults()), model) for _ in range(2))
    assert fast.lean
    middle = [json.loads(e) for e in events[1:-1]]
    assert len(middle) >= 20 and all(c["choices"][0]["finish_reason"] is None for c in middle)
    for e in events[:1]:
        fast.chunk(json.loads(e)), slow.chunk(json.loads(e))
    for e in events[1:-1]:
        plain = fast.plain_event(e)
        assert plain is not None, e  # vLLM's middle chunk has the shape the bytes path reads
        assert (json.loads(plain) if plain else None) == slow.chunk(json.loads(e))
    assert fast.choices[0].ctl.thinking_tokens == slow.choices[0].ctl.thinking_tokens > 0
