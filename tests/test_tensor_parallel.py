"""`budgetforce serve --tensor-parallel-size 2` on the CPU: the processor runs in both TP workers.

Every worker holds its own slots and forces its own tokens; only one worker's sample is kept, but a
worker that forced differently would still report differently through the stats board, which every
worker can write. So greedy budgeted chats on TP = 2 must equal TP = 1 token for token, with the
same `budget` report (minimum with waits, maximum forced, both), each count checked on the ids.
vLLM's CPU workers bind their threads one NUMA node each unless told which cores to use
(`VLLM_CPU_OMP_THREADS_BIND`, one core list per rank): this machine has one node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.server
WAIT = "Hold on, let me check."
THINK_END = 5  # the student's `</think>`
BUDGETS = [(150, 250), (0, 40), (120, 200)]  # waits then a natural close; a plain maximum; waits then the forced close
COMMON = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0"]


def _chats(base: str) -> list[dict[str, Any]]:
    out = []
    for i, (lo, hi) in enumerate(BUDGETS):
        body = {"model": "budgetforce", "messages": [{"role": "user", "content": f"Tom has {12 + i} apples and buys 3 bags of 7. How many now?"}],
                "max_tokens": 300, "temperature": 0, "min_thinking_tokens": lo, "max_thinking_tokens": hi,
                "wait_strings": [WAIT], "return_token_ids": True}  # fmt: skip
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        out.append({"ids": choice["token_ids"], "budget": choice["budget"]})
    return out


def test_tensor_parallel_two_equals_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from budgetforce.student import default_model
    from conftest import budgetforce_serve

    with budgetforce_serve(COMMON, tmp_path / "tp1.log", 300) as base:
        one = _chats(base)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    with budgetforce_serve(["--tensor-parallel-size", "2", *COMMON], tmp_path / "tp2.log", 300) as base:
        two = _chats(base)

    wait_ids = AutoTokenizer.from_pretrained(default_model()).encode(WAIT, add_special_tokens=False)
    waited = 0
    for (lo, hi), a, b in zip(BUDGETS, one, two):
        assert b["ids"] == a["ids"], f"TP = 2 differs from TP = 1 at min {lo} / max {hi}"
        assert b["budget"] == a["budget"], (a["budget"], b["budget"])
        ids = b["ids"]
        think = ids[: ids.index(THINK_END)] if THINK_END in ids else ids
        found = sum(think[i : i + len(wait_ids)] == wait_ids for i in range(len(think) - len(wait_ids) + 1))
        report = b["budget"]
        assert report["enforced"] is True and report["thinking_tokens"] == len(think), report
        assert lo <= len(think) <= hi, report
        assert report["waits_inserted"] == found, report  # one worker's count, not one per worker
        waited += found
    assert waited > 0, "no wait was inserted: the test would prove little"
    assert any(b["budget"]["forced_end"] for b in two), "no maximum was forced: the test would prove little"
