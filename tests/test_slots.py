"""`ForcingSlots` (the device-resident state) against `ThinkingController` (the specification).

A batch of rows with different plans is driven step by step on random logits: the slots apply
their actions to the logits and the argmax is taken; the controller, given the same raw
logits, must pick the same token and keep the same counts. Rows without a budget must come
out of every step untouched.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetforce.core.controller import Action, ForcingPlan, Phase, ThinkingController
from budgetforce.core.layout import FORCE_LOGIT, NS, F, S
from budgetforce.vllm.slots import ForcingSlots, uniform

V = 40
START, END, EOS, WAIT, HMM, COMMA = 5, 6, 2, 9, 10, 11
IM, THINK, ANSWER, NL, FINAL, COLON = 30, 31, 32, 33, 34, 35
R1 = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),))
S1 = dict(
    think_start=(IM, THINK, NL), think_end=(IM, ANSWER, NL), eos=frozenset({EOS, 3}),
    waits=((WAIT,), (HMM, COMMA)), answer_prefix=(FINAL, COLON),
)
PROMPT = {"r1": [1, 4, START, NL], "s1": [1, IM, THINK, NL], "closed": [1, START, 7, END]}


def reference_token(ctl: ThinkingController, raw: torch.Tensor) -> tuple[int, bool]:
    """What the controller's rules make of a greedy model's raw logits."""
    kind, token = ctl.action()
    if kind == Action.FORCE:
        return token, False
    logits = raw.clone()
    banned = ctl.banned_now()
    if banned:
        logits[list(banned)] = -math.inf
    if kind == Action.BAN:
        logits[list(ctl.plan.close_attempts)] = -math.inf
    choice = int(logits.argmax())
    if kind == Action.GUARD and choice in ctl.plan.close_attempts:
        return token, True
    if kind == Action.REDIRECT and choice in ctl.redirected:
        return ctl.plan.think_end[0], False
    return choice, False


def drive(slots: ForcingSlots, ctls: list, keys: list[int], raws: list[torch.Tensor], before=None) -> None:
    """Step the slots and the controllers side by side, greedy, on ``raws`` (one [B, V] per step),
    checking every row's token; rows without a controller must come out untouched. A last step
    consumes the final tokens. ``before(step)`` runs ahead of each step (the frontend's moves)."""
    b = len(ctls)
    row_keys = torch.tensor(keys)
    outs: list[list[int]] = [[] for _ in range(b)]

    def step(logits: torch.Tensor) -> None:
        hist = torch.tensor([[o[-1] if o else -1] for o in outs])
        seen = torch.tensor([len(o) - 1 if o else 0 for o in outs])
        slots.step(logits, row_keys, hist, torch.arange(b), -seen, torch.tensor([len(o) for o in outs]))

    for n, raw in enumerate(raws):
        if before is not None:
            before(n)
        for r, ctl in enumerate(ctls):  # the logit-margin exit reads the raw logits (a no-op unless due)
            if ctl is not None:
                ctl.margin_exit(float(raw[r].max() - raw[r, ctl.plan.think_end[0]]))
        logits = raw.clone()
        step(logits)
        chosen = logits.argmax(1).tolist()
        for r, ctl in enumerate(ctls):
            if ctl is None:
                assert torch.equal(logits[r], raw[r]), "a row without a plan was touched"
                outs[r].append(chosen[r])
                continue
            want, replaced = reference_token(ctl, raw[r])
            assert chosen[r] == want, f"row {r} step {n}: slots chose {chosen[r]}, controller {want} ({ctl.action()})"
            ctl.accept(want, replaced)
            outs[r].append(want)
    step(torch.zeros(b, V))


BREAK, IV1, IV2, XBREAK = 14, 16, 17, 13


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    specs=st.lists(
        st.tuples(
            st.sampled_from(["r1", "s1", "none"]),
            st.one_of(st.just(0), st.integers(0, 30)), st.one_of(st.none(), st.integers(0, 40)),
            st.sampled_from([frozenset(), frozenset({12}), frozenset({12, HMM, WAIT})]),
            st.sampled_from([(), (IV1,), (IV1, IV2, IV1)]), st.integers(0, 12),
            st.one_of(st.none(), st.integers(0, 8)),
            st.sampled_from([0, 6, 25]), st.sampled_from([0.3, 1.0]), st.booleans(),
            st.sampled_from([None, None, 0.0, 0.8, 2.5]),
        ),
        min_size=1, max_size=6,
    ),
    exit_at=st.integers(0, 50),
)
def test_slots_follow_the_controller_with_every_mode(seed: int, specs: list, exit_at: int) -> None:
    """The modes beyond s1 (bans, interventions, answer budgets, scheduled waits, early exits by the
    frontend and by the logit margin), mixed with s1's budgets, give the same tokens and counts on
    the device as in the controller."""
    gen = torch.Generator().manual_seed(seed)
    slots = ForcingSlots(16, torch.device("cpu"), stats=torch.zeros(16, NS, dtype=torch.int32))
    ctls: list[ThinkingController | None] = []
    keys = []
    for i, (family, lo, hi, banned, ivn, iv_at, max_answer, alpha, p, decay, margin) in enumerate(specs):
        if hi is not None and lo > hi:
            lo = hi
        plan = ForcingPlan(
            **(R1 if family != "s1" else S1), min_thinking=lo if family != "none" else 0,
            max_thinking=hi if family != "none" else None, banned=banned, intervention=ivn, intervention_at=iv_at,
            max_answer=max_answer, alpha_moment=alpha, wait_probability=p, wait_decay=decay,
            breaks=frozenset({BREAK}), answer_end=EOS, early_exit=i % 2 == 0,
            exit_margin=margin, exit_breaks=frozenset({BREAK, XBREAK}) if margin is not None else frozenset(),
        )
        prompt = PROMPT["s1" if family == "s1" else ("closed" if i % 3 == 2 else "r1")]
        if not plan.is_active:
            ctls.append(None)
            keys.append(-1)
            continue
        assert slots.load(i, plan, 0.0, (i, 7), prompt, (i, 1))
        ctls.append(ThinkingController(plan, prompt, rng_key=(i, 7)))
        keys.append(i)
    slots.flush()
    raws = [torch.randn(len(specs), V, generator=gen) for _ in range(60)]
    for raw in raws:
        raw[:, END] += 0.5
        raw[:, BREAK] += 1.5
        raw[:, XBREAK] += 0.5
        raw[:, WAIT] += 1.0

    def frontend(step: int) -> None:
        if step == exit_at:  # the frontend asks while the request thinks (the flag persists)
            for r, ctl in enumerate(ctls):
                if ctl is not None and r % 2 == 0 and ctl.phase is Phase.THINKING:
                    slots.stats[keys[r], S.EXIT] = 1
                    assert ctl.exit_now()

    drive(slots, ctls, keys, raws, frontend)
    for r, ctl in enumerate(ctls):
        if ctl is None:
            continue
        row = slots.state[keys[r]]
        got = tuple(int(row[c]) for c in (F.ON, F.THINK, F.WAITS, F.FORCED, F.SCHED, F.ANS, F.IVDONE, F.EXITED))
        answers = ctl.answer_tokens if ctl.plan.max_answer is not None else 0  # counted for answer budgets only
        want = (1, ctl.thinking_tokens, ctl.waits_inserted, int(ctl.forced_end), ctl.scheduled_waits,
                answers, int(ctl.intervened), int(ctl.early_exit))
        assert got == want, f"row {r}: slots {got}, controller {want}"
        assert int(slots.stats[keys[r], S.SCHED]) == ctl.scheduled_waits


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    specs=st.lists(
        st.tuples(
            st.sampled_from(["r1", "s1", "none"]),
            st.integers(0, 30), st.one_of(st.none(), st.integers(0, 40)), st.one_of(st.none(), st.integers(0, 4)),
            st.floats(0.0, 4.0),
        ),
        min_size=1, max_size=6,
    ),
)
def test_slots_follow_the_controller_under_greedy(seed: int, specs: list) -> None:
    gen = torch.Generator().manual_seed(seed)
    slots = ForcingSlots(16, torch.device("cpu"), stats=torch.zeros(16, NS, dtype=torch.int32))
    ctls: list[ThinkingController | None] = []
    keys = []
    for i, (family, lo, hi, waits, _) in enumerate(specs):
        if family == "none" or (hi is not None and lo > hi):
            ctls.append(None)
            keys.append(-1)
            continue
        plan = ForcingPlan(**(R1 if family == "r1" else S1), min_thinking=lo, max_thinking=hi, max_waits=waits)
        prompt = PROMPT["s1" if family == "s1" else ("closed" if i % 3 == 2 else "r1")]
        assert slots.load(i, plan, 0.0, (i, 7), prompt, (i, 1))
        ctls.append(ThinkingController(plan, prompt) if plan.is_active else None)
        keys.append(i if plan.is_active else -1)
    slots.flush()
    raws = [torch.randn(len(specs), V, generator=gen) for _ in range(60)]
    for raw in raws:
        for r, spec in enumerate(specs):
            raw[r, END] += spec[4]
            raw[r, IM] += spec[4]
            raw[r, START] += 1.0
    drive(slots, ctls, keys, raws)
    for r, ctl in enumerate(ctls):
        if ctl is None:
            continue
        row = slots.state[keys[r]]
        assert int(row[F.ON]) == 1
        assert (int(row[F.THINK]), int(row[F.WAITS]), bool(row[F.FORCED])) == (
            ctl.thinking_tokens, ctl.waits_inserted, ctl.forced_end,
        )
        assert int(slots.stats[keys[r], S.WAITS]) == ctl.waits_inserted


