"""HTTP load generator: streaming chat completions at fixed concurrency levels.

Each level runs `requests` completions through `concurrency` closed-loop workers and reports
output tokens/s, requests/s, time to first token (TTFT), inter-token latency (ITL, the gaps
between streamed chunks that carry text, pooled over requests), time per output token and
end-to-end latency, with p50/p99, plus the error count.

Output lengths are pinned the way each server allows: stock vLLM takes `min_tokens` =
`max_tokens` and `ignore_eos` (on by default for `--backend vllm`); the budgetforce server takes
`max_completion_tokens` and a thinking budget (`--min-thinking N --max-thinking N` fixes the
thinking length). Token counts come from the final usage chunk (`stream_options.include_usage`),
falling back to the number of text-carrying chunks. Prompts are filler words, their number
calibrated from the server's `usage.prompt_tokens` so the prompt is about `input_len` tokens
whatever the tokenizer; the measured mean prompt tokens are reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from budgetforce.bench.sampler import budget_fields, error_message
from budgetforce.bench.types import Backend, BudgetSettings

logger = logging.getLogger(__name__)

PROMPT_WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa")
PROMPT_PREFIX = "Continue the list:"


class LoadConfig(BaseModel):
    """Everything that shapes the load; stored verbatim in the JSON report."""

    base_url: str
    model: str
    backend: Backend = "budgetforce"
    input_len: int = Field(default=128, ge=1)
    output_len: int = Field(default=128, ge=1)
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])
    requests: int = Field(default=32, ge=1, description="requests per concurrency level")
    warmup: int = Field(default=1, ge=0, description="unmeasured requests before the first level")
    ignore_eos: bool | None = Field(default=None, description="None: on for vllm, off for budgetforce")
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    temperature: float = 0.0
    extra_body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = 600.0


@dataclass
class RequestStats:
    """Timings of one streamed request."""

    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None


def make_prompt(index: int, words: int) -> str:
    """A prompt of `words` filler words; the leading index keeps prompts distinct across requests."""
    filler = [PROMPT_WORDS[(index + i) % len(PROMPT_WORDS)] for i in range(max(words, 1))]
    return f"{index}. {PROMPT_PREFIX} " + " ".join(filler)


async def calibrate_prompt_words(client: httpx.AsyncClient, config: LoadConfig) -> int:
    """Filler words giving about `input_len` prompt tokens, measured from the server's usage.

    Two one-token requests at two prompt sizes give tokens per word and the fixed overhead (chat
    template, prefix), whatever the tokenizer. Falls back to one word per token.
    """
    url = config.base_url.rstrip("/") + "/chat/completions"
    sizes = (16, 64)  # small, so calibration fits any context window
    probe = config.model_copy(update={"output_len": 1, "ignore_eos": False, "budget": BudgetSettings()})
    measured = []
    for words in sizes:
        body = request_body(probe, 0, words) | {"stream": False}
        body.pop("stream_options")
        try:
            response = await client.post(url, json=body)
            if response.status_code != 200:
                raise ValueError(error_message(response))
            measured.append(response.json()["usage"]["prompt_tokens"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            logger.warning("prompt calibration failed (%s); assuming one token per word", exc)
            return config.input_len
    per_word = (measured[1] - measured[0]) / (sizes[1] - sizes[0])
    if per_word <= 0:
        return config.input_len
    words = round(sizes[0] + (config.input_len - measured[0]) / per_word)
    logger.info(
        "prompt calibration: %.2f tokens per word, %d words for %d tokens", per_word, max(words, 1), config.input_len
    )
    return max(words, 1)


def request_body(config: LoadConfig, index: int, words: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": config.model,
        "messages": [{"role": "user", "content": make_prompt(index, words)}],
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ignore_eos = config.backend == "vllm" if config.ignore_eos is None else config.ignore_eos
    if config.backend == "vllm":
        body["max_tokens"] = config.output_len
    else:
        body["max_completion_tokens"] = config.output_len
    if ignore_eos:
        body["min_tokens"] = config.output_len
        body["ignore_eos"] = True
    body.update(budget_fields(config.budget, config.backend))
    body.update(config.extra_body)
    return body


def chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return (delta.get("reasoning_content") or delta.get("reasoning") or "") + (delta.get("content") or "")


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestStats:
    """Send one streaming request and time every text-carrying chunk."""
    start = time.perf_counter()
    stats = RequestStats(ok=False)
    last: float | None = None
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                stats.error = error_message(response)
                return stats
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    stats.error = str(chunk["error"].get("message", chunk["error"]))
                    return stats
                usage = chunk.get("usage") or usage
                if chunk_text(chunk):
                    now = time.perf_counter()
                    if last is None:
                        stats.ttft_s = now - start
                    else:
                        stats.itl_s.append(now - last)
                    last = now
                    chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
        return stats
    finally:
        stats.latency_s = time.perf_counter() - start
    stats.ok = True
    stats.output_tokens = usage.get("completion_tokens") or chunks
    stats.prompt_tokens = usage.get("prompt_tokens")
    return stats


def percentile(values: list[float], q: float, scale: float = 1.0) -> float | None:
    return float(np.percentile(values, q)) * scale if values else None


def level_report(concurrency: int, stats: list[RequestStats], wall_s: float) -> dict[str, Any]:
    """Reduce one level's requests to throughput and latency percentiles (ms for TTFT/ITL/TPOT)."""
    ok = [s for s in stats if s.ok]
    errors = [s for s in stats if not s.ok]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    itl = [gap for s in ok for gap in s.itl_s]
    tpot = [
        (s.latency_s - s.ttft_s) / (s.output_tokens - 1) for s in ok if s.ttft_s is not None and s.output_tokens > 1
    ]
    latency = [s.latency_s for s in ok]
    output_tokens = sum(s.output_tokens for s in ok)
    prompt_tokens = [s.prompt_tokens for s in ok if s.prompt_tokens is not None]
    return {
        "concurrency": concurrency,
        "requests": len(stats),
        "ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "wall_s": wall_s,
        "output_tokens": output_tokens,
        "output_tokens_per_s": output_tokens / wall_s if wall_s > 0 else None,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "mean_prompt_tokens": statistics.fmean(prompt_tokens) if prompt_tokens else None,
        "mean_output_tokens": output_tokens / len(ok) if ok else None,
        "ttft_ms_p50": percentile(ttft, 50, 1e3),
        "ttft_ms_p99": percentile(ttft, 99, 1e3),
        "itl_ms_p50": percentile(itl, 50, 1e3),
        "itl_ms_p99": percentile(itl, 99, 1e3),
        "tpot_ms_p50": percentile(tpot, 50, 1e3),
        "latency_s_p50": percentile(latency, 50),
        "latency_s_p99": percentile(latency, 99),
    }


