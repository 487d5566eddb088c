"""`budgetforce bench accuracy` and `bench load` against the live server with the tiny model.

The tiny model's weights are random, so accuracy is whatever it is; these tests check the
harness end to end and the server's budget contract as the harness sees it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgetforce.bench import reporting, store
from budgetforce.bench.cli import app

pytestmark = pytest.mark.server
runner = CliRunner()


def test_bench_accuracy_live(live_server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "acc"
    args = [
        "accuracy", "--base-url", live_server_url, "--eval", "gsm8k", "-n", "2", "--max-tokens", "48",
        "--max", "16", "--min-max", "8:24", "--baseline", "--votes", "3", "--out", str(out), "--no-progress",
        "-c", "2", "--temperature", "0.6",  # sampled (a vote's choices would be identical greedy); seeded per sample
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = store.read_samples(out / store.SAMPLES_FILE)
    assert len(rows) == 8 and all(r["error"] is None for r in rows)
    assert all(r["thinking_tokens"] is not None for r in rows)
    for r in rows:
        if r["point"] == "max=16":
            assert r["thinking_tokens"] <= 16 and r["request"]["max_thinking_tokens"] == 16
        if r["point"] == "min=8,max=24":
            assert 8 <= r["thinking_tokens"] <= 24
        if r["point"] == "vote3":  # three choices, read by gsm8k's grader; graded on the majority's choice
            assert r["request"]["n"] == 3 and r["request"]["vote_grader"] == "integer"
            vote, choices = r["vote"], r["response"]["choices"]
            assert len(choices) == 3 and r["thinking_tokens"] == vote["thinking_tokens"]
            assert vote["thinking_tokens"] == sum(c["budget"]["thinking_tokens"] for c in choices)
            graded = choices[vote["index"] if vote["index"] is not None else 0]["message"]["content"]
            assert r["score"] == reporting_score(graded, r["correct_answer"])
    summary = json.loads((out / reporting.SUMMARY_FILE).read_text())
    assert summary["s1"]["all"]["control"] == 1.0
    assert (out / reporting.PLOT_FILE).exists()
    rerun = runner.invoke(app, args)  # everything done: nothing is sent again
    assert rerun.exit_code == 0 and len(store.read_samples(out / store.SAMPLES_FILE)) == 8


def reporting_score(text: str, reference: str) -> float:
    from budgetforce.core import graders

    return graders.grade_integer(reference, text)[0]


def test_bench_load_live(live_server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    args = [
        "load", "--base-url", live_server_url, "-c", "1,2", "-n", "2", "--input-len", "32", "--output-len", "16",
        "--max-thinking", "8", "--warmup", "0", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for level in report["levels"]:
        assert level["errors"] == 0, level["first_error"]
        assert level["ok"] == 2 and level["output_tokens"] > 0 and level["ttft_ms_p50"] is not None
