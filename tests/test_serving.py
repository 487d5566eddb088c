"""`budgetforce serve`: vLLM's own OpenAI server with budgetforce's processor and budget layer.

One server for the whole module, started as users start it (`budgetforce serve`, no `--model`:
the bundled student, whose thinking closes by itself, so minimums insert real waits), with an API
key and a few vLLM flags passed through (tools, structured outputs without free whitespace, which
the student would otherwise fill its JSON with). Every sampled request is seeded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server
KEY = "sk-budget"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "budgetforce"  # the served name of the bundled student
THINK_END = 5  # the student's `</think>`
START_TIMEOUT_S = 240
QUESTION = [{"role": "user", "content": "Tom has 12 apples and buys 3 bags of 7. How many now?"}]
XHIGH = {"min_thinking_tokens": 120, "max_thinking_tokens": 140}  # the operator's table entry under test


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`budgetforce serve` in its own process group; yields the base URL (no /v1)."""
    from conftest import budgetforce_serve

    args = [
        "--api-key", KEY, "--reasoning-effort-budgets", json.dumps({"xhigh": XHIGH}),
        # vLLM's own flags, passed through
        "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0",
        "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",  # named tools as JSON (no structural tags)
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]  # fmt: skip
    with budgetforce_serve(args, tmp_path_factory.mktemp("budgetforce-serve") / "server.log", START_TIMEOUT_S) as base:
        yield base


@pytest.fixture(scope="module")
def client(served: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0, timeout=300)


def chat(client: Any, budget: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "max_completion_tokens": 400, "seed": 0,
                              "temperature": 0.6, **kwargs}  # fmt: skip
    extra = {**params.pop("extra_body", {}), **(budget or {})}
    return client.chat.completions.create(**params, extra_body=extra)


def post(served: str, body: dict[str, Any], path: str = "chat/completions", **kw: Any) -> httpx.Response:
    full = {"model": MODEL, "messages": QUESTION, "max_tokens": 300, "seed": 0, **body}
    if path == "completions":
        full.pop("messages")
    return httpx.post(f"{served}/v1/{path}", json=full, headers=kw.pop("headers", AUTH), timeout=300, **kw)


def thinking_of(token_ids: list[int]) -> int:
    """Thinking tokens of a completion whose prompt opens the thinking: the ids before `</think>`."""
    return token_ids.index(THINK_END) if THINK_END in token_ids else len(token_ids)


# -- budgets -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("budget", "lo", "hi"),
    [
        ({"min_thinking_tokens": 150, "max_thinking_tokens": 200}, 150, 200),  # waits past the natural close
        ({"max_thinking_tokens": 30}, 30, 30),  # forced end
        ({"thinking_token_budget": 25, "reasoning_effort": "low"}, 25, 25),  # vLLM's field: a maximum here
        ({"thinking": {"type": "disabled"}}, 0, 0),
    ],
)
def test_budgets_are_honoured_and_reported(client: Any, budget: dict[str, Any], lo: int, hi: int) -> None:
    out = chat(client, budget, extra_body={"return_token_ids": True})
    choice = out.choices[0]
    report = choice.model_extra["budget"]
    counted = thinking_of(choice.model_extra["token_ids"])
    assert lo <= report["thinking_tokens"] == counted <= hi, report
    assert report["forced_end"] is (counted == hi) and report["strategy"] == "engine"
    waits = report["waits_inserted"]  # from the processor's stats board, through the engine process
    assert isinstance(waits, int) and waits >= (1 if lo >= 150 else 0), report  # a max-only request too
    assert report["enforced"] is True and "unenforced_reason" not in report, report
    message = choice.message.model_extra
    assert message["reasoning_content"] == message["reasoning"]
    assert (message["reasoning"] or "") != "" or counted == 0
    assert out.usage.completion_tokens_details.reasoning_tokens == counted
    assert choice.message.content and choice.finish_reason == "stop"


