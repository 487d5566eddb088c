"""Every invalid request gets a 4xx in OpenAI's error shape, never a 500 or a traceback.

Against `budgetforce serve` on the tiny model: the budget layer's 400s name their field; vLLM's own
validation (types, ranges, the context) answers the rest in its own error shape.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server
HELLO = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int | None, param: str | None = None, code: str | None = None) -> dict:
    """An error in OpenAI's shape; ``status`` None: any 4xx."""
    if status is None:
        assert 400 <= response.status_code < 500, response.text
    else:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["message"] and isinstance(error["type"], str)
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# The budget layer's own refusals: 400, naming the field
CHAT_CASES = [
    ({"messages": HELLO, "budget_aggregate": "vote"}, "n"),  # one choice has nobody to vote with
    ({"messages": HELLO, "n": 2, "vote_grader": "integer"}, "vote_grader"),  # a qualifier without its vote
    ({"messages": HELLO, "n": 2, "budget_aggregate": "poll"}, "budget_aggregate"),
    ({"messages": HELLO, "n": 2, "total_thinking_tokens": 40, "max_thinking_tokens": 8}, "total_thinking_tokens"),
    ({"messages": HELLO, "n": 4, "total_thinking_tokens": 3}, "total_thinking_tokens"),  # under a token a choice
    ({"messages": HELLO, "min_thinking_tokens": 1.5}, "min_thinking_tokens"),
    ({"messages": HELLO, "max_thinking_tokens": "many"}, "max_thinking_tokens"),
    ({"messages": HELLO, "wait_strings": [""]}, "wait_strings[0]"),
    ({"messages": HELLO, "budget_strategy": "fast"}, "budget_strategy"),
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
    # what the rounds loop cannot carry, and rounds with probes
    ({"messages": HELLO, "max_tokens": 50, "max_thinking_tokens": 8, "budget_strategy": "rounds", "logprobs": True},
     "logprobs"),
    ({"messages": HELLO, "max_tokens": 50, "max_thinking_tokens": 8, "budget_strategy": "rounds", "probe_every": 4},
     "probe_every"),
    # a misspelled budget field is not ignored (the request would run with no budget)
    ({"messages": HELLO, "max_thinking_token": 5}, "max_thinking_token"),
    ({"messages": HELLO, "min_thinking": 5}, "min_thinking"),
    ({"messages": HELLO, "max_wait": 1}, "max_wait"),
    ({"messages": HELLO, "thinking_budget": 8}, "thinking_budget"),
]  # fmt: skip

# vLLM's own validation: a 4xx in its error shape, with or without a budget
VLLM_CHAT_CASES = [
    {"messages": "hi"},
    {"messages": HELLO, "structured_outputs": True},  # vLLM 0.32 alone answers this with a 500
    {"messages": HELLO, "max_completion_tokens": "ten"},
    {"messages": HELLO, "temperature": -3},
    {"messages": HELLO, "n": 0},
    {},
    {"messages": HELLO, "max_completion_tokens": 100000},
    {"messages": [{"role": "user", "content": "apples " * 2000}]},
    {"messages": HELLO, "max_completion_tokens": 5, "min_tokens": 6},
]


@pytest.mark.parametrize(("body", "param"), CHAT_CASES, ids=[f"chat{i}" for i in range(len(CHAT_CASES))])
def test_chat_rejects(live_server_url: str, body: dict[str, Any], param: str) -> None:
    for stream in (False, True):
        sent = {"model": "tiny", **body, **({"stream": True} if stream else {})}
        assert_error(httpx.post(f"{live_server_url}/chat/completions", json=sent, timeout=30), 400, param)


@pytest.mark.parametrize("body", VLLM_CHAT_CASES, ids=[f"vllm{i}" for i in range(len(VLLM_CHAT_CASES))])
def test_vllms_own_validation_is_a_4xx(live_server_url: str, body: dict[str, Any]) -> None:
    for budget in ({}, {"max_thinking_tokens": 4}, {"max_thinking_tokens": 4, "budget_strategy": "rounds"}):
        sent = {"model": "tiny", **body, **budget}
        assert_error(httpx.post(f"{live_server_url}/chat/completions", json=sent, timeout=30), None)


