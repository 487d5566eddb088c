"""Budget forcing inside real vLLM (CPU build) on tiny random-weight models.

A logit bias on the close token makes the random models try to close often, so waits and
forced ends really happen; greedy decoding makes the two strategies comparable token by token.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from budgetforce import Budget, BudgetError
from budgetforce.core.controller import ForcingPlan, ThinkingController

pytestmark = pytest.mark.engine
BIAS = 5.0  # makes the close the argmax in some contexts, not all (see tinymodel's init range)
PROMPTS = [[{"role": "user", "content": f"question {i}: how many apples {i * 7} bags"}] for i in range(6)]


@pytest.fixture(scope="session")
def plain_llm(run: Callable, tiny_r1: Path, engine_kwargs: dict[str, Any]) -> Iterator[Any]:
    """vLLM with no budgetforce processor at all: the reference for untouched requests."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    async def make() -> Any:
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(tiny_r1), **engine_kwargs))

    llm = run(make())
    yield llm
    llm.shutdown()


async def plain_ids(llm: Any, prompt_ids: list[int], **sampling: Any) -> list[int]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(**sampling)
    final = None
    async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, f"plain-{random.random()}"):
        final = out
    return list(final.outputs[0].token_ids)


def bias(engine: Any, value: float = BIAS) -> dict[int, float]:
    return {engine.profile.think_end[0]: value}


def check_invariants(engine: Any, prompt: Any, budget: Budget, out: Any) -> None:
    """What every budgeted completion must satisfy, read off its token ids alone."""
    plan: ForcingPlan = engine.profile.plan(budget)
    observer = ThinkingController(engine.profile.plan(Budget()), engine.prompt_ids(prompt))
    for t in out.token_ids:
        observer.accept(t)
    s = out.stats
    assert s.thinking_tokens == observer.thinking_tokens
    if budget.max_thinking_tokens is not None:
        assert s.thinking_tokens <= budget.max_thinking_tokens
        assert s.forced_end == (s.thinking_tokens == budget.max_thinking_tokens)
    if budget.max_waits is not None:
        assert s.waits_inserted <= budget.max_waits
    if observer.think_end_at is None:  # still thinking: only the total token cap may stop it
        assert out.finish_reason == "length"
        return
    span = out.token_ids[: observer.think_end_at]
    assert not set(span) & plan.close_attempts, "a close attempt inside the thinking"
    if not s.forced_end:
        assert s.thinking_tokens >= budget.min_thinking_tokens or s.waits_inserted == budget.max_waits


def test_untouched_requests_equal_plain_vllm(engine: Any, plain_llm: Any, run: Callable) -> None:
    async def both() -> list[tuple[list[int], list[int]]]:
        pairs = []
        for i, p in enumerate(PROMPTS[:4]):
            sampling = dict(max_tokens=80, temperature=0.0 if i % 2 == 0 else 1.0, seed=i, logit_bias=bias(engine))
            ours = await engine.generate(p, None, **sampling)
            ref = await plain_ids(plain_llm, engine.prompt_ids(p), **sampling)
            pairs.append((ours.token_ids, ref))
        return pairs

    for ours, ref in run(both()):
        assert ours == ref


@pytest.mark.parametrize(
    ("budget", "expect_waits", "expect_forced"),
    [
        (Budget(min_thinking_tokens=30), True, False),
        (Budget(min_thinking_tokens=20, max_thinking_tokens=60, max_waits=3), True, False),
        (Budget(max_thinking_tokens=10), False, True),
        (Budget(max_thinking_tokens=0), False, True),
        (Budget(min_thinking_tokens=40, max_waits=4, wait_strings=("Hmm let me check", "Wait")), True, False),
        (Budget(min_thinking_tokens=25, max_thinking_tokens=25), True, True),
    ],
    ids=["min", "min-max-waits", "max", "zero", "multi-token-waits", "min-eq-max"],
)
def test_engine_and_rounds_agree_under_greedy(
    engine: Any, run: Callable, budget: Budget, expect_waits: bool, expect_forced: bool
) -> None:
    async def compare() -> list[tuple[Any, Any]]:
        pairs = []
        for p in PROMPTS:
            kw = dict(max_tokens=120, temperature=0.0, logit_bias=bias(engine))
            a = await engine.generate(p, budget.model_copy(update={"strategy": "engine"}), **kw)
            b = await engine.generate(p, budget.model_copy(update={"strategy": "rounds"}), **kw)
            pairs.append((a, b))
        return pairs

    pairs = run(compare())
    for a, b in pairs:
        assert a.token_ids == b.token_ids
        assert (a.stats.thinking_tokens, a.stats.waits_inserted, a.stats.forced_end) == (
            b.stats.thinking_tokens, b.stats.waits_inserted, b.stats.forced_end,
        )
        assert a.reasoning == b.reasoning and a.answer == b.answer
    if expect_waits:
        assert max(a.stats.waits_inserted for a, _ in pairs) >= 2, "the case never inserted several waits"
    if expect_forced:
        assert any(a.stats.forced_end for a, _ in pairs), "the case never forced an end"