def test_thinking_modes_through_vllms_server(client: Any) -> None:
    """The modes beyond s1 as top-level fields on vLLM's own server: forwarded in `vllm_xargs`,
    forced by the processor, reported per choice (scheduled waits through the stats board)."""
    from transformers import AutoTokenizer

    from budgetforce.student import STUDENT_PATH

    tok = AutoTokenizer.from_pretrained(STUDENT_PATH)
    eos = tok.eos_token_id

    def run(budget: dict[str, Any], seed: int = 0) -> tuple[dict[str, Any], list[int], str]:
        out = chat(client, budget, seed=seed, extra_body={"return_token_ids": True})
        choice = out.choices[0]
        assert choice.finish_reason == "stop"
        return choice.model_extra["budget"], choice.model_extra["token_ids"], choice.message.model_extra["reasoning"] or ""

    report, ids, _ = run({"max_answer_tokens": 3})  # Elastic Reasoning: the answer is cut after 3 tokens
    answer = [t for t in ids[ids.index(THINK_END) + 1 :] if t != eos]
    assert report["answer_tokens"] == len(answer) == 3 and report["answer_truncated"] is True and ids[-1] == eos

    text = "Wait, let me check each step again.\n"
    report, ids, _ = run({"thinking_intervention": text, "intervention_at": 5})
    forced = tok.encode(text, add_special_tokens=False)
    assert ids[5 : 5 + len(forced)] == forced and report["intervened"] is True

    schedule = {"alpha_moment_tokens": 400, "wait_probability": 1.0, "wait_decay": "constant",
                "paragraph_breaks": [".\n"], "max_thinking_tokens": 200}  # fmt: skip
    report, ids, reasoning = run(schedule)
    assert report["scheduled_waits"] >= 1 and reasoning.count("Wait") >= report["scheduled_waits"], report

    # the logit-margin exit, in the processor alone: the widest margin closes at the first break past
    # the minimum (the student writes one step per line)
    report, ids, reasoning = run({"exit_margin": 64, "exit_breaks": [".\n"], "min_thinking_tokens": 20,
                                  "max_thinking_tokens": 200})  # fmt: skip
    assert report["early_exit"] is True and report["forced_end"] is True, report
    assert report["exit_tokens_saved"] == 200 - report["thinking_tokens"] and report["thinking_tokens"] >= 20
    assert tok.decode([ids[report["thinking_tokens"] - 1]]).endswith(".\n"), "it did not close right after a break"
    report, _, _ = run({"exit_margin": 0.0, "exit_breaks": [".\n"], "max_thinking_tokens": 200})  # only where the close is the top token
    assert set(report) >= {"early_exit", "exit_tokens_saved"}

    for seed in range(4):  # NoWait: the student's own re-checks start with "Wait"; banned, none is written
        _, _, reasoning = run({"banned_thinking_strings": ["Wait"], "max_thinking_tokens": 200}, seed=seed)
        assert "wait" not in reasoning.lower()


def test_stream_equals_non_stream(client: Any) -> None:
    budget = {"min_thinking_tokens": 120, "max_thinking_tokens": 160}
    full = chat(client, budget)
    stream = chat(client, budget, stream=True, stream_options={"include_usage": True})
    reasoning, content, finish, report, usage = [], [], None, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            delta = c.delta.model_extra or {}
            if delta.get("reasoning"):
                assert delta["reasoning_content"] == delta["reasoning"] and not content
                reasoning.append(delta["reasoning"])
            if c.delta.content:
                content.append(c.delta.content)
            if c.finish_reason:
                finish, report = c.finish_reason, c.model_extra["budget"]
    message = full.choices[0].message
    assert "".join(reasoning) == message.model_extra["reasoning_content"]
    assert "".join(content) == message.content
    assert (finish, report) == (full.choices[0].finish_reason, full.choices[0].model_extra["budget"])
    assert usage is not None and usage.model_dump() == full.usage.model_dump()


def test_reasoning_effort_xhigh_maps_to_the_operators_budget(client: Any) -> None:
    out = chat(client, extra_body={"reasoning_effort": "xhigh", "return_token_ids": True})
    report = out.choices[0].model_extra["budget"]
    assert XHIGH["min_thinking_tokens"] <= report["thinking_tokens"] <= XHIGH["max_thinking_tokens"]
    assert report["thinking_tokens"] == thinking_of(out.choices[0].model_extra["token_ids"])


