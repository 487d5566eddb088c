"""`budgetforce serve`: vLLM's own OpenAI-compatible server, with budgetforce's processor and budget layer.

The command line it runs is `vllm serve` (as `python -m vllm.entrypoints.openai.api_server`, which
every vLLM release has; with `--api-server-count` or `--data-parallel-size` above 1, which that entry
point ignores, as vLLM's CLI through `budgetforce.server.vllm_cli`) plus two flags, `--logits-processors budgetforce.vllm:BudgetForcing` and
`--middleware budgetforce.server.BudgetMiddleware`, a `--reasoning-parser` matching the model's
thinking delimiters when none is given, and CPU-friendly defaults on a machine without CUDA.
Every other flag passes through to vLLM untouched. Budget defaults reach the middleware as
`BUDGETFORCE_*` environment variables (`budgetforce.core.budget.BudgetDefaults`).

Example:
    >>> vllm_command(["--max-num-seqs", "8"], model="org/r1-distill", reasoning_parser="deepseek_r1",
    ...              cpu=False)[3:]                                                 # doctest: +NORMALIZE_WHITESPACE
    ['--model', 'org/r1-distill', '--max-num-seqs', '8', '--logits-processors', 'budgetforce.vllm:BudgetForcing',
     '--middleware', 'budgetforce.server.BudgetMiddleware', '--reasoning-parser', 'deepseek_r1']
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("budgetforce.server")

PROCESSOR = "budgetforce.vllm:BudgetForcing"
MIDDLEWARE = "budgetforce.server.BudgetMiddleware"  # vLLM imports `module.attr` (a dot, not a colon)
VLLM_SERVER = "vllm.entrypoints.openai.api_server"
# vLLM's CLI (`vllm serve`), for the front-end flags the module entry point above ignores (it runs one
# API server process): through budgetforce's shim, which also runs it on vLLM's CPU build
VLLM_CLI = ("budgetforce.server.vllm_cli", "serve")
SCALED_FLAGS = ("api-server-count", "data-parallel-size")
CPU_KV_CACHE_BYTES = 1 << 30
# vLLM's reasoning parser for each profile's delimiters; s1's `<|im_start|>think` has none, so
# the budget layer splits the text on token ids itself.
REASONING_PARSERS = {
    "r1-distill-qwen": "deepseek_r1",
    "r1-distill-llama": "deepseek_r1",
    "qwq": "deepseek_r1",
    "generic": "deepseek_r1",
    "qwen3": "qwen3",
    "s1": None,
}


def flags(args: list[str]) -> dict[str, list[str]]:
    """Flags present in a vLLM command line and their values (`--a-b`, `--a_b`, `--a-b=x` alike)."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            name = name.replace("_", "-")
            values = out.setdefault(name, [])
            if eq:
                values.append(value)
            else:
                while i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
                    values.append(args[i])
        i += 1
    return out


def _without(args: list[str], name: str) -> list[str]:
    """``args`` without flag ``name`` and its values."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and token[2:].partition("=")[0].replace("_", "-") == name:
            if "=" not in token:
                while i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
            i += 1
            continue
        out.append(token)
        i += 1
    return out


def vllm_command(
    passthrough: list[str], model: str, reasoning_parser: str | None, cpu: bool, dtype: str | None = None
) -> list[str]:
    """The vLLM server's command line: ``passthrough`` plus budgetforce's processor, middleware and defaults."""
    given = flags(passthrough)
    args = _without(passthrough, "logits-processors")
    processors = [p for p in given.get("logits-processors", []) if p != PROCESSOR]
    scaled = any(v.isdigit() and int(v) > 1 for f in SCALED_FLAGS for v in given.get(f, []))
    entry = list(VLLM_CLI) if scaled else [VLLM_SERVER]
    cmd = [sys.executable, "-m", *entry, "--model", model, *args]
    cmd += ["--logits-processors", PROCESSOR, *processors]
    if MIDDLEWARE not in given.get("middleware", []):
        cmd += ["--middleware", MIDDLEWARE]
    if "reasoning-parser" not in given and reasoning_parser:
        cmd += ["--reasoning-parser", reasoning_parser]
    if cpu:
        sized = {"gpu-memory-utilization", "kv-cache-memory-bytes"} & set(given) or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if not sized:
            cmd += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        if "dtype" not in given and dtype:
            cmd += ["--dtype", dtype]
        # vLLM-CPU 0.32 kills the engine when a seeded request's prompt is prefilled in chunks
        # ("CPU Generator does not use offset"); a large token budget per step avoids chunking.
        if "max-num-batched-tokens" not in given:
            cmd += ["--max-num-batched-tokens", "65536"]
    return cmd


def cpu_dtype(model: Path) -> str | None:
    """float32 or bfloat16 as a local checkpoint says (float16 is slow or unsupported on CPUs); None: vLLM's choice."""
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return "float32" if dtype == "float32" else "bfloat16"


def reasoning_parser_for(model: str, tokenizer: str | None = None) -> str | None:
    """vLLM's reasoning parser for the model's thinking delimiters (detected from its tokenizer)."""
    from transformers import AutoTokenizer

    from budgetforce.core.profile import detect_profile

    tok = AutoTokenizer.from_pretrained(tokenizer or model)
    profile = detect_profile(tok, model)
    # vLLM's parsers split the detokenized text, where special tokens are skipped: a model whose
    # close is a special token would get its whole output as reasoning. The budget layer then
    # splits on the token ids itself.
    close = tok.encode(profile.think_end, add_special_tokens=False)
    if profile.think_end not in tok.decode(close, skip_special_tokens=True):
        return None
    return REASONING_PARSERS.get(profile.name, "deepseek_r1")


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def budget_environment(defaults: dict[str, Any]) -> dict[str, str]:
    """`BUDGETFORCE_*` variables for the middleware, validated here so mistakes stop the start at once."""
    from budgetforce.core.budget import BudgetDefaults

    given = {k: v for k, v in defaults.items() if v is not None}
    BudgetDefaults(**given)  # raises pydantic's ValidationError, which the CLI reports
    return {f"BUDGETFORCE_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}


def exec_server(cmd: list[str], env: dict[str, str]) -> None:  # pragma: no cover - replaces the process
    """Become the vLLM server (signals, exit status and logs are vLLM's own)."""
    sys.stdout.flush()
    sys.stderr.flush()
    from budgetforce.vllm.wire import BOARD_ENV

    # the stats board's name, fixed before vLLM starts: its engine accepts this one and no other
    board = {BOARD_ENV: os.environ.get(BOARD_ENV) or f"budgetforce-{os.getpid()}-{os.urandom(4).hex()}"}
    os.execvpe(cmd[0], cmd, {**os.environ, **board, **env})