async def run_level(
    client: httpx.AsyncClient,
    config: LoadConfig,
    words: int,
    concurrency: int,
    n_requests: int,
    first_index: int,
    progress: bool,
) -> dict[str, Any]:
    """Closed loop: `concurrency` workers each send the next request as soon as theirs finishes."""
    url = config.base_url.rstrip("/") + "/chat/completions"
    indices = iter(range(first_index, first_index + n_requests))
    stats: list[RequestStats] = []
    bar = tqdm(total=n_requests, disable=not progress, desc=f"concurrency {concurrency}", unit="req")

    async def worker() -> None:
        for index in indices:
            stats.append(await stream_one(client, url, request_body(config, index, words)))
            bar.update()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n_requests))))
    wall_s = time.perf_counter() - start
    bar.close()
    return level_report(concurrency, stats, wall_s)


async def run_load(config: LoadConfig, api_key: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Warm up, then run every concurrency level; returns the JSON-ready report."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(
        max_connections=max(config.concurrency) + 4, max_keepalive_connections=max(config.concurrency) + 4
    )
    async with httpx.AsyncClient(timeout=config.timeout_s, headers=headers, limits=limits) as client:
        words = await calibrate_prompt_words(client, config)
        if config.warmup:
            warm = await run_level(
                client, config, words, min(config.warmup, max(config.concurrency)), config.warmup, 1, False
            )
            logger.info("warm-up: %d/%d requests ok", warm["ok"], warm["requests"])
        levels = []
        for i, concurrency in enumerate(config.concurrency):
            first_index = 1 + config.warmup + i * config.requests
            levels.append(await run_level(client, config, words, concurrency, config.requests, first_index, progress))
    return {"config": config.model_dump(mode="json"), "prompt_words": words, "levels": levels}