def test_stop_strings_cut_only_the_answer(client: Any) -> None:
    """lm-evaluation-harness's default stop "\\n\\n" must not match the blank line that opens an R1 answer."""
    budget = {"max_thinking_tokens": 60}
    full = chat(client, budget).choices[0]
    answer, reasoning = full.message.content, full.message.model_extra["reasoning"]
    assert answer.startswith("\n\n")  # a plain "\n\n" stop would leave an empty answer
    eval_style = chat(client, budget, stop=["\n\n"]).choices[0]
    assert eval_style.message.content == "\n\n" + answer[2:].split("\n\n")[0] != "\n\n"
    assert eval_style.message.model_extra["reasoning"] == reasoning
    word = answer.split()[1]  # "answer" of "The answer is ..."
    cut = chat(client, budget, stop=[word]).choices[0]
    assert cut.message.content == answer[: answer.index(word)] and cut.finish_reason == "stop"
    assert cut.model_extra["stop_reason"] == word
    streamed = chat(client, budget, stop=[word], stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut.message.content
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 60


def test_text_completions_with_a_budget(client: Any) -> None:
    import openai

    prompt = "<｜User｜>How many apples are in 4 bags of 3?<｜Assistant｜><think>\n"
    common: dict[str, Any] = {"model": MODEL, "prompt": prompt, "temperature": 0.6, "seed": 1}
    budget = {"min_thinking_tokens": 40, "max_thinking_tokens": 80}
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # vLLM's default cap, 16, has no room for it
        client.completions.create(**common, extra_body=budget)
    common["max_tokens"] = 300
    full = client.completions.create(**common, extra_body=budget).choices[0]
    report = full.model_extra["budget"]
    assert 40 <= report["thinking_tokens"] <= 80
    assert full.model_extra["reasoning_content"] == full.model_extra["reasoning"] != ""
    assert "</think>" not in full.text and full.text.strip()
    stream = client.completions.create(**common, extra_body=budget, stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == full.text
    assert "".join((c.model_extra or {}).get("reasoning") or "" for c in chunks) == full.model_extra["reasoning"]
    assert chunks[-1].model_extra["budget"] == report


# -- the strategies the budget layer runs itself: s1's rounds loop, early exit ---------------------------
def test_greedy_rounds_equal_the_engine_token_for_token(client: Any) -> None:
    """s1's loop, issued by the budget layer on vLLM's engine client, against the logits processor:
    greedy, with waits and with a forced end; chat full and streamed, and a text completion."""
    waits = forced = 0
    for budget in ({"min_thinking_tokens": 150, "max_thinking_tokens": 200}, {"max_thinking_tokens": 30}):
        engine = chat(client, budget, temperature=0, extra_body={"return_token_ids": True})
        rounds = chat(client, {**budget, "budget_strategy": "rounds"}, temperature=0, extra_body={"return_token_ids": True})
        e, r = engine.choices[0], rounds.choices[0]
        assert r.model_extra["token_ids"] == e.model_extra["token_ids"], budget
        assert r.message.content == e.message.content and r.finish_reason == e.finish_reason
        assert r.message.model_extra["reasoning"] == e.message.model_extra["reasoning"]
        assert r.model_extra["budget"] == {**e.model_extra["budget"], "strategy": "rounds"}, budget
        assert rounds.usage.model_dump() == engine.usage.model_dump()
        waits += r.model_extra["budget"]["waits_inserted"]
        forced += r.model_extra["budget"]["forced_end"]
    assert waits >= 1 and forced == 1, "the budgets should both insert waits and force an end"

    budget = {"min_thinking_tokens": 150, "max_thinking_tokens": 200, "budget_strategy": "rounds"}
    full = chat(client, budget, temperature=0)
    stream = chat(client, budget, temperature=0, stream=True, stream_options={"include_usage": True})
    reasoning, content, report, usage = [], [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            reasoning.append((c.delta.model_extra or {}).get("reasoning") or "")
            content.append(c.delta.content or "")
            report = c.model_extra.get("budget") or report
    assert "".join(reasoning) == full.choices[0].message.model_extra["reasoning"]
    assert "".join(content) == full.choices[0].message.content
    assert report == full.choices[0].model_extra["budget"] and usage.model_dump() == full.usage.model_dump()

    prompt = "<｜User｜>How many apples are in 4 bags of 3?<｜Assistant｜><think>\n"
    common: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": 300, "temperature": 0, "seed": 1}
    text_budget = {"min_thinking_tokens": 40, "max_thinking_tokens": 80}
    text_engine = client.completions.create(**common, extra_body=text_budget).choices[0]
    text_rounds = client.completions.create(**common, extra_body={**text_budget, "budget_strategy": "rounds"}).choices[0]
    assert text_rounds.text == text_engine.text and text_rounds.model_extra["reasoning"] == text_engine.model_extra["reasoning"]
    assert text_rounds.model_extra["budget"] == {**text_engine.model_extra["budget"], "strategy": "rounds"}


def test_rounds_choices_are_forced_apart_and_seeded_seed_plus_i(client: Any) -> None:
    budget = {"min_thinking_tokens": 150, "max_thinking_tokens": 200, "budget_strategy": "rounds", "return_token_ids": True}
    many = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=300, temperature=0.8,
                                          n=2, seed=3, extra_body=budget)  # fmt: skip
    assert [c.index for c in many.choices] == [0, 1]
    for c in many.choices:
        report = c.model_extra["budget"]
        assert 150 <= report["thinking_tokens"] == thinking_of(c.model_extra["token_ids"]) <= 200, report
        assert isinstance(report["waits_inserted"], int), report  # each choice's own loop counts its waits
        one = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=300, temperature=0.8,
                                             seed=3 + c.index, extra_body=budget).choices[0]  # fmt: skip
        assert one.model_extra["token_ids"] == c.model_extra["token_ids"] and one.model_extra["budget"] == report


def test_early_exit_probes_close_the_thinking_and_are_not_billed(client: Any) -> None:
    """Answer probes on vLLM's server: side requests of the budget layer; the first that answers closes
    the thinking (`probe_agree: 1`) well before the student would; their tokens are reported, not used."""
    natural = chat(client, {"max_thinking_tokens": 300}, temperature=0).choices[0].model_extra["budget"]
    probes = {"max_thinking_tokens": 300, "probe_every": 8, "probe_agree": 1, "probe_max_tokens": 4}
    out = chat(client, probes, temperature=0, extra_body={"return_token_ids": True})
    choice = out.choices[0]
    report = choice.model_extra["budget"]
    assert report["early_exit"] is True and report["forced_end"] is True and report["enforced"] is True, report
    assert 1 <= report["probes"] and 1 <= report["probe_tokens"] <= 4 * report["probes"], report
    assert 8 <= report["thinking_tokens"] == thinking_of(choice.model_extra["token_ids"]) < natural["thinking_tokens"]
    assert out.usage.completion_tokens == len(choice.model_extra["token_ids"])  # no probe token is the request's
    assert choice.message.content and choice.finish_reason == "stop"
    stream = chat(client, probes, temperature=0, stream=True, stream_options={"include_usage": True})
    finals, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        finals += [c.model_extra["budget"] for c in chunk.choices if c.finish_reason]
    (streamed,) = finals
    assert streamed["early_exit"] is True and streamed["probes"] >= 1
    assert usage.completion_tokens_details.reasoning_tokens == streamed["thinking_tokens"] < natural["thinking_tokens"]


# -- vLLM's features, with a budget set ------------------------------------------------------------
def test_logprobs_and_logit_bias(client: Any) -> None:
    budget = {"max_thinking_tokens": 40}
    out = chat(client, budget, logprobs=True, top_logprobs=2, extra_body={"return_token_ids": True})
    choice = out.choices[0]
    assert len(choice.logprobs.content) == len(choice.model_extra["token_ids"]) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    banned = choice.model_extra["token_ids"][thinking_of(choice.model_extra["token_ids"]) + 3]  # an answer token
    biased = chat(client, budget, logit_bias={str(banned): -100}, extra_body={"return_token_ids": True})
    assert banned not in biased.choices[0].model_extra["token_ids"]
    assert biased.choices[0].model_extra["budget"]["thinking_tokens"] == 40


def test_json_schema_answer_parses_after_the_thinking(client: Any) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}  # fmt: skip
    out = chat(
        client, {"min_thinking_tokens": 50, "max_thinking_tokens": 80},
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )  # fmt: skip
    choice = out.choices[0]
    assert 50 <= choice.model_extra["budget"]["thinking_tokens"] <= 80
    assert choice.message.model_extra["reasoning"]  # free text: the grammar starts after the thinking
    assert isinstance(json.loads(choice.message.content)["answer"], int)


