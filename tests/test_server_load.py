"""64 concurrent streams with mixed budgets share the engine: zero errors, exact per-request stats."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from conftest import engine_gauges, generated_until_idle

pytestmark = pytest.mark.server
CAP = 32
# (budget fields, min thinking, max thinking)
MIX: list[tuple[dict[str, Any], int, int]] = [
    ({"max_thinking_tokens": 8}, 0, 8),
    ({"min_thinking_tokens": 4, "max_thinking_tokens": 16}, 4, 16),
    ({"thinking_token_budget": 12}, 0, 12),
    ({"max_thinking_tokens": 10, "budget_strategy": "rounds"}, 0, 10),
    ({"reasoning_effort": "minimal"}, 0, CAP - 2),  # the table's 256 shrunk to fit the cap
    ({"thinking": {"type": "disabled"}}, 0, 0),
    ({"reasoning": {"max_tokens": 6, "exclude": True}}, 0, 6),
    ({"min_thinking_tokens": 12, "max_thinking_tokens": 12, "budget_strategy": "rounds"}, 12, 12),
]


async def one(client: httpx.AsyncClient, url: str, i: int) -> dict[str, Any]:
    fields = MIX[i % len(MIX)][0]
    body = {
        "model": "tiny", "messages": [{"role": "user", "content": f"{i}: how many apples are in {i} bags?"}],
        "max_completion_tokens": CAP, "temperature": 0.8, "seed": i, "stream": True,
        "stream_options": {"include_usage": True}, **fields,
    }  # fmt: skip
    out: dict[str, Any] = {"i": i, "errors": [], "reasoning": "", "content": "", "done": False}
    async with client.stream("POST", url, json=body) as r:
        out["status"] = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                out["done"] = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                out["errors"].append(chunk["error"])
                continue
            out.setdefault("first_s", time.perf_counter())
            out["last_s"] = time.perf_counter()
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            for c in chunk["choices"]:
                out["reasoning"] += c["delta"].get("reasoning_content") or ""
                out["content"] += c["delta"].get("content") or ""
                if c["finish_reason"]:
                    out["budget"], out["finish"] = c["budget"], c["finish_reason"]
    return out


async def storm(url: str, n: int) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        return await asyncio.gather(*(one(client, url, i) for i in range(n)))


def _engine_counts(live_server: str) -> tuple[float, float]:
    """(engine steps seen, tokens generated) from vLLM's own counters."""
    c = engine_gauges(live_server, ("vllm:iteration_tokens_total_count", "vllm:generation_tokens_total"))
    return c["vllm:iteration_tokens_total_count"], c["vllm:generation_tokens_total"]


def test_64_concurrent_streams(live_server_url: str, live_server: str) -> None:
    # The counters must see the storm alone: a request of an earlier test still generating on the shared
    # engine would add steps of one token each. (One suite run saw 1.7 tokens a step, against 34-36 in
    # three runs of this file alone; that cause fits it, but was not proven.)
    generated_until_idle(live_server, 0.0)
    steps0, generated0 = _engine_counts(live_server)
    start = time.perf_counter()
    results = asyncio.run(storm(f"{live_server_url}/chat/completions", 64))
    elapsed = time.perf_counter() - start
    steps1, generated1 = _engine_counts(live_server)
    for r in results:
        assert r["status"] == 200 and r["done"] and not r["errors"], r
        budget, usage = r["budget"], r["usage"]
        fields, lo, hi = MIX[r["i"] % len(MIX)]
        thinking = budget["thinking_tokens"]
        assert lo <= thinking <= hi, r
        assert budget["forced_end"] is (thinking == hi), r
        assert budget["strategy"] == fields.get("budget_strategy", "engine")
        assert usage["completion_tokens_details"]["reasoning_tokens"] == thinking
        assert usage["completion_tokens"] <= CAP and (r["finish"] == "length") is (usage["completion_tokens"] == CAP)
        hidden = "reasoning" in fields
        assert (r["reasoning"] == "") is (hidden or thinking == 0)
    # Nothing serialises requests: the engine generated several tokens per step (batched). Counted on
    # the engine's own counters: the streams' arrival times at the client are not a measure on a
    # 2-core machine, where a busy engine can hold the API server off and a stream arrives at once.
    # A serialising server makes at most 1 a step; alone this file sees 34-36, a full suite on 2
    # cores once 7.2 (the API server admitting the 64 streams slowly, the ramp's steps small): the
    # bound tells batching from serialising, not a speed.
    per_step = (generated1 - generated0) / max(steps1 - steps0, 1.0)
    assert per_step >= 3, f"{per_step:.1f} tokens generated per engine step: the requests were not batched"
    print(f"64 streams x {CAP} tokens in {elapsed:.1f}s, {per_step:.1f} tokens per engine step")
