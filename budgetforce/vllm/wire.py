"""The wire format between a frontend and the processor: `SamplingParams.extra_args` keys and plans.

A request reaches the engine with either a `ForcingPlan` serialised under `EXTRA_KEY` (budgetforce's
own engine) or the `vllm_xargs` budget fields (a stock `vllm serve`, or the budget layer), plus the
stats board's name, key and nonce where the frontend has one. Plain lists and ints only: they
cross vLLM's msgspec boundary unchanged.
"""

from __future__ import annotations

import random
from typing import Any

from budgetforce.core.budget import Budget, xarg_budget_fields
from budgetforce.core.controller import ForcingPlan

EXTRA_KEY = "budgetforce"  # SamplingParams.extra_args[EXTRA_KEY] holds a serialised ForcingPlan
NONCE_KEY = "budgetforce_nonce"  # set on vllm_xargs budgets at admission: a request's identity
BOARD_NAME_KEY = "budgetforce_board"  # vllm_xargs a frontend layer may add: its StatsBoard's name
BOARD_KEY_KEY = "budgetforce_key"  # ... and the row it acquired there (with `NONCE_KEY` as its nonce)
BOARD_ENV = "BUDGETFORCE_STATS_BOARD"  # the one board name a `vllm_xargs` request may name (set by the server)
PROFILE_ENV = "BUDGETFORCE_PROFILE"  # a profile name overriding detection for `vllm_xargs` budgets
# The n choices of one request share its extra_args (one nonce) but get seeds seed+i from vLLM:
# the processor keys state by (nonce, seed), so each choice has its own budget state. Unseeded
# n > 1 requests need a seed from the frontend (the budget layer adds one).
XARGS_CHILD_SAFE = True
BOARD_KEYS = 8192  # keys the frontend hands out (FIFO); a key is reused only after all others
OWN_KEYS = 4096  # keys the processor hands out itself (vllm_xargs requests)
CAPACITY = BOARD_KEYS + OWN_KEYS


def plan_to_args(plan: ForcingPlan, board: str | None = None, key: int = -1, nonce: int = 0) -> dict[str, Any]:
    """Serialise a plan for `SamplingParams.extra_args` (plain lists survive msgspec).

    ``board``/``key``/``nonce`` name the `StatsBoard` row where the processor reports stats.
    """
    return {
        EXTRA_KEY: {
            "think_start": list(plan.think_start),
            "think_end": list(plan.think_end),
            "eos": sorted(plan.eos),
            "waits": [list(w) for w in plan.waits],
            "answer_prefix": list(plan.answer_prefix),
            "min_thinking": plan.min_thinking,
            "max_thinking": plan.max_thinking,
            "max_waits": plan.max_waits,
            "banned": sorted(plan.banned),
            "intervention": list(plan.intervention),
            "intervention_at": plan.intervention_at,
            "max_answer": plan.max_answer,
            "alpha_moment": plan.alpha_moment,
            "wait_probability": plan.wait_probability,
            "wait_decay": plan.wait_decay,
            "breaks": sorted(plan.breaks),
            "answer_end": plan.answer_end,
            "early_exit": plan.early_exit,
            "board": board,
            "key": key,
            "nonce": nonce or random.getrandbits(62),
        }
    }


def plan_from_args(args: dict[str, Any]) -> ForcingPlan:
    a = args[EXTRA_KEY]
    return ForcingPlan(
        think_start=tuple(a["think_start"]),
        think_end=tuple(a["think_end"]),
        eos=frozenset(a["eos"]),
        waits=tuple(tuple(w) for w in a["waits"]),
        answer_prefix=tuple(a["answer_prefix"]),
        min_thinking=a["min_thinking"],
        max_thinking=a["max_thinking"],
        max_waits=a["max_waits"],
        banned=frozenset(a.get("banned", ())),
        intervention=tuple(a.get("intervention", ())),
        intervention_at=int(a.get("intervention_at", 0)),
        max_answer=a.get("max_answer"),
        alpha_moment=int(a.get("alpha_moment", 0)),
        wait_probability=float(a.get("wait_probability", 0.0)),
        wait_decay=bool(a.get("wait_decay", True)),
        breaks=frozenset(a.get("breaks", ())),
        answer_end=int(a.get("answer_end", -1)),
        early_exit=bool(a.get("early_exit", False)),
    )


def budget_from_xargs(extra_args: dict[str, Any] | None) -> Budget | None:
    """A `Budget` from a stock `vllm serve` request's `vllm_xargs`, or None when it sets none.

    The fields arrive flat (strings, numbers, lists); a single string where a list belongs is a
    one-element list (`budgetforce.core.budget.xarg_budget_fields`).
    """
    fields = xarg_budget_fields(extra_args)
    return Budget.model_validate(fields) if fields else None


def split_words(n: int) -> tuple[int, int]:
    return n & 0x7FFFFFFF, (n >> 31) & 0x7FFFFFFF
