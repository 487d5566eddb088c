"""The thinking modes beyond s1: the controller's rules, then real vLLM (CPU) on a tiny random model.

Each mode is checked twice: on `ThinkingController` with hand-made token ids (what the rule
does), and in a real engine, where the engine strategy (the logits processor) and the rounds
strategy (s1's loop, stopping wherever a rule acts) must give the same tokens under greedy
decoding, and the rule must visibly act. Early exit has no rounds reference: it is checked on
its own (probes ran, the thinking closed early, the probes' tokens are not the request's).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from budgetforce import Budget
from budgetforce.core.controller import Action, ForcingError, ForcingPlan, Phase, ThinkingController

START, END, EOS, WAIT, HMM, COMMA, BREAK, IV1, IV2 = 5, 6, 2, 9, 10, 11, 14, 16, 17
R1 = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),))
OPEN = [1, 4, START]


# -- the rules, on the controller -------------------------------------------------------------
def test_banned_tokens_apply_only_inside_a_free_thinking() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, banned=frozenset({WAIT, HMM})), OPEN)
    assert ctl.banned_now() == {WAIT, HMM} and ctl.action() == (Action.FREE, -1)  # no budget: nothing else changes
    ctl.accept(7)
    ctl.accept(END)
    assert ctl.phase is Phase.ANSWERING and ctl.banned_now() == frozenset()  # the answer may say "Wait"


def test_intervention_is_forced_at_the_start_or_after_n_thinking_tokens() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, intervention=(IV1, IV2)), OPEN)
    assert ctl.action() == (Action.FORCE, IV1)
    ctl.accept(IV1)
    ctl.accept(IV2)
    assert ctl.intervened and ctl.thinking_tokens == 2 and ctl.action() == (Action.FREE, -1)
    assert not ctl.just_waited  # an intervention is not a wait: the model may close right after it

    ctl = ThinkingController(ForcingPlan(**R1, intervention=(IV1,), intervention_at=3), OPEN)
    for t in (7, 8):
        ctl.accept(t)
        assert ctl.action() == (Action.FREE, -1)
    ctl.accept(7)
    assert ctl.action() == (Action.FORCE, IV1)


def test_answer_budget_forces_the_end_of_sequence_after_n_answer_tokens() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, max_thinking=2, answer_prefix=(30, 31), max_answer=3), OPEN)
    for t in (7, 8):
        ctl.accept(t)
    for t in (END, 30, 31):  # the forced end: close, then the answer prefix (two answer tokens)
        assert ctl.action() == (Action.FORCE, t)
        ctl.accept(t)
    assert ctl.answer_tokens == 2 and ctl.action() == (Action.FREE, -1)
    ctl.accept(40)
    assert ctl.action() == (Action.FORCE, EOS)
    ctl.accept(EOS)
    assert ctl.answer_truncated and ctl.stats.answer_tokens == 3
    bad = ThinkingController(ForcingPlan(**R1, max_answer=0), OPEN)
    bad.accept(END)
    assert bad.action() == (Action.FORCE, EOS)
    with pytest.raises(ForcingError):
        bad.accept(41)


def test_scheduled_waits_before_the_alpha_moment_and_closes_after_it() -> None:
    plan = ForcingPlan(
        **R1, alpha_moment=4, wait_probability=1.0, wait_decay=False, breaks=frozenset({BREAK})
    )
    ctl = ThinkingController(plan, OPEN, rng_key=(3, 4))
    ctl.accept(7)
    ctl.accept(BREAK)  # 2 thinking tokens < alpha 4, probability 1: the wait string follows
    assert ctl.scheduled_waits == 1 and ctl.action() == (Action.FORCE, WAIT)
    ctl.accept(WAIT)
    assert ctl.action() == (Action.BAN, -1)  # as after any wait string, the next token may not close
    ctl.accept(8)
    assert ctl.thinking_tokens == 4 and ctl.quenching
    assert ctl.action() == (Action.REDIRECT, END) and ctl.redirected == {WAIT}  # a wait now becomes the close
    ctl.accept(BREAK)  # past the alpha moment: no more scheduled waits
    assert ctl.scheduled_waits == 1 and ctl.action() == (Action.REDIRECT, END)


def test_the_linear_schedule_thins_out_towards_the_alpha_moment() -> None:
    """p(t) = p * (1 - t/alpha): over many keys, early breaks get a wait about twice as often as
    breaks half-way to the moment."""
    plan = ForcingPlan(**R1, alpha_moment=100, wait_probability=0.8, breaks=frozenset({BREAK}))

    def rate(at: int) -> float:
        hits = 0
        for k in range(2000):
            ctl = ThinkingController(plan, OPEN, rng_key=(k, 99))
            for _ in range(at - 1):
                ctl.accept_quiet()
            ctl.accept(BREAK)
            hits += ctl.scheduled_waits
        return hits / 2000

    early, mid = rate(1), rate(50)
    assert abs(early - 0.8 * 0.99) < 0.04 and abs(mid - 0.8 * 0.5) < 0.04


def test_early_exit_closes_the_thinking_with_the_forced_end() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, answer_prefix=(30,), early_exit=True), OPEN)
    ctl.accept(7)
    assert ctl.exit_now() and ctl.early_exit and ctl.forced_end
    assert ctl.action() == (Action.FORCE, END)
    ctl.accept(END)
    ctl.accept(30)
    assert ctl.phase is Phase.ANSWERING and not ctl.exit_now()


# -- real vLLM: engine == rounds under greedy, and the rule acts ---------------------------------
PROMPTS = [[{"role": "user", "content": f"question {i}: how many apples {i * 7} bags"}] for i in range(5)]


def _greedy_pairs(engine: Any, run: Callable, budget: Budget, max_tokens: int = 100, bias: float = 3.0) -> list:
    async def go() -> list:
        pairs = []
        for p in PROMPTS:
            kw = dict(max_tokens=max_tokens, temperature=0.0, seed=11, logit_bias={engine.profile.think_end[0]: bias})
            a = await engine.generate(p, budget.model_copy(update={"strategy": "engine"}), **kw)
            b = await engine.generate(p, budget.model_copy(update={"strategy": "rounds"}), **kw)
            pairs.append((a, b))
        return pairs

    pairs = run(go())
    for a, b in pairs:
        assert a.token_ids == b.token_ids
        for field in ("thinking_tokens", "waits_inserted", "forced_end", "scheduled_waits", "answer_tokens",
                      "answer_truncated", "intervened"):
            assert getattr(a.stats, field) == getattr(b.stats, field), field
    return pairs


@pytest.mark.engine
def test_banned_thinking_strings_never_appear_in_the_thinking(engine: Any, run: Callable) -> None:
    from collections import Counter

    free = _greedy_pairs(engine, run, Budget(max_thinking_tokens=60), bias=0.0)
    counts = Counter(t for a, _ in free for t in a.reasoning_token_ids)
    words = [engine.tokenizer.decode([t]).strip() for t, _ in counts.most_common()]
    word = next(w for w in words if w.isalpha())  # the random model's favourite word: ban it
    banned = engine.profile.plan(Budget(banned_thinking_strings=(word,))).banned
    assert any(set(a.reasoning_token_ids) & banned for a, _ in free)
    for a, _ in _greedy_pairs(engine, run, Budget(max_thinking_tokens=60, banned_thinking_strings=(word,)), bias=0.0):
        assert not set(a.reasoning_token_ids) & banned


@pytest.mark.engine
@pytest.mark.parametrize("at", [0, 7])
def test_thinking_intervention_is_written_into_the_thinking(engine: Any, run: Callable, at: int) -> None:
    text = "let me check the answer"
    ids = engine.profile.plan(Budget(thinking_intervention=text)).intervention
    for a, _ in _greedy_pairs(engine, run, Budget(thinking_intervention=text, intervention_at=at)):
        r = a.reasoning_token_ids
        if at == 0:
            assert tuple(r[: len(ids)]) == ids
        elif a.stats.thinking_tokens >= at + len(ids):
            assert tuple(r[at : at + len(ids)]) == ids
        assert a.stats.intervened == (a.stats.thinking_tokens >= at + len(ids))
    assert any(a.stats.intervened for a, _ in _greedy_pairs(engine, run, Budget(thinking_intervention=text, intervention_at=at)))


@pytest.mark.engine
def test_answer_budget_cuts_the_answer_not_the_thinking(engine: Any, run: Callable) -> None:
    pairs = _greedy_pairs(engine, run, Budget(max_thinking_tokens=20, max_answer_tokens=5), max_tokens=120)
    for a, _ in pairs:
        assert a.stats.answer_tokens <= 5 and a.finish_reason == "stop"
        assert len(a.answer_token_ids) - (1 if a.token_ids[-1] in engine.profile.eos else 0) == a.stats.answer_tokens
    assert any(a.stats.answer_truncated for a, _ in pairs)
    # with only a cap, the answer budget leaves the thinking what the answer does not need
    cap = 60
    for a, _ in _greedy_pairs(engine, run, Budget(max_answer_tokens=10), max_tokens=cap):
        assert a.stats.thinking_tokens <= cap - 10 - 1 and len(a.token_ids) <= cap


@pytest.mark.engine
@pytest.mark.parametrize(("p", "decay"), [(1.0, "constant"), (0.5, "linear")])
def test_scheduled_waits_agree_with_the_rounds_loop(engine: Any, run: Callable, p: float, decay: str) -> None:
    from collections import Counter

    free = _greedy_pairs(engine, run, Budget(max_thinking_tokens=90), max_tokens=120, bias=0.0)
    counts = Counter(t for a, _ in free for t in a.reasoning_token_ids[:40])
    text = next(x for x in (engine.tokenizer.decode([t]) for t, _ in counts.most_common()) if x.strip() and "\ufffd" not in x)
    # the random model's most frequent early token stands in for a paragraph break
    budget = Budget(alpha_moment_tokens=40, wait_probability=p, wait_decay=decay, paragraph_breaks=(text,),
                    max_thinking_tokens=90)  # fmt: skip
    assert engine.profile.plan(budget).breaks
    pairs = _greedy_pairs(engine, run, budget, max_tokens=120, bias=0.0)
    assert sum(a.stats.scheduled_waits for a, _ in pairs) >= 2, "no wait was ever scheduled"


@pytest.mark.engine
def test_early_exit_closes_the_thinking_once_probes_agree(engine: Any, run: Callable) -> None:
    kw = dict(max_tokens=150, temperature=0.0, seed=5)
    budget = Budget(probe_every=8, probe_agree=1, probe_lead=" the answer is", probe_max_tokens=4)

    async def go(b: Budget | None) -> list:
        return await asyncio.gather(*(engine.generate(p, b, **kw) for p in PROMPTS))

    outs, plain = run(go(budget)), run(go(None))
    exited = [(o, q) for o, q in zip(outs, plain) if o.stats.early_exit]
    assert exited, "no probe ever closed a thinking"
    for o, q in exited:
        assert o.stats.probes >= 1 and o.stats.probe_tokens >= 1 and o.stats.forced_end
        assert o.stats.thinking_tokens < max(q.stats.thinking_tokens, 1) or q.finish_reason == "length"
        assert o.token_ids[: o.stats.thinking_tokens - 8] == q.token_ids[: o.stats.thinking_tokens - 8]  # same path until the exit
        assert engine.profile.think_end[0] in o.token_ids  # the close was forced


# -- the logit-margin exit: engine == a stop-and-resubmit reference on the model's log-probabilities ---
async def _free_run(engine: Any, ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens from ``ids`` with, per position, ``log p(top) - log p(close)`` on the raw
    logits (vLLM's `logprob_token_ids`: the close's log-probability beside the sampled one, which
    under greedy decoding is the top token's)."""
    import uuid

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    close = engine.profile.think_end[0]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=3, logprob_token_ids=[close])
    final = None
    async for out in engine._side.client.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):  # noqa: SLF001
        final = out
    o = final.outputs[0]
    gaps = [lp[t].logprob - lp[close].logprob for t, lp in zip(o.token_ids, o.logprobs)]
    return list(o.token_ids), gaps