def test_named_tool_choice_returns_a_tool_call(client: Any) -> None:
    tool = {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"],
    }}}  # fmt: skip
    out = chat(client, {"max_thinking_tokens": 40}, tools=[tool], tool_choice={"type": "function", "function": {"name": "add"}})
    choice = out.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and set(json.loads(call.function.arguments)) == {"a", "b"}
    assert choice.model_extra["budget"]["thinking_tokens"] == 40


# -- errors, auth, pass-through --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_thinking_token": 5}, "max_thinking_token"),  # a misspelling names the field it resembles
        ({"min_thinking": 5}, "min_thinking"),
        ({"min_thinking_tokens": -1}, "min_thinking_tokens"),
        ({"max_thinking_tokens": "many"}, "max_thinking_tokens"),
        ({"min_thinking_tokens": 50, "max_thinking_tokens": 10}, "min_thinking_tokens"),
        ({"max_thinking_tokens": 300}, "max_thinking_tokens"),  # no room for an answer in max_tokens
        ({"thinking_token_budget": 400, "max_completion_tokens": 300}, "thinking_token_budget"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"wait_strings": [""]}, "wait_strings[0]"),
        ({"vllm_xargs": {"min_thinking_tokens": -3}}, "min_thinking_tokens"),
        ({"budget_strategy": "rounds", "max_thinking_tokens": 8, "probe_every": 4}, "probe_every"),
        ({"budget_strategy": "rounds", "max_thinking_tokens": 8, "logprobs": True}, "logprobs"),
        # beyond the device tables (8 wait strings, 64 tokens a forced sequence): refused, not run unforced
        ({"min_thinking_tokens": 5, "wait_strings": [f"Wait {i}" for i in range(9)]}, "wait_strings"),
        ({"max_thinking_tokens": 8, "answer_prefix": "seven " * 70}, "answer_prefix"),
        ({"vllm_xargs": {"max_thinking_tokens": 8, "answer_prefix": "seven " * 70}}, "answer_prefix"),
    ],
)
def test_bad_budgets_are_400_naming_the_field(served: str, body: dict[str, Any], param: str) -> None:
    r = post(served, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert f"`{param.split('[')[0]}" in error["message"] or param in error["message"]
    if param in ("max_thinking_token", "min_thinking"):
        assert "did you mean `" in error["message"]


@pytest.mark.parametrize("seed", [7, None])
def test_each_of_n_choices_gets_its_own_budget(client: Any, seed: int | None) -> None:
    """vLLM's n choices share one request's xargs; each must still be forced on its own (seeded or not)."""
    extra: dict[str, Any] = {"min_thinking_tokens": 150, "max_thinking_tokens": 200, "return_token_ids": True}
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_completion_tokens=300, temperature=0.8, n=3,
        **({"seed": seed} if seed is not None else {}), extra_body=extra,
    )
    assert len(out.choices) == 3
    for choice in out.choices:
        counted = thinking_of(choice.model_extra["token_ids"])
        assert 150 <= choice.model_extra["budget"]["thinking_tokens"] == counted <= 200, choice.model_extra["budget"]
        assert choice.model_extra["budget"]["waits_inserted"] is None  # one board row per request: not per choice


