"""The seed's table: each trained student through the harness, accuracy and mean output tokens per target.

A target is ``NAME=PATH`` (a model folder, served here with `budgetforce serve` on a free loopback
port for the duration of its evaluation, then stopped) or ``NAME=URL`` (an OpenAI-compatible API
root already serving it). Each target's samples go to ``OUT/NAME/`` in the harness's format, so
a rerun resumes (``--overwrite`` after retraining a target); the table goes to ``OUT/table.md`` and ``OUT/table.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from budgetforce.bench import accuracy, reporting, store
from budgetforce.bench.sampler import ChatSampler, served_model
from budgetforce.bench.types import BenchError, BudgetSettings, Eval

TABLE_FILE = "table.md"
TABLE_JSON = "table.json"
CPU_SERVE_ARGS = ("--enforce-eager", "--max-num-batched-tokens", "65536")


def parse_targets(specs: list[str]) -> list[tuple[str, str]]:
    """ "teacher=runs/s/teacher/merged" -> [("teacher", "runs/s/teacher/merged")]; BenchError otherwise."""
    out = []
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise BenchError(f"`--target` takes NAME=MODEL_DIR or NAME=URL; got {spec!r}")
        if not where.startswith(("http://", "https://")) and not (Path(where) / "config.json").is_file():
            raise BenchError(f"`--target {spec}`: {where} is neither a URL nor a model folder with config.json")
        out.append((name, where))
    if len({name for name, _ in out}) != len(out):
        raise BenchError("`--target` names must be distinct")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_model(model: str | Path, name: str = "student", extra_args: tuple[str, ...] = (),
                log_path: Path | None = None, timeout_s: float = 600.0) -> Iterator[str]:  # fmt: skip
    """`budgetforce serve --model MODEL` on a free loopback port; yields the API root (…/v1), then stops it."""
    import torch

    port = free_port()
    args = [sys.executable, "-m", "budgetforce.cli", "serve", "--model", str(model), "--port", str(port),
            "--served-model-name", name, "--log-level", "warning"]  # fmt: skip
    args += list(extra_args) or ([] if torch.cuda.is_available() else list(CPU_SERVE_ARGS))
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout_s
        while True:
            if process.poll() is not None:
                raise BenchError(f"`budgetforce serve --model {model}` exited with {process.returncode}"
                                 + (f"; see {log_path}" if log_path else ""))  # fmt: skip
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise BenchError(f"`budgetforce serve --model {model}` not ready after {timeout_s:.0f}s")
            time.sleep(1)
        yield url
    finally:
        stop_group(process)
        if log_path:
            log.close()  # type: ignore[union-attr]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its engine down), then SIGKILL its process group if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # engine processes left behind by a server that died


def run_config(eval_: Eval, model_id: str, max_tokens: int) -> store.RunConfig:
    return store.RunConfig(eval=eval_.name, model=model_id, backend="budgetforce", max_tokens=max_tokens,
                              temperature=0.0, prompt_template=eval_.QUERY_TEMPLATE)  # fmt: skip


def table_row(rows: list[dict[str, Any]], budget: BudgetSettings) -> dict[str, Any]:
    """A target's line of the table: accuracy, mean output (completion) and mean thinking tokens."""
    point = reporting.summarize(rows, [budget])["points"][0]
    graded = [r for r in rows if r.get("error") is None and r.get("completion_tokens") is not None]
    return {
        "n": int(point["n"]),
        "errors": int(point["errors"]),
        "accuracy": point["accuracy"],
        "mean_output_tokens": sum(r["completion_tokens"] for r in graded) / len(graded) if graded else None,
        "mean_thinking_tokens": point["mean_thinking_tokens"],
    }


def finished_rows(eval_: Eval, out_dir: Path, budget: BudgetSettings, config: store.RunConfig) -> list[dict[str, Any]] | None:  # fmt: skip
    """The target's sample lines when an earlier run with the same settings finished them all, else None."""
    run_file = out_dir / store.RUN_FILE
    if not run_file.is_file() or json.loads(run_file.read_text()) != config.model_dump():
        return None
    latest = store.latest_by_key(store.read_samples(out_dir / store.SAMPLES_FILE))
    keys = [store.sample_key(budget, example, 0) for example in eval_.examples]
    if any(key not in latest or latest[key].get("error") is not None for key in keys):
        return None
    return [latest[key] for key in keys]


async def evaluate_url(eval_: Eval, url: str, out_dir: Path, max_tokens: int, budget: BudgetSettings,
                       concurrency: int, progress: bool, api_key: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One target through the harness (resuming `out_dir`); its line of the table."""
    model_id, _ = await served_model(url, api_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.check_run_config(out_dir, run_config(eval_, model_id, max_tokens))
    sampler = ChatSampler(url, model_id, "budgetforce", max_tokens, 0.0, api_key=api_key)
    try:
        rows = await accuracy.run_sweep(eval_, sampler, [budget], out_dir, concurrency, 1, progress)
    finally:
        await sampler.aclose()
    return table_row(rows, budget)


def markdown(rows: dict[str, dict[str, Any]], title: str) -> str:
    lines = [f"**{title}**", "", "| target | n | accuracy % | mean output tokens | mean thinking tokens |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        out = "-" if r["mean_output_tokens"] is None else f"{r['mean_output_tokens']:.1f}"
        think = "-" if r["mean_thinking_tokens"] is None else f"{r['mean_thinking_tokens']:.1f}"
        lines.append(f"| {name} | {r['n']} | {acc} | {out} | {think} |")
    return "\n".join(lines) + "\n"


def evaluate_targets(eval_: Eval, targets: list[tuple[str, str]], out_dir: Path, max_tokens: int = 1024,
                     budget: BudgetSettings | None = None, concurrency: int = 8, progress: bool = True,
                     serve_args: tuple[str, ...] = (), api_key: str | None = None,
                     overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluate each target in turn (one server at a time); write and return the table."""
    import asyncio

    budget = budget or BudgetSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    kwargs = {"max_tokens": max_tokens, "budget": budget, "concurrency": concurrency, "progress": progress,
              "api_key": api_key}  # fmt: skip
    for name, where in targets:
        target_dir = out_dir / name
        if overwrite:
            for stale in (store.SAMPLES_FILE, store.RUN_FILE):
                (target_dir / stale).unlink(missing_ok=True)
        if where.startswith(("http://", "https://")):
            rows[name] = asyncio.run(evaluate_url(eval_, where, target_dir, **kwargs))
        elif (done := finished_rows(eval_, target_dir, budget, run_config(eval_, name, max_tokens))) is not None:
            rows[name] = table_row(done, budget)  # all samples are there: no need to serve the model again
        else:
            target_dir.mkdir(parents=True, exist_ok=True)
            with serve_model(where, name, serve_args, target_dir / "server.log") as url:
                rows[name] = asyncio.run(evaluate_url(eval_, url, target_dir, **kwargs))
        rows[name]["model"] = where
    title = f"{eval_.name}: {len(eval_.examples)} problems, greedy, max {max_tokens} tokens" + (
        "" if budget.label == "baseline" else f", budget {budget.label}"
    )
    table = {"title": title, "eval": eval_.name, "targets": rows}
    (out_dir / TABLE_JSON).write_text(json.dumps(table, indent=2) + "\n")
    (out_dir / TABLE_FILE).write_text(markdown(rows, title))
    return table
