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

from budgetforce.cli import UsageError, app, parse_engine_args

runner = CliRunner()


def test_parse_engine_args() -> None:
    args = parse_engine_args(
        ["--max-num-seqs", "8", "--enable-prefix-caching", "--kv-cache-dtype=fp8", "--no-enforce-eager",
         "--override-generation-config", '{"temperature": 0.6}', "--swap-space", "0.5"],
        ["data_parallel_size=2", "tokenizer-mode=slow"],
    )  # fmt: skip
    assert args == {
        "max_num_seqs": 8, "enable_prefix_caching": True, "kv_cache_dtype": "fp8", "enforce_eager": False,
        "override_generation_config": {"temperature": 0.6}, "swap_space": 0.5, "data_parallel_size": 2,
        "tokenizer_mode": "slow",
    }  # fmt: skip
    with pytest.raises(UsageError):
        parse_engine_args(["stray"], [])
    with pytest.raises(UsageError):
        parse_engine_args([], ["novalue"])


def test_help_lists_serve_and_bench() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "serve" in result.output
    assert "bench" in result.output
    serve_help = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    for option in ("--model", "--host", "--port", "--api-key", "--profile", "--served-model-name",
                   "--tensor-parallel-size", "--max-model-len", "--engine-arg"):  # fmt: skip
        assert option in serve_help.output, option


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--no-such-engine-option", "3"], "unknown engine option(s): --no-such-engine-option"),
        (["serve", "--engine-arg", "oops"], "takes key=value"),
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
    import server.app

    student, cache = tmp_path / "student", tmp_path / "tiny"
    student.mkdir()
    monkeypatch.setattr(budgetforce.student, "STUDENT_PATH", student)
    monkeypatch.setattr(server.app, "TINY_CACHE", cache)
    assert server.app.default_model() == cache and (cache / "config.json").exists()
    built = (cache / "model.safetensors").stat().st_mtime
    assert server.app.default_model() == cache and (cache / "model.safetensors").stat().st_mtime == built
    (student / "config.json").write_text("{}")
    assert server.app.default_model() == student


def test_cpu_engine_defaults(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.app import CPU_KV_CACHE_BYTES, engine_kwargs

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert engine_kwargs(tiny_r1, {}) == {
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "dtype": "float32", "max_num_batched_tokens": 65536,
    }
    explicit = {"gpu_memory_utilization": 0.05, "dtype": "bfloat16", "max_num_batched_tokens": 4096}
    assert engine_kwargs(tiny_r1, explicit) == explicit


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.server
def test_serve_starts_and_answers(tiny_r1: Path, tmp_path: Path) -> None:
    """The real command in a subprocess: vLLM engine, API key, a budgeted chat, the request log line."""
    port = _port()
    log = tmp_path / "serve.log"
    cmd = [
        sys.executable, "-m", "budgetforce.cli", "serve", "--model", str(tiny_r1), "--served-model-name", "tiny-cli",
        "--port", str(port), "--api-key", "sk-cli", "--max-model-len", "512", "--enforce-eager", "--seed", "0",
        "--default-max-thinking-tokens", "6",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        headers = {"Authorization": "Bearer sk-cli"}
        assert httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"] == "tiny-cli"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        body = {
            "model": "tiny-cli", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 16,
            "min_thinking_tokens": 6, "seed": 0,  # the minimum pins the outcome: the model may close on its own
        }  # fmt: skip
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        budget = r.json()["choices"][0]["budget"]
        assert budget["thinking_tokens"] == 6 and budget["forced_end"] is True  # the server's default maximum
        time.sleep(0.5)
        assert "thinking=6" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