COMPLETION_CASES = [
    ({"prompt": "hi", "max_tokens": 4, "max_thinking_tokens": 4}, "max_thinking_tokens"),
    ({"prompt": ["a", "b"], "max_tokens": 30, "max_thinking_tokens": 8, "budget_strategy": "rounds"}, "prompt"),
    ({"prompt": "hi", "max_thinking_token": 5}, "max_thinking_token"),
    ({"prompt": "hi", "wait_string": ["Hmm"]}, "wait_string"),
]


@pytest.mark.parametrize(("body", "param"), COMPLETION_CASES, ids=[f"cmpl{i}" for i in range(len(COMPLETION_CASES))])
def test_completions_reject(live_server_url: str, body: dict[str, Any], param: str) -> None:
    sent = {"model": "tiny", **body}
    assert_error(httpx.post(f"{live_server_url}/completions", json=sent, timeout=30), 400, param)


@pytest.mark.parametrize(
    "raw",
    [b'{"messages": [', b"not json", b"", b"[1, 2]", b'"text"', b"null"],
)
def test_malformed_bodies_are_4xx(live_server_url: str, raw: bytes) -> None:
    r = httpx.post(f"{live_server_url}/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_unknown_model_is_404(live_server_url: str) -> None:
    for budget in ({}, {"max_thinking_tokens": 4}, {"max_thinking_tokens": 4, "budget_strategy": "rounds"}):
        r = httpx.post(f"{live_server_url}/chat/completions", json={"model": "gpt-5", "messages": HELLO, **budget})
        assert_error(r, 404)
    assert_error(httpx.post(f"{live_server_url}/completions", json={"model": "x", "prompt": "hi"}), 404)


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
    sent = {"model": "tiny", **body, typo: 8, "max_tokens": 16, "seed": 0}
    error = assert_error(httpx.post(f"{live_server_url}/{path}", json=sent, timeout=30), 400, typo, "invalid_value")
    assert f"`{meant}`" in error["message"] and f"`{typo}`" in error["message"], error


def test_unknown_fields_are_ignored_and_unknown_routes_404(live_server_url: str) -> None:
    unrelated = {"metadata": {"a": 1}, "whatever": [1], "max_new_tokens": 4, "strategy": "x"}
    for budget in ({}, {"max_thinking_tokens": 2, "budget_strategy": "rounds"}):
        ok = httpx.post(
            f"{live_server_url}/chat/completions",
            json={"model": "tiny", "messages": HELLO, "max_completion_tokens": 4, "seed": 0, **unrelated, **budget},
            timeout=30,
        )
        assert ok.status_code == 200, ok.text
    # OpenAI's chat cap sent to /v1/completions resembles `max_thinking_tokens` but is no typo of it
    text = httpx.post(
        f"{live_server_url}/completions",
        json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "max_completion_tokens": 4, "seed": 0, **unrelated},
        timeout=30,
    )
    assert text.status_code == 200, text.text
    assert httpx.get(f"{live_server_url}/nothing").status_code == 404
    assert httpx.get(f"{live_server_url}/chat/completions").status_code == 405


def test_failed_finish_reasons_are_errors_not_stop() -> None:
    """vLLM's `abort` and `error` (a KV load failure, ...) end the sources with `GenerationFailed`, which
    the budget layer hands back to vLLM's route as vLLM's own finish reason (a 5xx or an error event)."""
    from budgetforce.vllm.engine import GenerationFailed, _finish

    assert [_finish(r) for r in ("stop", "length", "repetition")] == ["stop", "length", "stop"]
    for reason in ("abort", "error"):
        with pytest.raises(GenerationFailed) as failed:
            _finish(reason)
        assert failed.value.reason == reason
