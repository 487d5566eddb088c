"""The engine-free controller: exact s1 semantics on token ids, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from budgetforce import Budget, BudgetError
from budgetforce.core.controller import Action, ForcingPlan, Phase, ThinkingController

# Ids of a made-up vocabulary: R1 closes with one token, s1 with three ("<|im_start|>answer\n").
START, END, EOS, WAIT, HMM, COMMA, X, Y = 5, 6, 2, 9, 10, 11, 20, 21
R1 = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),))
IM, THINK, ANSWER, NL, FINAL, COLON = 30, 31, 32, 33, 34, 35
S1 = dict(
    think_start=(IM, THINK, NL), think_end=(IM, ANSWER, NL), eos=frozenset({EOS}),
    waits=((WAIT,), (HMM, COMMA)), answer_prefix=(FINAL, COLON),
)
OPEN_R1 = [1, 2, 3, START, NL]  # R1 templates end the prompt with "<think>\n"
OPEN_S1 = [1, IM, THINK, NL]


def drive(ctl: ThinkingController, proposals: list[int], limit: int = 400) -> list[int]:
    """Play the engine: each step the model proposes a token and the controller's action applies."""
    out: list[int] = []
    it = iter(proposals)
    while len(out) < limit:
        kind, token = ctl.action()
        if kind == Action.FORCE:
            emit, replaced = token, False
        else:
            proposal = next(it, EOS)
            if kind == Action.BAN:  # s1's min_tokens=1 after a wait: the model's next non-close choice
                while proposal in ctl.plan.close_attempts:
                    proposal = next(it, X)
            emit, replaced = proposal, False
            if kind == Action.GUARD and proposal in ctl.plan.close_attempts:
                emit, replaced = token, True
            elif kind == Action.REDIRECT and proposal in ctl.plan.eos:
                emit = ctl.plan.think_end[0]
        ctl.accept(emit, replaced)
        out.append(emit)
        if kind != Action.FORCE and emit in ctl.plan.eos:
            break
    return out


def test_min_replaces_close_with_wait() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, min_thinking=4), OPEN_R1)
    out = drive(ctl, [X, END, Y, END, Y, END, EOS])
    assert out == [X, WAIT, Y, WAIT, Y, END, EOS]
    assert ctl.stats.waits_inserted == 2 and ctl.thinking_tokens == 5 and not ctl.forced_end


def test_max_forces_close_and_prefix() -> None:
    ctl = ThinkingController(ForcingPlan(**S1, max_thinking=3), OPEN_S1)
    out = drive(ctl, [X, Y, X, Y, Y, EOS])
    assert out == [X, Y, X, IM, ANSWER, NL, FINAL, COLON, Y, Y, EOS]
    assert ctl.forced_end and ctl.thinking_tokens == 3
    reasoning, answer = ctl.split(out)
    assert reasoning == [X, Y, X] and answer == [FINAL, COLON, Y, Y, EOS]


def test_multi_token_waits_rotate_and_count_as_thinking() -> None:
    ctl = ThinkingController(ForcingPlan(**S1, min_thinking=6), OPEN_S1)
    out = drive(ctl, [X, IM, Y, EOS, Y, IM, EOS])
    # first close -> "Wait", second (EOS) -> "Hmm ,", then the minimum (6) is reached
    assert out[:7] == [X, WAIT, Y, HMM, COMMA, Y, IM]
    assert ctl.waits_inserted == 2 and ctl.thinking_tokens == 6
    assert out[7:9] == [ANSWER, NL]  # a natural close still gets its full delimiter


def test_max_waits_lets_the_model_close() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, min_thinking=100, max_waits=1), OPEN_R1)
    out = drive(ctl, [END, END, X, END, X, EOS])
    # s1 resubmits after the wait with min_tokens=1: the close right after "Wait" is not allowed
    assert out == [WAIT, X, END, X, EOS] and ctl.waits_inserted == 1


def test_zero_max_closes_immediately() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, max_thinking=0), OPEN_R1)
    assert ctl.action() == (Action.FORCE, END)
    assert drive(ctl, [X, EOS]) == [END, X, EOS] and ctl.thinking_tokens == 0


