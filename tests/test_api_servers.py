"""`budgetforce serve --api-server-count 4`: vLLM's scaled front end, with exact `waits_inserted`.

Four API server processes share one stats board: each takes keys under a file lock, so every
budgeted request, whichever process serves it, reports the waits its engine rows inserted. The
wait string is one the bundled student never writes by itself, so the count on the returned ids
is exact and independent of the board.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server
WAIT = "Hold on, let me check."
THINK_END = 5  # the student's `</think>`


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import budgetforce_serve

    args = ["--api-server-count", "4", "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0"]
    with budgetforce_serve(args, tmp_path_factory.mktemp("api-servers") / "server.log", 300) as base:
        yield base


def test_waits_inserted_is_exact_across_four_api_servers(served: str) -> None:
    from transformers import AutoTokenizer

    from budgetforce.student import default_model

    wait_ids = AutoTokenizer.from_pretrained(default_model()).encode(WAIT, add_special_tokens=False)

    async def one(http: httpx.AsyncClient, seed: int) -> dict[str, Any]:
        body = {"model": "budgetforce", "messages": [{"role": "user", "content": "Tom has 12 apples and buys 3 bags of 7. How many now?"}],
                "max_tokens": 300, "seed": seed, "temperature": 0.6, "min_thinking_tokens": 150,
                "max_thinking_tokens": 250, "wait_strings": [WAIT], "return_token_ids": True}  # fmt: skip
        r = await http.post(f"{served}/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    async def many() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=16)) as http:
            return await asyncio.gather(*(one(http, s) for s in range(16)))

    choices = asyncio.run(many())
    waited = 0
    for c in choices:
        ids = c["token_ids"]
        think = ids[: ids.index(THINK_END)] if THINK_END in ids else ids
        found = sum(think[i : i + len(wait_ids)] == wait_ids for i in range(len(think) - len(wait_ids) + 1))
        report = c["budget"]
        assert report["waits_inserted"] == found, report  # exact (never null), whichever API process served it
        assert report["enforced"] is True and report["thinking_tokens"] == len(think), report
        waited += found > 0
    assert waited >= 8, f"only {waited} of 16 choices had a wait inserted: the test would prove little"