def test_s1_multi_token_delimiters_agree_and_prefix_answer(s1_engine: Any, run: Callable) -> None:
    budgets = [
        Budget(min_thinking_tokens=30, max_thinking_tokens=50, max_waits=3),
        Budget(max_thinking_tokens=8),
        Budget(min_thinking_tokens=20, wait_strings=("Hmm let me check",)),
    ]

    async def compare() -> list[tuple[Budget, Any, Any]]:
        out = []
        for budget in budgets:
            for p in PROMPTS[:4]:
                kw = dict(max_tokens=100, temperature=0.0, logit_bias=bias(s1_engine))
                a = await s1_engine.generate(p, budget, **kw)
                b = await s1_engine.generate(p, budget.model_copy(update={"strategy": "rounds"}), **kw)
                out.append((budget, a, b))
        return out

    results = run(compare())
    forced = 0
    for budget, a, b in results:
        assert a.token_ids == b.token_ids
        assert (a.stats.thinking_tokens, a.stats.waits_inserted) == (b.stats.thinking_tokens, b.stats.waits_inserted)
        if a.stats.forced_end:
            forced += 1
            assert a.answer.startswith("Final Answer:")
            end = s1_engine.profile.think_end
            i = a.token_ids.index(end[0], a.stats.thinking_tokens)
            assert tuple(a.token_ids[i : i + 3]) == end
    assert forced > 0
    assert any(a.stats.waits_inserted >= 2 for _, a, _ in results)


def test_invariants_in_mixed_sampled_batches(engine: Any, plain_llm: Any, run: Callable) -> None:
    rng = random.Random(7)
    jobs: list[tuple[Any, Budget | None, dict[str, Any]]] = []
    for i in range(48):
        p = PROMPTS[i % len(PROMPTS)]
        sampling = dict(max_tokens=100, temperature=rng.choice([0.0, 0.7, 1.0]), seed=i, logit_bias=bias(engine, 4.0))
        if i % 4 == 0:
            jobs.append((p, None, sampling))
            continue
        lo = rng.randint(0, 40)
        hi = rng.choice([None, lo + rng.randint(0, 40)])
        jobs.append((p, Budget(min_thinking_tokens=lo, max_thinking_tokens=hi, max_waits=rng.choice([None, 1, 3])), sampling))

    async def go() -> tuple[list[Any], list[list[int]]]:
        outs = await asyncio.gather(*(engine.generate(p, b, **s) for p, b, s in jobs))
        refs = [await plain_ids(plain_llm, engine.prompt_ids(p), **s) for p, b, s in jobs if b is None]
        return outs, refs

    outs, refs = run(go())
    plain = [o for o, (_, b, _) in zip(outs, jobs) if b is None]
    assert [o.token_ids for o in plain] == refs  # untouched inside a mixed batch
    waits = 0
    for (p, b, _), out in zip(jobs, outs):
        if b is not None:
            check_invariants(engine, p, b, out)
            waits += out.stats.waits_inserted
    assert waits > 0


def test_stream_concatenates_to_generate(engine: Any, run: Callable) -> None:
    budget = Budget(min_thinking_tokens=20, max_thinking_tokens=40)
    kw = dict(max_tokens=80, temperature=0.8, seed=3, logit_bias=bias(engine))

    async def go() -> tuple[Any, list[Any]]:
        full = await engine.generate(PROMPTS[1], budget, **kw)
        deltas = [d async for d in engine.stream(PROMPTS[1], budget, **kw)]
        return full, deltas

    full, deltas = run(go())
    assert "".join(d.reasoning for d in deltas) == full.reasoning
    assert "".join(d.answer for d in deltas) == full.answer
    assert deltas[-1].stats == full.stats
    first_answer = next((i for i, d in enumerate(deltas) if d.answer), len(deltas))
    assert not any(d.reasoning for d in deltas[first_answer:]), "reasoning after the answer began"


def test_impossible_budgets_fail_before_running(engine: Any, run: Callable) -> None:
    with pytest.raises(BudgetError, match="no room"):
        run(engine.generate(PROMPTS[0], Budget(max_thinking_tokens=50), max_tokens=50))
    with pytest.raises(BudgetError, match="exceeds"):
        run(engine.generate(PROMPTS[0], None, max_tokens=10_000))