def test_api_key_is_enforced_before_the_budget(served: str, client: Any) -> None:
    import openai

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert post(served, {"max_thinking_tokens": 8}, headers=headers).status_code == 401
        assert post(served, {"max_thinking_token": 8}, headers=headers).status_code == 401  # not a 400 first
        assert httpx.get(f"{served}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{served}/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served}/v1", api_key="nope", max_retries=0).models.list()
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_without_budget_the_request_is_vllms_own(served: str, client: Any) -> None:
    """No budget and no stop strings: the layer stays out of the way (vLLM's response, byte for byte in kind)."""
    plain = post(served, {"temperature": 0}).json()["choices"][0]
    assert "budget" not in plain and "reasoning_content" not in plain["message"]
    r = httpx.post(f"{served}/tokenize", json={"model": MODEL, "prompt": "hello"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["tokens"]
    metrics = httpx.get(f"{served}/metrics").text
    assert "vllm:num_requests_running" in metrics and "budgetforce_budgeted_choices_total" in metrics


def test_64_concurrent_mixed_budget_streams(served: str) -> None:
    mix = [
        ({"max_thinking_tokens": 8}, 0, 8),  # a maximum alone: the student may close before it
        ({"min_thinking_tokens": 20, "max_thinking_tokens": 40}, 20, 40),
        ({"thinking_token_budget": 12}, 0, 12),
        ({"reasoning_effort": "none"}, 0, 0),
        ({}, 0, 10**6),  # no budget: vLLM's own stream
    ]

    async def one(http: httpx.AsyncClient, i: int) -> dict[str, Any]:
        fields = mix[i % len(mix)][0]
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"{i}: apples in {i} bags?"}], "seed": i,
                "max_tokens": 64, "temperature": 0.8, "stream": True, **fields}  # fmt: skip
        out: dict[str, Any] = {"i": i, "errors": [], "done": False, "budget": None}
        async with http.stream("POST", f"{served}/v1/chat/completions", json=body, headers=AUTH) as r:
            out["status"] = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out["done"] = True
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    out["errors"].append(chunk)
                for c in chunk.get("choices", []):
                    if c.get("finish_reason"):
                        out["budget"] = c.get("budget")
        return out

    async def storm() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(one(http, i) for i in range(64)))

    for r in asyncio.run(storm()):
        assert r["status"] == 200 and r["done"] and not r["errors"], r
        fields, lo, hi = mix[r["i"] % len(mix)]
        if fields:
            report = r["budget"]
            assert lo <= report["thinking_tokens"] <= hi and report["forced_end"] is (report["thinking_tokens"] == hi), r
        else:
            assert r["budget"] is None