def test_eos_inside_budgeted_thinking_closes_it() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, max_thinking=50), OPEN_R1)
    assert drive(ctl, [X, EOS, Y, EOS]) == [X, END, Y, EOS]


def test_model_opens_thinking_itself() -> None:
    ctl = ThinkingController(ForcingPlan(**R1, min_thinking=2), [1, 2, 3])
    assert ctl.phase is Phase.BEFORE
    out = drive(ctl, [START, END, X, END, Y, EOS])
    assert out == [START, WAIT, X, END, Y, EOS]


def test_observer_needs_the_whole_multi_token_close() -> None:
    ctl = ThinkingController(ForcingPlan(**S1), OPEN_S1)
    for t in [X, IM, Y, IM, ANSWER, NL, Y]:
        ctl.accept(t)
    assert ctl.phase is Phase.ANSWERING and ctl.thinking_tokens == 3
    assert ctl.split([X, IM, Y, IM, ANSWER, NL, Y]) == ([X, IM, Y], [Y])


def test_unbudgeted_controller_never_acts() -> None:
    ctl = ThinkingController(ForcingPlan(**R1), OPEN_R1)
    assert drive(ctl, [END, X, END, EOS]) == [END, X, END, EOS]
    assert ctl.action() == (Action.FREE, -1)


# -- budget validation --------------------------------------------------------------------
def test_budget_rejects_inverted_and_negative() -> None:
    with pytest.raises(ValidationError, match="min_thinking_tokens"):
        Budget(min_thinking_tokens=10, max_thinking_tokens=5)
    with pytest.raises(ValidationError):
        Budget(max_thinking_tokens=-1)
    with pytest.raises(ValidationError):
        Budget(max_waits=-2)
    with pytest.raises(ValidationError):
        Budget(wait_strings=[""])


def test_budget_needs_room_for_an_answer() -> None:
    with pytest.raises(BudgetError, match="no room") as e:
        Budget(max_thinking_tokens=100).check_room(101, reserved=1)
    assert e.value.param == "max_thinking_tokens"
    Budget(max_thinking_tokens=100).check_room(102, reserved=1)
    with pytest.raises(BudgetError):
        Budget(min_thinking_tokens=50).check_room(50)


# -- properties -----------------------------------------------------------------------------
TOKENS = st.sampled_from([X, Y, WAIT, END, EOS, IM, ANSWER, NL, HMM])


@settings(max_examples=400, deadline=None)
@given(
    family=st.sampled_from(["r1", "s1"]),
    proposals=st.lists(TOKENS, max_size=120),
    min_t=st.integers(0, 60),
    extra=st.one_of(st.none(), st.integers(0, 60)),
    max_waits=st.one_of(st.none(), st.integers(0, 5)),
)
def test_budget_invariants(family: str, proposals: list[int], min_t: int, extra: int | None, max_waits: int | None) -> None:
    base = R1 if family == "r1" else S1
    max_t = None if extra is None else min_t + extra
    plan = ForcingPlan(**base, min_thinking=min_t, max_thinking=max_t, max_waits=max_waits)
    prompt = OPEN_R1 if family == "r1" else OPEN_S1
    ctl = ThinkingController(plan, prompt)
    out = drive(ctl, proposals)
    stats = ctl.stats

    if max_t is not None:
        assert stats.thinking_tokens <= max_t
    if max_waits is not None:
        assert stats.waits_inserted <= max_waits
    if ctl.think_end_at is not None and not stats.forced_end:
        # a close below the minimum only once the waits ran out
        assert stats.thinking_tokens >= min_t or stats.waits_inserted == max_waits
    # the thinking span holds no close attempt, and the close delimiter appears right after it
    span = out[: ctl.think_end_at] if ctl.think_end_at is not None else out
    if plan.is_active:  # without a budget the model may end the sequence inside its thinking
        assert not set(span) & plan.close_attempts
    if ctl.think_end_at is not None:
        end = ctl.think_end_at
        assert tuple(out[end : end + len(plan.think_end)]) == plan.think_end
        assert len(span) == stats.thinking_tokens
    # an observer that only watches the ids agrees on the spans and the count
    observer = ThinkingController(ForcingPlan(**base), prompt)
    for t in out:
        observer.accept(t)
    assert observer.thinking_tokens == stats.thinking_tokens
    assert observer.think_end_at == ctl.think_end_at