async def _margin_reference(engine: Any, prompt_ids: list[int], plan: ForcingPlan, max_tokens: int) -> list[int]:
    """The exit's rules played on free greedy runs: generate, walk the tokens with the controller
    testing the margin on each position's gap, and resubmit from wherever the rules act."""
    ctl = ThinkingController(plan, prompt_ids)
    out: list[int] = []
    while len(out) < max_tokens:
        kind, tok = ctl.action()
        if kind == Action.FORCE:
            out.append(tok)
            ctl.accept(tok)
            continue
        if out and out[-1] in plan.eos:
            break
        toks, gaps = await _free_run(engine, prompt_ids + out, max_tokens - len(out))
        for tok, gap in zip(toks, gaps):
            ctl.margin_exit(gap)
            kind, forced = ctl.action()
            if kind == Action.FORCE:
                break  # the rules act here: resubmit
            redirected = kind == Action.REDIRECT and tok in ctl.redirected  # a budgeted thinking's EOS is the close
            tok = plan.think_end[0] if redirected else tok
            out.append(tok)
            ctl.accept(tok)
            if redirected:
                break  # the text differs from the free run's from here: resubmit
        else:
            break  # the free run ended (end of sequence, or the cap)
    return out[:max_tokens]


@pytest.mark.engine
def test_margin_exit_matches_the_reference_and_saves_thinking(engine: Any, run: Callable) -> None:
    """Greedy engine == the reference loop, token for token; the exit acts at a break past the
    minimum, and the report says so (`early_exit`, `exit_tokens_saved`)."""
    from collections import Counter

    cap, hi, lo = 140, 100, 12
    free = _greedy_pairs(engine, run, Budget(max_thinking_tokens=hi), max_tokens=cap, bias=0.0)
    counts = Counter(t for a, _ in free for t in a.reasoning_token_ids[lo:])
    text = next(x for x in (engine.tokenizer.decode([t]) for t, _ in counts.most_common()) if x.strip() and "\ufffd" not in x)
    probe = engine.profile.plan(Budget(exit_margin=1.0, exit_breaks=(text,)))
    prompts = [engine.prompt_ids(p) for p in PROMPTS]

    async def gaps_at_breaks() -> list[float]:
        out = []
        for ids in prompts:
            toks, gaps = await _free_run(engine, ids, cap)
            out += [gaps[i + 1] for i in range(lo, min(len(toks) - 1, hi)) if toks[i] in probe.exit_breaks]
        return sorted(out)

    gaps = run(gaps_at_breaks())
    assert len(gaps) >= 5, "too few breaks to test the exit on"
    margin = gaps[len(gaps) // 3]  # a margin that some breaks meet and others do not
    budget = Budget(max_thinking_tokens=hi, min_thinking_tokens=lo, exit_margin=margin, exit_breaks=(text,))
    plan = engine.plan(budget, cap)

    async def go() -> list:
        outs = []
        for p, ids in zip(PROMPTS, prompts):
            a = await engine.generate(p, budget, max_tokens=cap, temperature=0.0, seed=3)
            outs.append((a, await _margin_reference(engine, ids, plan, cap)))
        return outs

    exits = 0
    for a, ref in run(go()):
        assert a.token_ids == ref
        if a.stats.early_exit:
            exits += 1
            assert a.stats.forced_end and lo <= a.stats.thinking_tokens < hi
            assert a.stats.exit_tokens_saved == hi - a.stats.thinking_tokens
            assert a.reasoning_token_ids[-1] in plan.exit_breaks  # it closed right after a break
        else:
            assert a.stats.exit_tokens_saved is None
    assert exits >= 1, "the margin never closed a thinking"
