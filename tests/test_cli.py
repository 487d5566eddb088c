"""`budgetforce serve`: option parsing, defaults, readable mistakes, and a real start on the tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from budgetforce.cli import app

runner = CliRunner()


def test_help_lists_serve_and_bench() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "serve" in result.output
    assert "bench" in result.output
    serve_help = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    for option in ("--model", "--host", "--port", "--api-key", "--served-model-name", "--default-max-thinking-tokens",
                   "--reasoning-effort-budgets", "--dry-run", "passes through to vLLM"):  # fmt: skip
        assert option in serve_help.output, option
    assert "--legacy-server" not in serve_help.output


def test_serve_runs_vllms_server_with_the_budget_layer() -> None:
    """`budgetforce serve` is vLLM's server command line plus budgetforce's processor and middleware."""
    result = runner.invoke(
        app, ["serve", "--dry-run", "--max-num-seqs", "8", "--logits-processors", "my.mod:Proc",
              "--default-max-thinking-tokens", "64", "--api-key", "k"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    env, command = result.output.strip().splitlines()
    assert env == "BUDGETFORCE_DEFAULT_MAX_THINKING_TOKENS=64"
    for part in ("-m vllm.entrypoints.openai.api_server --model", "budgetforce/student/model", "--max-num-seqs 8",
                 "--logits-processors budgetforce.vllm:BudgetForcing my.mod:Proc",
                 "--middleware budgetforce.server.BudgetMiddleware", "--reasoning-parser deepseek_r1",
                 "--served-model-name budgetforce", "--api-key k", "--host 127.0.0.1 --port 8000"):  # fmt: skip
        assert part in command, part
    rounds = runner.invoke(app, ["serve", "--dry-run", "--default-budget-strategy", "rounds"])  # the layer runs s1's loop
    assert rounds.exit_code == 0 and "BUDGETFORCE_DEFAULT_BUDGET_STRATEGY=rounds" in rounds.output, rounds.output
    own_parser = runner.invoke(app, ["serve", "--dry-run", "--reasoning-parser", "qwen3", "--model", "x/y"])
    assert "--reasoning-parser qwen3" in own_parser.output and "deepseek_r1" not in own_parser.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--default-min-thinking-tokens", "10", "--default-max-thinking-tokens", "5"], "exceeds"),
        (["serve", "--default-budget-strategy", "fast"], "--default-budget-strategy"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--reasoning-effort-budgets", "{low"], "must be JSON"),
        (["serve", "--reasoning-effort-budgets", '{"huge": {}}'], "reasoning-effort-budgets"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_default_model_builds_a_tiny_one_until_the_student_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import budgetforce.student
    from budgetforce.student import default_model

    student, cache = tmp_path / "student", tmp_path / "tiny"
    student.mkdir()
    monkeypatch.setattr(budgetforce.student, "STUDENT_PATH", student)
    monkeypatch.setattr(budgetforce.student, "TINY_CACHE", cache)
    assert default_model() == cache and (cache / "config.json").exists()
    built = (cache / "model.safetensors").stat().st_mtime
    assert default_model() == cache and (cache / "model.safetensors").stat().st_mtime == built
    (student / "config.json").write_text("{}")
    assert default_model() == student


def test_cpu_engine_defaults(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetforce.server.launch import CPU_KV_CACHE_BYTES, cpu_dtype, vllm_command

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert cpu_dtype(tiny_r1) == "float32"
    cpu = vllm_command([], str(tiny_r1), "deepseek_r1", cpu=True, dtype="float32")
    assert cpu[-6:] == ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--dtype", "float32",
                        "--max-num-batched-tokens", "65536"]  # fmt: skip
    mine = ["--gpu-memory-utilization", "0.05", "--dtype=bfloat16", "--max_num_batched_tokens", "4096"]
    assert vllm_command(mine, str(tiny_r1), None, cpu=True, dtype="float32")[3:] == [
        "--model", str(tiny_r1), *mine, "--logits-processors", "budgetforce.vllm:BudgetForcing",
        "--middleware", "budgetforce.server.BudgetMiddleware",
    ]  # fmt: skip
    assert vllm_command([], "m", None, cpu=False)[-4:] == [
        "--logits-processors", "budgetforce.vllm:BudgetForcing", "--middleware", "budgetforce.server.BudgetMiddleware"
    ]


def test_scaled_front_ends_run_through_vllms_cli() -> None:
    """`--api-server-count`/`--data-parallel-size` above 1 need `vllm serve` (the module entry runs one API server)."""
    from budgetforce.server.launch import VLLM_SERVER, vllm_command

    assert vllm_command(["--api-server-count", "4"], "m", None, cpu=False)[1:5] == [
        "-m", "budgetforce.server.vllm_cli", "serve", "--model",
    ]  # fmt: skip
    assert vllm_command(["--data-parallel-size=2"], "m", None, cpu=False)[2] == "budgetforce.server.vllm_cli"
    assert vllm_command(["--api-server-count", "1"], "m", None, cpu=False)[2] == VLLM_SERVER


def test_reasoning_parser_only_where_vllm_sees_the_close(tiny_r1: Path) -> None:
    """vLLM's parsers split detokenized text: a close that is a special token (the tiny model's) is
    skipped there, so `budgetforce serve` names no parser and the budget layer splits on the ids."""
    from budgetforce.server.launch import reasoning_parser_for

    student = Path(__file__).resolve().parents[1] / "budgetforce" / "student" / "model"
    assert reasoning_parser_for(str(student)) == "deepseek_r1"  # its `</think>` stays in the text
    assert reasoning_parser_for(str(tiny_r1)) is None
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_r1), "--dry-run"])
    assert result.exit_code == 0 and "--reasoning-parser" not in result.output
