"""`budgetforce serve --data-parallel-size 2` on the CPU: two engine processes behind one API server.

Each engine runs its own processor and slots; the stats board is one table that both engines
write, so `waits_inserted` stays exact whichever engine a request lands on. Streamed, concurrent,
seeded budgeted chats: no errors, every budget enforced as counted on the token ids, every wait
count exact. The wait string is one the bundled student never writes by itself, so the count on
the ids is exact and independent of the board.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server
WAIT = "Hold on, let me check."
THINK_END = 5  # the student's `</think>`
STREAMS = 16


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import budgetforce_serve

    args = ["--data-parallel-size", "2", "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0"]
    with budgetforce_serve(args, tmp_path_factory.mktemp("data-parallel") / "server.log", 300) as base:
        yield base


def test_budgets_hold_and_waits_are_exact_across_two_engines(served: str) -> None:
    from transformers import AutoTokenizer

    from budgetforce.student import default_model

    wait_ids = AutoTokenizer.from_pretrained(default_model()).encode(WAIT, add_special_tokens=False)

    async def one(http: httpx.AsyncClient, seed: int) -> dict[str, Any]:
        body = {"model": "budgetforce", "messages": [{"role": "user", "content": "Tom has 12 apples and buys 3 bags of 7. How many now?"}],
                "max_tokens": 300, "seed": seed, "temperature": 0.6, "min_thinking_tokens": 150, "max_thinking_tokens": 250,
                "wait_strings": [WAIT], "return_token_ids": True, "stream": True}  # fmt: skip
        ids: list[int] = []
        report = None
        async with http.stream("POST", f"{served}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    ids += choice.get("token_ids") or []
                    report = choice.get("budget") or report
        assert report is not None, "no budget report in the stream"
        return {"ids": ids, "budget": report}

    async def many() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=STREAMS)) as http:
            return await asyncio.gather(*(one(http, s) for s in range(STREAMS)))

    waited = 0
    for c in asyncio.run(many()):
        ids, report = c["ids"], c["budget"]
        think = ids[: ids.index(THINK_END)] if THINK_END in ids else ids
        found = sum(think[i : i + len(wait_ids)] == wait_ids for i in range(len(think) - len(wait_ids) + 1))
        assert report["enforced"] is True and report["thinking_tokens"] == len(think), report
        assert 150 <= len(think) <= 250, report  # the minimum and the maximum, on the ids
        assert report["waits_inserted"] == found, report  # exact (never null), whichever engine ran it
        waited += found > 0
    assert waited >= STREAMS // 2, f"only {waited} of {STREAMS} choices had a wait inserted: the test would prove little"
    done: dict[str, float] = {}  # requests finished per engine, from vLLM's own counters
    for line in httpx.get(f"{served}/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            engine = line.split('engine="')[1].split('"')[0]
            done[engine] = done.get(engine, 0.0) + float(line.split()[-1])
    assert len([e for e, n in done.items() if n > 0]) == 2, f"both engines should have served requests: {done}"
