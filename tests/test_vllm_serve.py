"""Budget forcing inside a stock `vllm serve` (CPU build) with the documented two flags, driven
through `vllm_xargs` and through the budget layer's own strategies (rounds, early exit).

The reference is budgetforce's own engine and server on the same tiny R1 weights: under greedy
decoding (and for a seeded sampled request) the processor must emit the same token ids. A logit
bias on `</think>` makes the random model try to close, so waits and forced ends really happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from budgetforce import Budget

pytestmark = pytest.mark.server
PROCESSOR = "budgetforce.vllm:BudgetForcing"
MIDDLEWARE = "budgetforce.server.BudgetMiddleware"
START_TIMEOUT_S = 180
MAX_TOKENS = 120
BIAS = 5.0
MESSAGES = [{"role": "user", "content": "question 1: how many apples 7 bags"}]
BUDGETS: list[dict[str, int]] = [
    {"min_thinking_tokens": 70},
    {"max_thinking_tokens": 12},
    {"min_thinking_tokens": 30, "max_thinking_tokens": 60},
    {"min_thinking_tokens": 90, "max_waits": 1},
]


def serve_command(model: Path, port: int) -> list[str]:
    """The documented `vllm serve` line (docs/vllm-serve.md), plus the CPU test settings."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
        "--logits-processors", PROCESSOR, "--middleware", MIDDLEWARE, "--reasoning-parser", "deepseek_r1",
        "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0",
        "--gpu-memory-utilization", "0.1", "--max-num-batched-tokens", "65536",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def _vllm_serve_process(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    """Starts `vllm serve` in its own process group (not yet ready) and kills the whole group at the end."""
    from conftest import free_port

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETFORCE_")}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["BUDGETFORCE_STATS_BOARD"] = f"budgetforce-test-{port}"  # as docs/vllm-serve.md says, for waits and probes
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            serve_command(tiny_r1, port), stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=log_path.parent, start_new_session=True,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", proc, log_path
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # the API server and its engine-core child
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def vllm_serve(_vllm_serve_process: tuple[str, Any, Path], engine: Any) -> str:
    """The OpenAI base URL of the ready `vllm serve`; it starts while budgetforce's engine does."""
    base, proc, log_path = _vllm_serve_process
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return f"{base}/v1"
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vllm serve not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def client(vllm_serve: str) -> Any:
    import openai

    return openai.OpenAI(base_url=vllm_serve, api_key="unused", max_retries=0)


def serve_chat(client: Any, engine: Any, xargs: dict[str, Any] | None, **sampling: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": False}
    if xargs is not None:
        extra["vllm_xargs"] = xargs
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, logit_bias={str(engine.profile.think_end[0]): BIAS},
        extra_body=extra, **sampling,
    )  # fmt: skip
    return response.model_dump()


def own_engine(run: Callable, engine: Any, budget: Budget | None, **sampling: Any) -> Any:
    bias = {engine.profile.think_end[0]: BIAS}
    return run(engine.generate(MESSAGES, budget, max_tokens=MAX_TOKENS, logit_bias=bias, **sampling))


def test_xargs_budgets_match_budgetforce_engine(client: Any, engine: Any, run: Callable) -> None:
    waits = forced = 0
    for xargs in BUDGETS:
        served = serve_chat(client, engine, xargs, temperature=0.0, seed=0)
        own = own_engine(run, engine, Budget(**xargs), temperature=0.0, seed=0)
        assert served["prompt_token_ids"] == engine.prompt_ids(MESSAGES)
        assert served["choices"][0]["token_ids"] == own.token_ids, xargs
        waits += own.stats.waits_inserted
        forced += own.stats.forced_end
    assert waits > 0 and forced > 0, "the budgets should both insert waits and force ends"


def test_seeded_sampling_matches_budgetforce_engine(client: Any, engine: Any, run: Callable) -> None:
    xargs = {"min_thinking_tokens": 60, "max_thinking_tokens": 90}
    served = serve_chat(client, engine, xargs, temperature=1.0, seed=7)
    own = own_engine(run, engine, Budget(**xargs), temperature=1.0, seed=7)
    assert served["choices"][0]["token_ids"] == own.token_ids


def test_text_matches_budgetforce_server(client: Any, live_server_url: str) -> None:
    """Reasoning and answer text: vLLM's `deepseek_r1` parser against budgetforce's server."""
    import openai

    own = openai.OpenAI(base_url=live_server_url, api_key="unused", max_retries=0)
    for budget in ({"max_thinking_tokens": 12}, {"min_thinking_tokens": 20, "max_thinking_tokens": 40}):
        common: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
        served = client.chat.completions.create(
            **common, seed=0, extra_body={"vllm_xargs": budget, "skip_special_tokens": False}
        ).model_dump()["choices"][0]
        mine = own.chat.completions.create(**common, seed=0, extra_body=budget).model_dump()["choices"][0]
        # vLLM ends a reasoning cut inside a character with U+FFFD (as `tokenizer.decode` does);
        # budgetforce's decoder drops the incomplete character (budgetforce/core/decoding.py).
        served_reasoning = served["message"]["reasoning"].rstrip("\ufffd")
        assert served_reasoning == mine["message"]["reasoning_content"].rstrip("\ufffd"), budget
        assert served["finish_reason"] == mine["finish_reason"]


def test_rounds_and_early_exit_through_vllm_serve(client: Any, engine: Any) -> None:
    """`vllm serve --middleware`: s1's loop equals the processor token for token under greedy decoding
    (waits and forced ends included); answer probes run, close the thinking, are reported, not billed."""
    bias = {str(engine.profile.think_end[0]): BIAS}
    for budget in BUDGETS:
        served = serve_chat(client, engine, budget, temperature=0.0, seed=0)
        rounds = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, logit_bias=bias, temperature=0.0, seed=0,
            extra_body={**budget, "budget_strategy": "rounds", "return_token_ids": True, "skip_special_tokens": False},
        ).model_dump()["choices"][0]  # fmt: skip
        assert rounds["token_ids"] == served["choices"][0]["token_ids"], budget
        assert rounds["budget"]["strategy"] == "rounds" and rounds["budget"]["enforced"] is True
    exits = 0
    for seed in range(4):
        out = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=1.0, seed=seed,
            extra_body={"max_thinking_tokens": 100, "probe_every": 8, "probe_agree": 1, "probe_lead": " the answer is",
                        "probe_max_tokens": 4, "return_token_ids": True},
        )  # fmt: skip
        choice = out.choices[0]
        report = choice.model_extra["budget"]
        assert report["probes"] >= 1 and report["probe_tokens"] >= 1, report
        assert out.usage.completion_tokens == len(choice.model_extra["token_ids"])  # the probes' tokens are apart
        if report["early_exit"]:
            exits += 1
            assert report["forced_end"] is True and 8 <= report["thinking_tokens"] < 100, report
    assert exits >= 1, "no probe ever closed a thinking"


@pytest.mark.parametrize(
    "xargs, field",
    [
        ({"min_thinking_tokens": -1}, "min_thinking_tokens"),
        ({"max_thinking_tokens": "many"}, "max_thinking_tokens"),
        ({"max_waits": -2}, "max_waits"),
        ({"min_thinking_tokens": 50, "max_thinking_tokens": 10}, "min_thinking_tokens"),
        ({"max_thinking_tokens": MAX_TOKENS}, "max_thinking_tokens"),  # no room for an answer
        ({"budgetforce": "x"}, "budgetforce"),  # the engine plan's key: would crash the engine core
    ],
)
def test_bad_xargs_are_400(vllm_serve: str, xargs: dict[str, Any], field: str) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "vllm_xargs": xargs}
    response = httpx.post(f"{vllm_serve}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_requests_without_budget_are_untouched(client: Any, engine: Any, run: Callable) -> None:
    plain = own_engine(run, engine, None, temperature=0.0, seed=0).token_ids
    for xargs in (None, {"note": "unrelated"}, {"min_thinking_tokens": 0}):
        assert serve_chat(client, engine, xargs, temperature=0.0, seed=0)["choices"][0]["token_ids"] == plain, xargs
