"""The budget report of one choice, built once for every path that reports one (the Python
engine's `BudgetStats`, the HTTP layer's `budget` object): what the token ids show (counted by an
observing `ThinkingController`), what the engine says (a `Tally`), and what the budget asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from budgetforce.core.controller import Phase, ThinkingController, rfind
from budgetforce.core.layout import enforcement


@dataclass(frozen=True, slots=True)
class BudgetStats:
    thinking_tokens: int
    waits_inserted: int | None  # None: the engine could not share it (another node, a failed row)
    forced_end: bool
    strategy: str | None  # None: the request had no budget
    scheduled_waits: int | None = 0  # a wait schedule's insertions (None: not shared, as waits_inserted)
    answer_tokens: int = 0  # after the close, a forced answer prefix included, end-of-sequence excluded
    answer_truncated: bool = False  # the answer budget ended the answer
    intervened: bool = False  # the thinking intervention was written
    early_exit: bool = False  # an early exit closed the thinking (agreeing answer probes, or the logit margin)
    exit_tokens_saved: int | None = None  # after an early exit: the maximum's thinking tokens left unused (None: no maximum)
    probes: int | None = 0  # answer probes run (side requests, not counted in the usage; None: unknown)
    probe_tokens: int | None = 0  # tokens the probes generated
    enforced: bool | None = True  # False: the budget was not (fully) forced; None: unknown (no stats board)
    unenforced_reason: str | None = None  # why not: `max_exceeded`, or a `budgetforce.core.layout.FAIL_REASONS` code


@dataclass(slots=True)
class Tally:
    """What a generation source knows at its end, beyond the token ids (the budget report reads it)."""

    waits: int | None = 0
    scheduled: int | None = 0
    early_exit: bool = False
    probes: int = 0
    probe_tokens: int = 0
    failure: int | None = 0  # the stats board's `FAIL` code (0: forced; None: the board lacks the row)


def choice_report(
    obs: ThinkingController,
    ids: Sequence[int],
    tally: Tally | None,
    strategy: str | None,
    max_thinking: int | None = None,
    max_answer: int | None = None,
    intervention: Sequence[int] | None = None,
) -> BudgetStats:
    """One choice's report. ``strategy`` None: the request had no budget (counts only);
    ``tally`` None: nobody can say what the engine did (`waits_inserted` and `enforced` unknown).

    `forced_end` means the thinking was closed at exactly the maximum (the engine forces it
    there), or by an early exit (agreeing answer probes, the logit margin); `enforced` is false with a reason when the engine
    reported a failure or the ids show more thinking than the maximum.
    """
    thinking, answer = obs.thinking_tokens, obs.answer_tokens
    known = tally is not None
    if strategy is None:
        return BudgetStats(thinking, tally.waits if known else None, False, None, answer_tokens=answer)
    closed = obs.phase is not Phase.THINKING
    early = known and tally.early_exit
    enforced, reason = enforcement(tally.failure if known else None, thinking, max_thinking)
    return BudgetStats(
        thinking_tokens=thinking,
        waits_inserted=tally.waits if known else None,
        forced_end=(max_thinking is not None and thinking == max_thinking and closed) or early,
        strategy=strategy,
        scheduled_waits=tally.scheduled if known else None,
        answer_tokens=answer,
        answer_truncated=max_answer is not None and answer >= max_answer,
        intervened=bool(intervention) and rfind(obs.split(list(ids))[0], tuple(intervention)) >= 0,
        early_exit=early,
        exit_tokens_saved=max_thinking - thinking if early and max_thinking is not None else None,
        probes=tally.probes if known else None,
        probe_tokens=tally.probe_tokens if known else None,
        enforced=enforced,
        unenforced_reason=reason,
    )
