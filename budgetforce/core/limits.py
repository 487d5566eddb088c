"""The processor's table sizes: one table for the request schema, the profile and the device.

Every budgeted request's plan is written into fixed-size device tables (`budgetforce.vllm.slots`).
A plan beyond them could not be forced, so the same numbers bound the request fields
(`budgetforce.core.budget`, in strings) and the plan (`check`, in tokens, when the profile turns
the strings into ids): a budget that does not fit is a 400 naming the field, never a request
that runs unforced.

Example:
    >>> from budgetforce.core.controller import ForcingPlan
    >>> plan = ForcingPlan(think_start=(1,), think_end=(2,), eos=frozenset({3}), waits=((4,),) * 9,
    ...                    answer_prefix=(), min_thinking=10, max_thinking=None, max_waits=None)
    >>> LIMITS.check(plan)
    ('wait_strings', '9 wait strings; at most 8')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from budgetforce.core.controller import ForcingPlan


@dataclass(frozen=True)
class TableLimits:
    """Fixed table shapes of the device state; `check` says which request field a plan overruns."""

    wait_strings: int = 8
    forced_tokens: int = 64  # one forced sequence: a wait string, close + answer prefix, an intervention
    start_tokens: int = 8  # think_start tokens
    close_attempts: int = 6  # think_end[0] plus EOS ids
    banned_tokens: int = 16
    break_tokens: int = 32

    def check(self, plan: ForcingPlan) -> tuple[str, str] | None:
        """``(request field, why)`` for a plan these tables cannot hold, or None when it fits."""
        if len(plan.waits) > self.wait_strings:
            return "wait_strings", f"{len(plan.waits)} wait strings; at most {self.wait_strings}"
        longest_wait = max((len(w) for w in plan.waits), default=0)
        if longest_wait > self.forced_tokens:
            return "wait_strings", f"a wait string of {longest_wait} tokens; at most {self.forced_tokens}"
        end = len(plan.think_end) + len(plan.answer_prefix)
        if end > self.forced_tokens:
            return "answer_prefix", (
                f"the forced end (close + answer prefix) is {end} tokens; at most {self.forced_tokens}"
            )
        if len(plan.intervention) > self.forced_tokens:
            return "thinking_intervention", f"{len(plan.intervention)} tokens; at most {self.forced_tokens}"
        if len(plan.banned) > self.banned_tokens:
            return "banned_thinking_strings", f"{len(plan.banned)} banned tokens; at most {self.banned_tokens}"
        if len(plan.breaks) > self.break_tokens:
            return "paragraph_breaks", f"{len(plan.breaks)} paragraph-break tokens; at most {self.break_tokens}"
        if len(plan.exit_breaks) > self.break_tokens:
            return "exit_breaks", f"{len(plan.exit_breaks)} exit-break tokens; at most {self.break_tokens}"
        if plan.alpha_moment > 0 and not plan.waits:
            return "alpha_moment_tokens", "scheduled waits without wait strings"
        if not plan.waits and plan.min_thinking > 0:
            return "min_thinking_tokens", "a minimum without wait strings"
        # the model's own delimiters: no request field, the profile does not fit the tables
        if len(plan.think_start) > self.start_tokens:
            return "model", f"a think-start delimiter of {len(plan.think_start)} tokens"
        if 1 + len(plan.eos) > self.close_attempts:
            return "model", f"{len(plan.eos)} end-of-sequence ids"
        return None


LIMITS = TableLimits()