def test_stream_disconnect_aborts_the_engine_request(served: str) -> None:
    body = {"min_thinking_tokens": 900, "max_thinking_tokens": 950, "max_tokens": 1000, "stream": True}

    def running() -> float:
        for line in httpx.get(f"{served}/metrics").text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                return float(line.split()[-1])
        return 0.0

    full = {"model": MODEL, "messages": QUESTION, "seed": 0, **body}
    with httpx.Client(timeout=60) as http, http.stream(
        "POST", f"{served}/v1/chat/completions", json=full, headers=AUTH
    ) as r:
        # read the stream until vLLM's gauge shows the request running (the gauge follows the
        # engine's stats, a step or a few behind); the request is in flight until [DONE] comes
        seen = False
        for n, line in enumerate(r.iter_lines()):
            if "[DONE]" in line:  # too fast for the gauge (seen on a fresh clone): nothing left to abort
                pytest.skip("the request finished before vLLM's gauge showed it running")
            if n >= 3 and running() == 1:
                seen = True
                break
        assert seen
    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running() == 0, "the engine still runs the request of a client that left"


# -- parallel thinking with a vote -------------------------------------------------------------------
def _by_hand(answers: list[str]) -> tuple[str | None, int]:
    """The majority integer over the answers and its count, with the harness's integer reading."""
    from collections import Counter

    from budgetforce.core import graders

    keys = []
    for text in answers:
        stated = graders.extract_answer(text)
        numbers = graders.NUMBER_PATTERN.findall(text.replace(",", ""))
        value = graders.parse_integer(stated if stated is not None else (numbers[-1] if numbers else None))
        keys.append(None if value is None else str(value))
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0
    top = max(counts.values())
    return next(k for k in keys if k is not None and counts[k] == top), top


def test_vote_is_the_majority_of_the_choices_answers(client: Any, served: str) -> None:
    """n = 6 seeded choices under one total thinking budget: the vote equals the majority computed here
    from the choices' own answers, streamed and not, and the thinking spent is the choices' sum."""
    budget = {"n": 6, "budget_aggregate": "vote", "vote_grader": "integer", "total_thinking_tokens": 600}
    full = post(served, {**budget, "max_tokens": 400, "temperature": 0.8, "seed": 3})
    assert full.status_code == 200, full.text
    body = full.json()
    answers = [c["message"]["content"] or "" for c in sorted(body["choices"], key=lambda c: c["index"])]
    vote = body["vote"]
    answer, votes = _by_hand(answers)
    assert answer is not None and votes >= 2, answers  # the student states integers: a real vote
    assert (vote["answer"], vote["votes"], vote["choices"]) == (answer, votes, 6), (vote, answers)
    assert vote["share"] == round(votes / 6, 4) and vote["grader"] == "integer"
    thinking = [c["budget"]["thinking_tokens"] for c in body["choices"]]
    assert all(t <= 100 for t in thinking) and vote["thinking_tokens"] == sum(thinking) <= 600
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == sum(thinking)
    with httpx.stream("POST", f"{served}/v1/chat/completions", headers=AUTH, timeout=300, json={
        "model": MODEL, "messages": QUESTION, "max_tokens": 400, "temperature": 0.8, "seed": 3, "stream": True, **budget,
    }) as r:  # fmt: skip
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = [e["vote"] for e in events if "vote" in e]
    assert streamed == [vote], (streamed, vote)  # one vote chunk, the same seeded choices