# -- the logit-margin exit (ThinkBrake) --------------------------------------------------------
BRK = 40  # a paragraph-break token


def margin_run(plan: ForcingPlan, tokens: list[int], gaps: dict[int, float]) -> tuple[ThinkingController, list[int]]:
    """Feed ``tokens`` (replacing what the controller forces), testing the margin before each token
    with the gap ``gaps`` gives for that position (default 10: the model is sure it goes on).
    Returns the controller and the positions at which the margin was tested."""
    ctl = ThinkingController(plan, OPEN_R1)
    tested = []
    for i, tok in enumerate(tokens):
        if ctl.margin_due:
            tested.append(i)
        ctl.margin_exit(gaps.get(i, 10.0))
        kind, forced = ctl.action()
        if kind == Action.FORCE:
            tok = forced
        replaced = kind == Action.GUARD and tok in plan.close_attempts
        ctl.accept(forced if replaced else tok, replaced)
    return ctl, tested


def test_margin_exit_closes_at_the_first_break_where_the_margin_holds() -> None:
    plan = ForcingPlan(**R1, answer_prefix=(FINAL,), exit_margin=1.0, exit_breaks=frozenset({BRK}))
    tokens = [X, BRK, X, X, BRK, Y, BRK, X, X, X, X]
    # tested after each break only; the gap holds (1.0 <= 1.0) first after the second break
    ctl, tested = margin_run(plan, tokens, {2: 1.5, 5: 1.0, 7: 0.1})
    assert tested == [2, 5]
    assert ctl.early_exit and ctl.forced_end and ctl.phase is Phase.ANSWERING
    assert ctl.thinking_tokens == 5  # X BRK X X BRK
    assert ctl.split(tokens[:5] + [END, FINAL, X, X, X, X])[1][:1] == [FINAL]


def test_margin_exit_never_before_the_minimum() -> None:
    plan = ForcingPlan(**R1, min_thinking=5, exit_margin=2.0, exit_breaks=frozenset({BRK}))
    tokens = [BRK, X, BRK, X, BRK, X, BRK, X, X]
    ctl, tested = margin_run(plan, tokens, dict.fromkeys(range(10), 0.0))
    assert tested == [5]  # the break at 4 made the thinking 5 tokens long: the first one past the minimum
    assert ctl.early_exit and ctl.thinking_tokens == 5


def test_margin_exit_never_during_a_forced_sequence() -> None:
    """A break inside a wait string or an intervention is forced text, not the model's break."""
    plan = ForcingPlan(
        think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT, BRK, X),), min_thinking=3,
        intervention=(Y, BRK, Y), intervention_at=6, exit_margin=5.0, exit_breaks=frozenset({BRK}),
    )  # fmt: skip
    # END at 1 is replaced by the wait (WAIT BRK X, forced); the intervention (Y BRK Y) is forced at 6 tokens
    tokens = [X, END, 0, 0, X, X, 0, 0, 0, X, BRK, X]
    ctl, tested = margin_run(plan, tokens, dict.fromkeys(range(12), 0.0))
    assert ctl.waits_inserted == 1 and ctl.intervened
    assert tested == [11]  # only after the model's own break
    assert ctl.early_exit


def test_margin_compares_in_float32() -> None:
    from budgetforce.core.controller import margin_holds

    assert margin_holds(0.1 + 1e-9, 0.1)  # equal once rounded to float32, as on the device
    assert not margin_holds(0.1001, 0.1)


def test_margin_exit_is_off_without_a_margin_and_with_rounds() -> None:
    ctl, tested = margin_run(ForcingPlan(**R1, max_thinking=50), [X, BRK, X], {2: 0.0})
    assert tested == [] and not ctl.early_exit
    with pytest.raises(ValidationError, match="exit_margin"):
        Budget(exit_margin=0.5, strategy="rounds")
    with pytest.raises(ValidationError, match="exit_breaks"):
        Budget(exit_breaks=("\n\n",))  # a qualifier without its mode
    with pytest.raises(ValidationError):
        Budget(exit_margin=-1.0)