def test_a_forced_token_that_does_not_come_out_turns_the_row_inert() -> None:
    """A user's bias or a stop string can keep a forced token out: that row runs on unforced."""
    slots = ForcingSlots(4, torch.device("cpu"))
    plan = ForcingPlan(**R1, max_thinking=0)
    slots.load(0, plan, 0.0, (1, 2), PROMPT["r1"])
    slots.flush()
    logits = torch.zeros(1, V)
    slots.step(logits, torch.tensor([0]), torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert logits[0, END] == FORCE_LOGIT
    logits = torch.zeros(1, V)
    slots.step(logits, torch.tensor([0]), torch.tensor([[7]]), torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert int(slots.state[0, F.ON]) == 0 and int(slots.state[0, F.FAIL]) == 1 and slots.count_failures() == 1
    assert torch.equal(logits, torch.zeros(1, V))


def test_the_posterior_draw_is_uniform_and_keyed() -> None:
    """The counter RNG: uniform in [0, 1), different across keys and positions, reproducible."""
    pos = torch.arange(20000)
    u = uniform(torch.full_like(pos, 12345), torch.full_like(pos, 678), pos)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    v = uniform(torch.full_like(pos, 12346), torch.full_like(pos, 678), pos)
    assert float((u - v).abs().mean()) > 0.2  # another key: another stream
    assert torch.equal(u, uniform(torch.full_like(pos, 12345), torch.full_like(pos, 678), pos))


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_guard_moves_mass_and_draws_the_share(temperature: float) -> None:
    """Sampled rows: the close attempts' probability moves onto the wait token, exactly."""
    slots = ForcingSlots(2, torch.device("cpu"))
    slots.load(0, ForcingPlan(**R1, min_thinking=10), temperature, (3, 4), PROMPT["r1"])
    slots.flush()
    raw = torch.randn(1, V, generator=torch.Generator().manual_seed(0))
    logits = raw.clone()
    slots.step(logits, torch.tensor([0]), torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    p_raw = torch.softmax(raw[0] / temperature, 0)
    p_new = torch.softmax(logits[0] / temperature, 0)
    assert float(p_new[END]) == 0.0 and float(p_new[EOS]) == 0.0
    assert math.isclose(float(p_new[WAIT]), float(p_raw[WAIT] + p_raw[END] + p_raw[EOS]), rel_tol=1e-5)
    assert int(slots.state[0, F.ACT]) == Action.GUARD
