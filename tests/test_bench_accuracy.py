"""Sweep specs, s1 metrics, the sampler's wire handling, resumability and the CLI.

The end-to-end tests run the CLI against a small in-process imitation of the budgetforce wire
format (uvicorn on a free port), so they need no model and take seconds.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from budgetforce.bench import accuracy, reporting, store, sweep
from budgetforce.bench.cli import app
from budgetforce.bench.evals import load_eval
from budgetforce.bench.sampler import ChatSampler, RequestRejected, budget_fields
from budgetforce.bench.types import (
    MODE_FIELD_NAMES,
    MODE_REPORT_KEYS,
    BenchError,
    BudgetSettings,
    Eval,
    Example,
    MessageList,
    SamplerResponse,
)

runner = CliRunner()


# --- sweep specification -------------------------------------------------------------------


def test_parse_specs() -> None:
    assert sweep.parse_int_list("512, 1024", "--max") == [512, 1024]
    assert sweep.parse_pairs("256:512,512:1024", "--min-max") == [(256, 512), (512, 1024)]
    for bad in ("512,x", "-1", "1.5"):
        with pytest.raises(BenchError, match="`--max` expects"):
            sweep.parse_int_list(bad, "--max")
    for bad in ("256-512", "256:", "a:b"):
        with pytest.raises(BenchError, match="MIN:MAX"):
            sweep.parse_pairs(bad, "--min-max")
    with pytest.raises(BenchError, match="exceeds"):
        sweep.parse_pairs("600:500", "--min-max")


def test_sweep_points_cross_wait_strings_and_strategies() -> None:
    spec = sweep.SweepSpec(
        baseline=True, max_only=[512], min_max=[(256, 512)], waits=[2], wait_strings=["Wait", "Hmm"],
        strategies=["engine", "rounds"],
    )  # fmt: skip
    labels = [p.label for p in spec.points(max_tokens=4096)]
    assert labels == [
        "baseline",
        "max=512,strategy=engine",
        "max=512,strategy=rounds",
        "min=256,max=512,wait=Wait,strategy=engine",
        "min=256,max=512,wait=Wait,strategy=rounds",
        "min=256,max=512,wait=Hmm,strategy=engine",
        "min=256,max=512,wait=Hmm,strategy=rounds",
        "min=4095,waits=2,wait=Wait,strategy=engine",
        "min=4095,waits=2,wait=Wait,strategy=rounds",
        "min=4095,waits=2,wait=Hmm,strategy=engine",
        "min=4095,waits=2,wait=Hmm,strategy=rounds",
    ]


def test_empty_sweep_is_refused() -> None:
    with pytest.raises(BenchError, match="empty sweep"):
        sweep.SweepSpec().points(max_tokens=100)


def test_budget_fields_per_backend() -> None:
    budget = BudgetSettings(
        min_thinking_tokens=8, max_thinking_tokens=64, max_waits=2, wait_strings=("Hmm",), strategy="rounds"
    )
    assert budget_fields(budget, "budgetforce") == {
        "min_thinking_tokens": 8, "max_thinking_tokens": 64, "max_waits": 2, "wait_strings": ["Hmm"],
        "budget_strategy": "rounds",
    }  # fmt: skip
    assert budget_fields(BudgetSettings(max_thinking_tokens=64), "vllm") == {"thinking_token_budget": 64}
    assert budget_fields(BudgetSettings(), "vllm") == {}
    with pytest.raises(BenchError, match="only a maximum"):
        budget_fields(budget, "vllm")


# --- points of the thinking modes beyond s1 ----------------------------------------------

PROBE_POINT = (
    '{"probe_every": 16, "probe_agree": 2, "probe_lead": "\\n\\nThe answer is", '
    '"min_thinking_tokens": 128, "max_thinking_tokens": 256}'
)
LONG_INTERVENTION = "I must answer in one sentence and check the arithmetic once, "


def test_parse_point_takes_s1_and_mode_fields() -> None:
    point = sweep.parse_point(PROBE_POINT)
    assert point == BudgetSettings(
        min_thinking_tokens=128, max_thinking_tokens=256, probe_every=16, probe_agree=2, probe_lead="\n\nThe answer is"
    )
    assert point.label == "min=128,max=256,probe=16x2,lead='\\n\\nThe answer is'"
    assert point.modes == ("early_exit",) and not point.is_baseline and point.has_s1_budget
    nowait = sweep.parse_point('{"banned_thinking_strings": ["Wait", "Hmm"], "budget_strategy": "rounds"}')
    assert nowait == BudgetSettings(banned_thinking_strings=("Wait", "Hmm"), strategy="rounds")
    assert sweep.parse_point("{}").is_baseline


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{oops", "`--point` is not JSON"),
        ('{"max_thinking_tokens": 512,}', "`--point` is not JSON"),
        ("[512]", "must be a JSON object"),
        ('{"probe_evry": 16}', "unknown field `probe_evry` (did you mean `probe_every`?)"),
        ('{"thinking_token_budget": 16}', "unknown field `thinking_token_budget`"),
        ('{"strategy": "engine", "budget_strategy": "rounds"}', "both `budget_strategy` and `strategy`"),
        ('{"wait_decay": "exponential"}', "`wait_decay`: Input should be 'linear' or 'constant'"),
        ('{"banned_thinking_strings": "Wait"}', "a list (a JSON array)"),
        ('{"max_answer_tokens": -1}', "`max_answer_tokens`"),
        ('{"min_thinking_tokens": 9, "max_thinking_tokens": 3}', "exceeds"),
    ],
)
def test_parse_point_errors_are_readable(spec: str, message: str) -> None:
    with pytest.raises(BenchError) as excinfo:
        sweep.parse_point(spec)
    assert message in str(excinfo.value)


def test_mode_labels_are_short_stable_and_unique() -> None:
    expected = {
        BudgetSettings(banned_thinking_strings=("Wait",)): "nowait=Wait",
        BudgetSettings(banned_thinking_strings=("Wait", " Hmm", "Let me")): "nowait=Wait|' Hmm'|'Let me'",
        BudgetSettings(max_answer_tokens=32): "answer<=32",
        BudgetSettings(max_thinking_tokens=990, max_answer_tokens=32): "max=990,answer<=32",
        BudgetSettings(thinking_intervention="Be brief.", intervention_at=0): "intervene@0='Be brief.'",
        BudgetSettings(thinking_intervention="Be brief."): "intervene='Be brief.'",
        BudgetSettings(
            alpha_moment_tokens=120, wait_probability=0.5, wait_decay="linear", paragraph_breaks=("\n",)
        ): "alpha@120,p=0.5,linear,breaks='\\n'",
        BudgetSettings(max_thinking_tokens=4000, alpha=1.4): "max=4000,alpha=1.4",
        BudgetSettings(probe_every=16, probe_agree=2): "probe=16x2",
        BudgetSettings(probe_every=16, probe_max_tokens=8): "probe=16,probe_max=8",
        BudgetSettings(min_thinking_tokens=8, max_waits=1, banned_thinking_strings=("Hmm",), wait_strings=("Wait",),
                       strategy="engine"): "min=8,waits=1,nowait=Hmm,wait=Wait,strategy=engine",
    }  # fmt: skip
    assert {point: point.label for point in expected} == expected
    # the same point always gets the same label (it is the resume key), from any field order
    assert sweep.parse_point('{"probe_agree": 2, "probe_every": 16}').label == "probe=16x2"
    # long free text is cut, with a digest of the whole: a shared start does not merge two points
    a = BudgetSettings(thinking_intervention=LONG_INTERVENTION + "then answer.", intervention_at=0)
    b = BudgetSettings(thinking_intervention=LONG_INTERVENTION + "then stop.", intervention_at=0)
    assert a.label.startswith("intervene@0='I must answer in one sen…'~") and len(a.label) < 48
    assert a.label != b.label and a.label == a.model_copy().label
    many = [f"word{i}" for i in range(20)]
    banned = [BudgetSettings(banned_thinking_strings=(*many, last)) for last in ("x", "y")]
    assert banned[0].label != banned[1].label and len(banned[0].label) < 64
    distinct = [
        *expected, a, b, *banned, BudgetSettings(), BudgetSettings(alpha=1.0, max_thinking_tokens=10),
        BudgetSettings(alpha_moment_tokens=1, max_thinking_tokens=10), BudgetSettings(max_thinking_tokens=10),
        BudgetSettings(probe_lead=" The answer is", probe_every=16), BudgetSettings(answer_prefix="x"),
    ]  # fmt: skip
    assert len({p.label for p in distinct}) == len(distinct)
    assert [p for p in distinct if p.is_baseline] == [BudgetSettings()]


def test_points_with_a_shared_label_are_refused() -> None:
    with pytest.raises(BenchError, match="share the label"):
        sweep.check_labels([BudgetSettings(wait_strings=("a|b",)), BudgetSettings(wait_strings=("a", "b"))])


def test_bench_knows_every_mode_field_and_report_key_of_the_server() -> None:
    from budgetforce.core.budget import NEW_FIELDS, REPORT_KEYS

    assert set(MODE_FIELD_NAMES) == set(NEW_FIELDS)
    assert set(MODE_REPORT_KEYS) == {key for keys in REPORT_KEYS.values() for key in keys}


def test_point_option_adds_points_after_the_sweep() -> None:
    extra = [sweep.parse_point(PROBE_POINT), BudgetSettings(max_thinking_tokens=512)]
    spec = sweep.SweepSpec(max_only=[512, 1024], strategies=["engine"], extra=extra)
    labels = [p.label for p in spec.points(max_tokens=4096)]
    assert labels == [
        "max=512,strategy=engine",
        "max=1024,strategy=engine",
        "min=128,max=256,probe=16x2,lead='\\n\\nThe answer is'",  # as given: not crossed with --strategy
        "max=512",
    ]
    assert [p.label for p in sweep.SweepSpec(extra=extra[:1]).points(max_tokens=4096)] == [labels[2]]


def test_budget_fields_send_modes_and_vllm_refuses_them() -> None:
    point = BudgetSettings(
        max_thinking_tokens=4000, alpha=0.5, wait_probability=0.3, wait_decay="constant", paragraph_breaks=("\n\n",),
        banned_thinking_strings=("Hmm",), thinking_intervention="Be brief.", intervention_at=5, max_answer_tokens=64,
    )  # fmt: skip
    assert budget_fields(point, "budgetforce") == {
        "max_thinking_tokens": 4000, "alpha": 0.5, "wait_probability": 0.3, "wait_decay": "constant",
        "paragraph_breaks": ["\n\n"], "banned_thinking_strings": ["Hmm"], "thinking_intervention": "Be brief.",
        "intervention_at": 5, "max_answer_tokens": 64,
    }  # fmt: skip
    probe = sweep.parse_point(PROBE_POINT)
    assert budget_fields(probe, "budgetforce") == {
        "min_thinking_tokens": 128, "max_thinking_tokens": 256, "probe_every": 16, "probe_agree": 2,
        "probe_lead": "\n\nThe answer is",
    }  # fmt: skip
    for mode_point in (point, probe, BudgetSettings(max_thinking_tokens=64, max_answer_tokens=8)):
        with pytest.raises(BenchError, match="backend `vllm` has none of budgetforce's thinking modes"):
            budget_fields(mode_point, "vllm")


# --- s1 metrics ----------------------------------------------------------------------------


def test_scaling_is_the_mean_pairwise_slope() -> None:
    # slopes in points per 1k tokens: (1000->2000) 10, (1000->4000) 10/3, (2000->4000) 0
    assert reporting.scaling([(2000, 0.6), (1000, 0.5), (4000, 0.6)]) == pytest.approx((10 + 10 / 3 + 0) / 3)
    assert reporting.scaling([(1000, 0.5), (1000, 0.7)]) is None
    assert reporting.scaling([(1000, 0.5)]) is None


def row(point: BudgetSettings, score: float, tokens: int, waits: int = 0, forced: bool = False) -> dict[str, Any]:
    return {
        "key": f"{point.label}|{tokens}", "point": point.label, "score": score, "error": None,
        "thinking_tokens": tokens, "waits_inserted": waits, "forced_end": forced,
        "within_budget": point.within(tokens), "latency_s": 1.0,
    }  # fmt: skip


def test_summary_control_scaling_performance_on_known_numbers() -> None:
    small, large = (
        BudgetSettings(max_thinking_tokens=1000),
        BudgetSettings(min_thinking_tokens=1500, max_thinking_tokens=3000),
    )
    rows = [
        row(small, 1, 800),
        row(small, 0, 1200, forced=True),
        row(large, 1, 2000, waits=1),
        row(large, 1, 3000, waits=2),
    ]
    summary = reporting.summarize(rows, [small, large])
    first, second = summary["points"]
    assert (first["accuracy"], first["mean_thinking_tokens"], first["control"], first["forced_end_rate"]) == (
        0.5,
        1000,
        0.5,
        0.5,
    )
    assert (second["accuracy"], second["median_thinking_tokens"], second["mean_waits"], second["control"]) == (
        1.0,
        2500,
        1.5,
        1.0,
    )
    s1 = summary["s1"]["all"]
    assert s1["control"] == 0.75
    assert s1["scaling_pct_per_1k_tokens"] == pytest.approx(50 / 1.5)  # +50 points over 1500 tokens
    assert s1["performance"] == 1.0
    assert "| max=1000 | 2 | 0 | 50.0 |" in reporting.markdown_table(summary)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    points = [BudgetSettings(), BudgetSettings(max_thinking_tokens=1000), BudgetSettings(max_thinking_tokens=3000)]
    rows = [row(points[0], 1, 2500), row(points[1], 0, 900), row(points[2], 1, 2000)]
    paths = reporting.write_reports(reporting.summarize(rows, points), tmp_path, "test")
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")
    assert json.loads(paths["summary"].read_text())["s1"]["all"]["points"] == 2


def mode_row(point: BudgetSettings, score: float, tokens: int, **report: Any) -> dict[str, Any]:
    return {
        **row(point, score, tokens),
        "within_budget": point.within(tokens) if point.has_s1_budget else None,
        **report,
    }


def test_summary_has_the_modes_columns_only_when_some_point_has_them(tmp_path: Path) -> None:
    s1_point = BudgetSettings(max_thinking_tokens=1000)
    s1_rows = [row(s1_point, 1, 800), row(s1_point, 0, 1000, forced=True)]
    plain = reporting.markdown_table(reporting.summarize(s1_rows, [s1_point]))
    assert plain.splitlines()[0] == (
        "| point | n | errors | accuracy % | mean think | median think | mean waits | forced end % | control % |"
    )
    probe, alpha, elastic = (
        sweep.parse_point(PROBE_POINT),
        BudgetSettings(alpha_moment_tokens=120, wait_probability=0.5),
        BudgetSettings(max_answer_tokens=32),
    )
    rows = [
        *s1_rows,
        mode_row(probe, 1, 128, early_exit=True, probes=8, probe_tokens=40),
        mode_row(probe, 1, 256, early_exit=False, probes=16, probe_tokens=80),
        mode_row(alpha, 0, 400, scheduled_waits=3),
        mode_row(alpha, 1, 600, scheduled_waits=1),
        mode_row(elastic, 1, 900, answer_tokens=20, answer_truncated=False),
        mode_row(elastic, 0, 950, answer_tokens=32, answer_truncated=True),
        mode_row(elastic, 0, 960, answer_tokens=32, answer_truncated=True),
        mode_row(elastic, 1, 970, answer_tokens=12, answer_truncated=False),
    ]
    points = [s1_point, probe, alpha, elastic]
    summary = reporting.summarize(rows, points)
    by_point = {e["point"]: e for e in summary["points"]}
    p, a, e = by_point[probe.label], by_point["alpha@120,p=0.5"], by_point["answer<=32"]
    assert (p["accuracy"], p["mean_thinking_tokens"], p["early_exit_rate"], p["mean_probes"]) == (1.0, 192, 0.5, 12)
    assert p["mean_probe_tokens"] == 60 and p["mean_scheduled_waits"] is None and p["series"] == "mode:early_exit"
    assert (a["mean_scheduled_waits"], a["accuracy"], a["control"]) == (2, 0.5, None)
    assert (e["mean_answer_tokens"], e["answer_truncated_rate"], e["mode"]) == (24, 0.5, ["answer_budget"])
    assert by_point["max=1000"]["mean_probes"] is None and by_point["max=1000"]["mode"] == []
    assert summary["s1"]["all"]["points"] == 1  # s1's metrics over s1's points; the modes' series apart
    assert set(summary["s1"]) == {"all", "default", "mode:early_exit", "mode:scheduled_waits", "mode:answer_budget"}
    table = reporting.markdown_table(summary)
    header = table.splitlines()[0]
    assert header.endswith(
        "| control % | sched waits | early exit % | probes | probe tok | answer tok | answer cut % |"
    )  # intervened % is left out: no point reports it
    assert "| answer<=32 | 4 | 0 | 50.0 | 945 | 955 | 0 | 0.0 | - | - | - | - | - | 24 | 50.0 |" in table
    assert f"| {probe.label} | 2 | 0 | 100.0 | 192 | 192 | 0 | 0.0 | 100.0 | - | 50.0 | 12 | 60 | - | - |" in table
    paths = reporting.write_reports(summary, tmp_path, "modes")
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")
    assert json.loads(paths["summary"].read_text())["points"][1]["early_exit_rate"] == 0.5


# --- sampler ------------------------------------------------------------------------------


def completion(
    content: str, reasoning: str | None = None, usage_tokens: int | None = None, budget: dict | None = None
) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
    if budget is not None:
        choice["budget"] = budget
    usage: dict[str, Any] = {"prompt_tokens": 5, "completion_tokens": 20}
    if usage_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": usage_tokens}
    return {"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage}


def mock_sampler(handler: Any, **kwargs: Any) -> ChatSampler:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ChatSampler("http://test/v1", "m", client=client, backoff_s=0.0, **kwargs)


def test_sampler_sends_budget_and_reads_usage() -> None:
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        budget = {"thinking_tokens": 11, "waits_inserted": 1, "forced_end": False, "strategy": "engine"}
        return httpx.Response(200, json=completion("\\boxed{4}", "think", usage_tokens=12, budget=budget))

    sampler = mock_sampler(handler, max_tokens=100)
    result = asyncio.run(sampler([{"role": "user", "content": "q"}], BudgetSettings(min_thinking_tokens=10)))
    assert sent[0]["max_completion_tokens"] == 100 and sent[0]["min_thinking_tokens"] == 10
    assert result.request == sent[0]
    assert (result.content, result.reasoning, result.thinking_tokens, result.thinking_tokens_source) == (
        "\\boxed{4}",
        "think",
        12,
        "usage",
    )
    assert (result.waits_inserted, result.forced_end) == (1, False)


def test_sampler_keeps_the_modes_report_keys_and_sample_rows_write_them() -> None:
    sent: list[dict] = []
    report = {
        "thinking_tokens": 48, "waits_inserted": 0, "forced_end": False, "strategy": "engine", "early_exit": True,
        "probes": 3, "probe_tokens": 27, "answer_tokens": 7, "answer_truncated": False, "intervened": True,
        "scheduled_waits": 2, "exit_tokens_saved": 11,
    }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=completion("4", "think", usage_tokens=48, budget=report))

    point = sweep.parse_point(PROBE_POINT)
    result = asyncio.run(mock_sampler(handler)([{"role": "user", "content": "2+2"}], point))
    assert sent[0]["probe_every"] == 16 and sent[0]["probe_lead"] == "\n\nThe answer is"
    assert {key: getattr(result, key) for key in MODE_REPORT_KEYS} == {key: report[key] for key in MODE_REPORT_KEYS}
    eval_ = ArithmeticEval(3)
    sample = accuracy.sample_row("k", eval_, point, Example("1", "2+2", "4"), 0, result)
    assert {key: sample[key] for key in MODE_REPORT_KEYS} == {key: report[key] for key in MODE_REPORT_KEYS}
    assert sample["point"] == point.label and sample["budget"]["probe_agree"] == 2 and sample["score"] == 1.0
    # a response without the keys (an s1 point) leaves them None
    plain = SamplerResponse(request={}, response={}, content="4", thinking_tokens=10)
    assert all(v is None for k, v in accuracy.sample_row("k", eval_, point, Example("1", "2+2", "4"), 0, plain).items()
               if k in MODE_REPORT_KEYS)  # fmt: skip


def test_sampler_vllm_backend_splits_think_tags_and_counts_with_tokenizer() -> None:
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=completion("<think>a b c</think>The answer is 4."))

    sampler = mock_sampler(handler, backend="vllm", max_tokens=50, count_tokens=lambda text: len(text.split()))
    result = asyncio.run(sampler([{"role": "user", "content": "q"}], BudgetSettings(max_thinking_tokens=32)))
    assert sent[0]["thinking_token_budget"] == 32 and sent[0]["max_tokens"] == 50
    assert (result.reasoning, result.content) == ("a b c", "The answer is 4.")
    assert (result.thinking_tokens, result.thinking_tokens_source) == (3, "tokenizer")


def test_sampler_retries_transient_errors_and_refuses_client_errors() -> None:
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json=completion("ok", "r", usage_tokens=1))

    result = asyncio.run(mock_sampler(flaky)([], BudgetSettings()))
    assert result.error is None and result.attempts == 3

    def always_busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"message": "slow down"}})

    result = asyncio.run(mock_sampler(always_busy, max_retries=1)([], BudgetSettings()))
    assert result.error == "HTTP 429: slow down" and result.attempts == 2

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "`max_waits` must be >= 0", "param": "max_waits"}})

    with pytest.raises(RequestRejected, match="max_waits"):
        asyncio.run(mock_sampler(bad)([], BudgetSettings()))


# --- resumability --------------------------------------------------------------------------


class ArithmeticEval(Eval):
    name = "arith"

    def __init__(self, n: int) -> None:
        super().__init__([Example(id=str(i), question=f"{i}+1", answer=str(i + 1)) for i in range(n)])

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return float(response_text == reference), response_text


class CountingSampler:
    """Answers right when the budget allows >= 100 thinking tokens; fails on chosen questions."""

    def __init__(self, fail: set[str] = frozenset(), reject: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.seeds: list[int | None] = []
        self.fail, self.reject = fail, reject

    async def __call__(self, messages: MessageList, budget: BudgetSettings, seed: int | None = None) -> SamplerResponse:
        question = messages[0]["content"]
        self.calls.append((budget.label, question))
        self.seeds.append(seed)
        await asyncio.sleep(0)
        if question in self.reject:
            raise RequestRejected("bad request")
        if question in self.fail:
            return SamplerResponse(request={}, response=None, error="HTTP 503: busy")
        tokens = budget.max_thinking_tokens or 150
        answer = str(int(question.split("+")[0]) + 1) if tokens >= 100 else "0"
        return SamplerResponse(request={"q": question}, response={}, content=answer, thinking_tokens=tokens)


def test_sweep_resumes_after_a_crash_and_retries_errors(tmp_path: Path) -> None:
    eval_ = ArithmeticEval(3)
    points = [BudgetSettings(max_thinking_tokens=50), BudgetSettings(max_thinking_tokens=200)]
    first = CountingSampler(fail={"2+1"})
    rows = asyncio.run(accuracy.run_sweep(eval_, first, points, tmp_path, concurrency=2, progress=False))
    assert len(first.calls) == 6 and sum(r["error"] is not None for r in rows) == 2
    # Simulate a crash mid-write: drop the last finished line and leave half a line behind.
    path = tmp_path / store.SAMPLES_FILE
    lines = path.read_text().splitlines(keepends=True)
    good = [line for line in lines if json.loads(line)["error"] is None]
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    second = CountingSampler()
    rows = asyncio.run(accuracy.run_sweep(eval_, second, points, tmp_path, concurrency=2, progress=False))
    redone = {json.loads(line)["key"] for line in lines[-1:]} | {r["key"] for r in map(json.loads, lines) if r["error"]}
    assert {f"{label}|{q.split('+')[0]}|0" for label, q in second.calls} == redone
    assert len(rows) == 6 and all(r["error"] is None for r in rows) and len(good) >= 3
    summary = reporting.summarize(rows, points)
    assert [e["accuracy"] for e in summary["points"]] == [0.0, 1.0]
    third = CountingSampler()
    asyncio.run(accuracy.run_sweep(eval_, third, points, tmp_path, progress=False))
    assert third.calls == []


def test_sweep_of_mode_points_resumes_by_their_labels(tmp_path: Path) -> None:
    eval_ = ArithmeticEval(2)
    start = "I must answer in one sentence and check the arithmetic once, "
    points = [
        BudgetSettings(max_thinking_tokens=200, banned_thinking_strings=("Wait",)),
        BudgetSettings(thinking_intervention=start + "then answer.", intervention_at=0),
        sweep.parse_point(PROBE_POINT),
    ]
    first = CountingSampler(fail={"1+1"})
    asyncio.run(accuracy.run_sweep(eval_, first, points, tmp_path, progress=False))
    assert len(first.calls) == 6
    rows = store.read_samples(tmp_path / store.SAMPLES_FILE)
    assert {r["point"] for r in rows} == {p.label for p in points}
    assert rows[0]["key"].startswith(rows[0]["point"] + "|")
    # rerun: only the failed samples; then an intervention sharing the cut label's start runs anew
    second = CountingSampler()
    asyncio.run(accuracy.run_sweep(eval_, second, points, tmp_path, progress=False))
    assert sorted(second.calls) == sorted((p.label, "1+1") for p in points)
    other = BudgetSettings(thinking_intervention=start + "then stop.", intervention_at=0)
    third = CountingSampler()
    rows = asyncio.run(accuracy.run_sweep(eval_, third, [*points, other], tmp_path, progress=False))
    assert sorted(third.calls) == [(other.label, "0+1"), (other.label, "1+1")]
    assert len(rows) == 8 and all(r["error"] is None for r in rows)


def test_rejected_request_stops_the_sweep_and_keeps_finished_samples(tmp_path: Path) -> None:
    eval_ = ArithmeticEval(4)
    sampler = CountingSampler(reject={"3+1"})
    with pytest.raises(RequestRejected):
        asyncio.run(accuracy.run_sweep(eval_, sampler, [BudgetSettings()], tmp_path, concurrency=1, progress=False))
    kept = store.read_samples(tmp_path / store.SAMPLES_FILE)
    assert [r["example_id"] for r in kept] == ["0", "1", "2"]


def test_resuming_with_another_configuration_is_refused(tmp_path: Path) -> None:
    config = store.RunConfig(
        eval="gsm8k", model="a", backend="budgetforce", max_tokens=10, temperature=0, prompt_template="{question}"
    )
    store.check_run_config(tmp_path, config)
    store.check_run_config(tmp_path, config)
    with pytest.raises(BenchError, match="model: 'a' -> 'b'"):
        store.check_run_config(tmp_path, config.model_copy(update={"model": "b"}))


# --- CLI errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["accuracy", "--eval", "aime2024", "--max", "512"], "not shipped"),
        (["accuracy", "--eval", "aime2025", "--data-path", "/nonexistent.jsonl", "--max", "512"], "does not exist"),
        (["accuracy", "--max", "512,lots"], "`--max` expects"),
        (["accuracy", "--min-max", "512-1024"], "MIN:MAX"),
        (["accuracy"], "empty sweep"),
        (["accuracy", "--backend", "vllm", "--min", "100"], "only a maximum"),
        (["accuracy", "--backend", "vllm", "--point", '{"max_answer_tokens": 8}'], "thinking modes"),
        (["accuracy", "--point", "{oops"], "`--point` is not JSON"),
        (["accuracy", "--max", "64", "--point", '{"probe_evry": 16}'], "unknown field `probe_evry`"),
        (["accuracy", "--backend", "sglang", "--max", "1"], "`--backend` must be"),
        (["accuracy", "--strategy", "gpu", "--max", "1"], "`--strategy` must be"),
        (["accuracy", "--eval", "nope", "--max", "1"], "unknown eval"),
        (["accuracy", "--votes", "2"], "set --temperature"),
        (["accuracy", "--backend", "vllm", "--votes", "2", "--temperature", "0.6"], "no vote over choices"),
        (["accuracy", "--max", "1", "--base-url", "http://127.0.0.1:9/v1"], "cannot reach"),
        (["load", "--concurrency", "1,x"], "`--concurrency` expects"),
        (["load", "--min-thinking", "9", "--max-thinking", "3"], "exceeds"),
        (["load", "--extra-body", "{oops"], "not JSON"),
    ],
)
def test_cli_errors_are_one_readable_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# --- end to end against an imitation server ------------------------------------------------

NATURAL_THINKING = 40  # the imitation model's own thinking length


def imitation_mode_report(body: dict[str, Any]) -> dict[str, Any]:
    """The keys the modes a request uses add to its `budget` report (made-up numbers, per mode)."""
    report: dict[str, Any] = {}
    if body.get("probe_every") is not None:
        report.update(early_exit=True, probes=2, probe_tokens=2 * body.get("probe_max_tokens", 16))
    if body.get("max_answer_tokens") is not None:
        report.update(answer_tokens=min(5, body["max_answer_tokens"]), answer_truncated=body["max_answer_tokens"] < 5)
    if body.get("alpha") is not None or body.get("alpha_moment_tokens") is not None:
        report["scheduled_waits"] = 3
    if body.get("thinking_intervention") is not None:
        report["intervened"] = True
    return report


def imitation_app() -> FastAPI:
    """The budgetforce wire format over a fake model that answers "a+b" right iff it thinks >= 40 tokens."""
    api = FastAPI()

    @api.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "imitation", "object": "model"}]}

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if body.get("max_waits", 0) < 0:
            return JSONResponse(
                {"error": {"message": "bad", "type": "invalid_request_error", "param": "max_waits", "code": None}}, 400
            )
        lo, hi = body.get("min_thinking_tokens") or 0, body.get("max_thinking_tokens") or 10**6
        thinking = min(max(NATURAL_THINKING, lo), hi)
        waits = 1 if lo > NATURAL_THINKING else 0
        question = body["messages"][-1]["content"]
        if question.startswith("What is "):
            a, b = (int(x) for x in question.removeprefix("What is ").split("?")[0].split("+"))
            answer = f"The answer is {a + b if thinking >= NATURAL_THINKING else 0}."
        else:
            answer = "alpha"
        reasoning = "hm " * thinking
        usage = {
            "prompt_tokens": 9,
            "completion_tokens": thinking + 5,
            "completion_tokens_details": {"reasoning_tokens": thinking},
        }
        budget = {
            "thinking_tokens": thinking,
            "waits_inserted": waits,
            "forced_end": thinking < NATURAL_THINKING,
            "strategy": "engine",
        }
        budget.update(imitation_mode_report(body))
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer, "reasoning_content": reasoning, "reasoning": reasoning}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "budget": budget}
            return {"id": "c", "object": "chat.completion", "model": "imitation", "usage": usage, "choices": [choice]}

        async def events() -> Any:
            for _ in range(min(body.get("max_completion_tokens", 8), 8)):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'reasoning_content': 'hm '}}]})}\n\n"
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': answer}}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 9, 'completion_tokens': 9}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return api


@pytest.fixture(scope="module")
def imitation_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(imitation_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)


def test_cli_accuracy_end_to_end_and_resume(imitation_url: str, tmp_path: Path) -> None:
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"What is {i}+{i}?", "a": str(2 * i), "id": f"s{i}"}) + "\n" for i in range(1, 5))
    )
    out = tmp_path / "run"
    args = [
        "accuracy", "--base-url", imitation_url, "--eval", "jsonl", "--data-path", str(data), "--question-field", "q",
        "--answer-field", "a", "--id-field", "id", "--grader", "integer", "--max", "20,80", "--min-max", "60:80",
        "--baseline", "--out", str(out), "--no-progress", "-c", "3",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / reporting.SUMMARY_FILE).read_text())
    by_point = {e["point"]: e for e in summary["points"]}
    assert by_point["max=20"]["accuracy"] == 0.0 and by_point["max=80"]["accuracy"] == 1.0
    assert by_point["min=60,max=80"]["mean_thinking_tokens"] == 60 and by_point["min=60,max=80"]["mean_waits"] == 1
    assert summary["s1"]["all"]["control"] == 1.0 and summary["s1"]["all"]["performance"] == 1.0
    assert (out / reporting.PLOT_FILE).exists() and len((out / store.SAMPLES_FILE).read_text().splitlines()) == 16
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and len((out / store.SAMPLES_FILE).read_text().splitlines()) == 16
    other = runner.invoke(app, [*args, "--temperature", "0.5"])
    assert other.exit_code == 2 and "different run" in other.output


def test_cli_accuracy_with_points_alone(imitation_url: str, tmp_path: Path) -> None:
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {i}+1?", "a": str(i + 1)}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    args = [
        "accuracy", "--base-url", imitation_url, "--eval", "jsonl", "--data-path", str(data), "--question-field", "q",
        "--answer-field", "a", "--grader", "integer", "--out", str(out), "--no-progress",
        "--point", '{"probe_every": 16, "probe_agree": 2, "probe_max_tokens": 4, "max_thinking_tokens": 20}',
        "--point", '{"max_answer_tokens": 3}', "--point", '{"alpha_moment_tokens": 30, "wait_probability": 0.5}',
    ]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / reporting.SUMMARY_FILE).read_text())
    assert [e["point"] for e in summary["points"]] == ["max=20,probe=16x2,probe_max=4", "answer<=3", "alpha@30,p=0.5"]
    probe, elastic, alpha = summary["points"]
    assert (probe["accuracy"], probe["early_exit_rate"], probe["mean_probes"], probe["mean_probe_tokens"]) == (
        0.0, 1.0, 2, 8
    )  # fmt: skip
    assert (elastic["accuracy"], elastic["mean_answer_tokens"], elastic["answer_truncated_rate"]) == (1.0, 3, 1.0)
    assert (alpha["mean_scheduled_waits"], alpha["mean_probes"]) == (3, None)
    samples = store.read_samples(out / store.SAMPLES_FILE)
    assert len(samples) == 9 and all(s["request"]["probe_every"] == 16 for s in samples if "probe" in s["point"])
    assert {s["request"].get("max_answer_tokens") for s in samples if s["point"] == "answer<=3"} == {3}
    table = (out / reporting.TABLE_FILE).read_text()
    assert "early exit %" in table and "answer cut %" in table and "intervened %" not in table
    assert "early exit %" in result.output and (out / reporting.PLOT_FILE).exists()
    rerun = runner.invoke(app, [*args, "--point", '{"thinking_intervention": "Be brief."}'])
    assert rerun.exit_code == 0, rerun.output
    assert len(store.read_samples(out / store.SAMPLES_FILE)) == 12  # only the new point ran
    summary = json.loads((out / reporting.SUMMARY_FILE).read_text())
    assert summary["s1"]["all"]["points"] == 0 and summary["s1"]["mode:intervention"]["points"] == 1
    assert summary["points"][-1]["point"] == "intervene='Be brief.'" and summary["points"][-1]["intervened_rate"] == 1


def test_cli_load_end_to_end(imitation_url: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    args = [
        "load",
        "--base-url",
        imitation_url,
        "-c",
        "1,2",
        "-n",
        "4",
        "--output-len",
        "6",
        "--max-thinking",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["ok"] == 4 and level["errors"] == 0 and level["output_tokens"] == 36
        assert level["ttft_ms_p50"] > 0 and level["itl_ms_p99"] >= level["itl_ms_p50"] > 0
    assert report["config"]["budget"]["max_thinking_tokens"] == 4


def test_gsm8k_eval_prompts_ask_for_a_boxed_answer() -> None:
    eval_ = load_eval("gsm8k", num_examples=2)
    assert eval_.messages(eval_.examples[0])[0]["content"].endswith("within \\boxed{}.")


def test_every_sample_gets_its_own_stable_seed() -> None:
    """Repeats of one problem draw differently; a resumed sample draws what it would have drawn."""
    from budgetforce.bench.store import sample_seed

    point = BudgetSettings(min_thinking_tokens=10)
    example = Example("e1", "1+1", "2")
    keys = [store.sample_key(point, example, r) for r in range(8)]
    seeds = [sample_seed(k) for k in keys]
    assert len(set(seeds)) == 8
    assert seeds == [sample_seed(k) for k in keys]


# --- the vote: n thinkings per sample, graded on their majority -------------------------------


def test_vote_points_label_validate_and_send_the_vote_fields() -> None:
    spec = sweep.SweepSpec(baseline=True, votes=[2, 4], extra=[sweep.parse_point(
        '{"n": 4, "budget_aggregate": "vote", "vote_grader": "math", "total_thinking_tokens": 400}')])  # fmt: skip
    points = spec.points(max_tokens=1024)
    assert [p.label for p in points] == ["baseline", "vote2", "vote4", "vote4=math,total=400"]
    assert points[1].votes and not points[1].has_s1_budget and not points[0].votes
    assert budget_fields(points[3], "budgetforce") == {
        "n": 4, "budget_aggregate": "vote", "vote_grader": "math", "total_thinking_tokens": 400,
    }  # fmt: skip
    with pytest.raises(BenchError, match="no vote over choices"):
        budget_fields(points[1], "vllm")
    for spec_, message in (
        ('{"n": 4}', 'goes with `budget_aggregate: "vote"`'),
        ('{"budget_aggregate": "vote"}', "needs `n`"),
        ('{"n": 1, "budget_aggregate": "vote"}', "greater than or equal to 2"),
        ('{"vote_grader": "integer"}', 'qualifies `budget_aggregate: "vote"`'),
    ):
        with pytest.raises(BenchError, match=message):
            sweep.parse_point(spec_)
    with pytest.raises(BenchError, match="invalid --votes point"):
        sweep.SweepSpec(votes=[1]).points(max_tokens=100)


def vote_completion(answers: list[str], index: int | None, thinking: int) -> dict:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": a, "reasoning": "r"}, "finish_reason": "stop",
         "budget": {"thinking_tokens": 10 + i, "waits_inserted": 0, "forced_end": False, "strategy": "engine"}}
        for i, a in enumerate(answers)
    ]  # fmt: skip
    vote = {"answer": None, "votes": 2, "share": 0.5, "choices": len(answers), "index": index,
            "keys": [], "grader": "integer", "thinking_tokens": thinking}  # fmt: skip
    usage = {"prompt_tokens": 5, "completion_tokens": 80, "completion_tokens_details": {"reasoning_tokens": thinking}}
    return {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage, "vote": vote}


def test_a_vote_is_graded_on_the_majority_choice_and_counts_all_the_thinking(tmp_path: Path) -> None:
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=vote_completion(["1", "2", "2", "7"], index=1, thinking=46))

    class Integers(ArithmeticEval):
        vote_grader = "integer"

    point = BudgetSettings(n=4, budget_aggregate="vote")
    sampler = mock_sampler(handler)
    rows = asyncio.run(accuracy.run_sweep(Integers(1), sampler, [point], tmp_path, progress=False))
    # the eval's grader went out with the request; the point's label (the resume key) has none
    assert (sent[0]["n"], sent[0]["budget_aggregate"], sent[0]["vote_grader"]) == (4, "vote", "integer")
    [r] = rows
    assert (r["point"], r["score"], r["extracted_answer"]) == ("vote4", 0.0, "2")  # choice 1's answer, graded
    assert (r["thinking_tokens"], r["thinking_tokens_source"], r["vote_share"]) == (46, "vote", 0.5)
    assert r["within_budget"] is None and r["vote"]["index"] == 1
    entry = reporting.summarize(rows, [point])["points"][0]
    assert (entry["mode"], entry["series"], entry["mean_vote_share"], entry["mean_thinking_tokens"]) == (
        ["vote"], "mode:vote", 0.5, 46)  # fmt: skip
    # no choice stated an answer: graded on choice 0
    result = sampler.parse({}, vote_completion(["x", "1"], index=None, thinking=9))
    assert (result.content, result.thinking_tokens) == ("x", 9)
    assert "vote share %" in reporting.markdown_table(reporting.summarize(rows, [point])).splitlines()[0]
    reporting.plot(reporting.summarize(rows, [point, BudgetSettings(n=2, budget_aggregate="vote")]),
                   tmp_path / "p.png", "vote")  # fmt: skip
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_every_point_field_shows_in_the_label() -> None:
    """Labels are resume keys: a field left out of them would merge two points' samples."""
    values = {"wait_decay": "constant", "budget_aggregate": "vote", "vote_grader": "math", "strategy": "rounds"}
    labels: dict[str, list[str]] = collections.defaultdict(list)
    for name, field in BudgetSettings.model_fields.items():
        annotation = str(field.annotation)
        value = values.get(name) or (
            ("x",) if "tuple" in annotation else "x" if "str" in annotation else 0.5 if "float" in annotation else 3
        )
        fields = {name: value, **({"n": 2} if name in ("budget_aggregate", "vote_grader") else {})}
        fields |= {"budget_aggregate": "vote"} if name in ("n", "vote_grader") else {}
        if name in ("intervention_at",):
            fields["thinking_intervention"] = "x"
        labels[BudgetSettings(**fields).label].append(name)
    assert "baseline" not in labels and all(len(names) == 1 for names in labels.values()), labels
