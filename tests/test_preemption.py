"""Preemption under KV-cache pressure, and the sampled-row statistics, on the real CPU engine.

A second engine on the same tiny R1 weights gets a KV cache of 40 blocks of 32 tokens, far too
small for 48 concurrent long requests, so vLLM preempts and resumes requests all the time. Each
request's forcing state lives under a key that survives that, so every request must finish,
with exact stats, and with the same tokens and stats as on the roomy shared engine (vLLM keeps
seeded sampling intact across preemption; the posterior draw is keyed by seed, prompt and
position). Wait strings include multi-token ones and ones whose first token the model also
writes on its own (a logit bias pushes it), which is where a replay would miscount.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from budgetforce import Budget
from budgetforce.core.controller import ThinkingController

pytestmark = pytest.mark.engine
PROMPTS = [[{"role": "user", "content": f"question {i}: how many apples {i * 7} bags"}] for i in range(8)]
WAITS = [("Hmm let me check",), ("Wait",), ("So let me check again", "Wait")]


@pytest.fixture(scope="module")
def tight_engine(run: Callable, tiny_r1: Path) -> Iterator[Any]:
    from conftest import _start_engine

    eng = _start_engine(run, tiny_r1, num_gpu_blocks_override=40, block_size=32)
    yield eng
    eng.shutdown()


def _bias(engine: Any, waits: tuple[str, ...]) -> dict[int, float]:
    bias = {engine.profile.think_end[0]: 4.0}
    for w in waits:  # the model also writes each wait's first token on its own
        bias[engine.tokenizer.encode(w, add_special_tokens=False)[0]] = 1.5
    return bias


def _jobs(engine: Any) -> list[tuple[Any, Budget, dict[str, Any]]]:
    rng = random.Random(11)
    jobs = []
    for i in range(48):
        waits = WAITS[i % len(WAITS)]
        lo = rng.randint(60, 160)
        hi = rng.choice([None, None, lo + rng.randint(0, 30)])
        budget = Budget(min_thinking_tokens=lo, max_thinking_tokens=hi, max_waits=rng.choice([None, 2, 5]), wait_strings=waits)
        temperature = 0.0 if i % 3 == 0 else rng.choice([0.6, 1.0])
        sampling = dict(max_tokens=240, temperature=temperature, seed=i % 5, logit_bias=_bias(engine, waits))
        jobs.append((PROMPTS[i % len(PROMPTS)], budget, sampling))
    return jobs


def _observed_waits(engine: Any, prompt: Any, budget: Budget, ids: list[int]) -> tuple[int, int]:
    """(thinking tokens, a lower bound on waits) read off the ids by an observing controller."""
    plan = engine.profile.plan(budget)
    ctl = ThinkingController(engine.profile.plan(Budget()), engine.prompt_ids(prompt))
    for t in ids:
        ctl.accept(t)
    firsts = {w[0] for w in plan.waits}
    span = ids[: ctl.think_end_at] if ctl.think_end_at is not None else ids
    return ctl.thinking_tokens, sum(t in firsts for t in span)


def test_preemption_keeps_outputs_and_stats(engine: Any, tight_engine: Any, run: Callable) -> None:
    jobs = _jobs(engine)

    async def go(eng: Any) -> list[Any]:
        return await asyncio.gather(*(eng.generate(p, b, **s) for p, b, s in jobs), return_exceptions=True)

    before = _preemptions()
    tight = run(go(tight_engine))
    assert _preemptions() - before >= 20, "the small KV cache did not make vLLM preempt"
    failed = [r for r in tight if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of 48 requests failed under preemption: {failed[:2]!r}"
    assert not tight_engine.is_dead
    roomy = run(go(engine))
    assert not any(isinstance(r, BaseException) for r in roomy)
    waits = 0
    for (p, b, _), a, ref in zip(jobs, tight, roomy):
        assert a.token_ids == ref.token_ids
        assert a.stats == ref.stats
        assert a.stats.waits_inserted is not None
        thinking, wait_firsts = _observed_waits(engine, p, b, a.token_ids)
        assert a.stats.thinking_tokens == thinking
        assert a.stats.waits_inserted <= wait_firsts  # each inserted wait left its first token
        if b.max_waits is not None:
            assert a.stats.waits_inserted <= b.max_waits
        waits += a.stats.waits_inserted
    assert waits >= 48, "the case inserted too few waits to test anything"


def test_sampled_waits_are_distributed_as_in_s1s_loop(engine: Any, run: Callable) -> None:
    """Engine vs rounds (s1's loop) on sampled rows: the same distribution of waits and lengths.

    200 requests per strategy at temperature 1 with distinct seeds; a two-sample
    Kolmogorov-Smirnov test on thinking length and on waits inserted must not reject at
    alpha = 1e-4 (critical distance 2.15 * sqrt(2/200) = 0.215; four comparisons). The same with every request
    carrying one shared seed: the draws stay independent across requests.
    """
    n = 200
    budget = Budget(min_thinking_tokens=40, max_waits=4)

    def jobs(shared_seed: bool) -> list[tuple[Any, dict[str, Any]]]:
        return [
            ([{"role": "user", "content": f"problem {i}: {i * 13 % 97} apples in {i % 7} bags"}], dict(max_tokens=90, temperature=1.0, seed=1234 if shared_seed else i,
                                              logit_bias={engine.profile.think_end[0]: 3.0}))
            for i in range(n)
        ]

    async def go(shared: bool) -> tuple[list[Any], list[Any]]:
        js = jobs(shared)
        eng = await asyncio.gather(*(engine.generate(p, budget, **s) for p, s in js))
        rnd = await asyncio.gather(*(engine.generate(p, budget.model_copy(update={"strategy": "rounds"}), **s) for p, s in js))
        return eng, rnd

    crit = 2.15 * math.sqrt(2 / n)
    for shared in (False, True):
        eng, rnd = run(go(shared))
        for field in ("thinking_tokens", "waits_inserted"):
            a = [getattr(o.stats, field) for o in eng]
            b = [getattr(o.stats, field) for o in rnd]
            assert _ks(a, b) < crit, f"{field} (shared seed: {shared}): KS {_ks(a, b):.3f} >= {crit:.3f}"
        waits = [o.stats.waits_inserted for o in eng]
        assert len(set(waits)) > 1, "every request got the same number of waits (correlated draws)"
        assert max(waits) <= 4


def _preemptions() -> float:
    """Preemptions vLLM has counted in this process (its Prometheus histogram of per-request counts)."""
    from prometheus_client import REGISTRY

    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "vllm:request_num_preemptions_sum":
                total += sample.value
    return total


def _ks(a: list[int], b: list[int]) -> float:
    """The two-sample Kolmogorov-Smirnov distance."""
    values = sorted(set(a) | set(b))
    return max(abs(sum(x <= v for x in a) / len(a) - sum(x <= v for x in b) / len(b)) for v in values)
