"""The wire format between a frontend and the processor: `SamplingParams.extra_args` keys and plans.

A request reaches the engine with either a `ForcingPlan` serialised under `EXTRA_KEY` (budgetforce's
own engine) or the `vllm_xargs` budget fields (a stock `vllm serve`, or the budget layer), plus the
stats board's name, key and nonce where the frontend has one. Plain lists and ints only: they
cross vLLM's msgspec boundary unchanged.
"""

from __future__ import annotations

import random
from dataclasses import fields
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

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
    """Serialise a plan for `SamplingParams.extra_args`: every `ForcingPlan` field as plain lists
    and numbers (they survive msgspec), so a new plan field needs no edit here.
    ``board``/``key``/``nonce`` name the `StatsBoard` row where the processor reports stats.
    """
    body = {f.name: _plain(getattr(plan, f.name)) for f in fields(ForcingPlan)}
    return {EXTRA_KEY: {**body, "board": board, "key": key, "nonce": nonce or random.getrandbits(62)}}


def plan_from_args(args: dict[str, Any]) -> ForcingPlan:
    """The plan `plan_to_args` wrote, each field back in its declared type; a field it lacks keeps its default."""
    a = args[EXTRA_KEY]
    return ForcingPlan(**{f.name: _typed(_PLAN_TYPES[f.name], a[f.name]) for f in fields(ForcingPlan) if f.name in a})


_PLAN_TYPES = get_type_hints(ForcingPlan)


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _typed(hint: Any, value: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):  # `int | None`
        return None if value is None else _typed(next(a for a in args if a is not type(None)), value)
    if origin is frozenset:
        return frozenset(value)
    if origin is tuple:
        return tuple(_typed(args[0], v) for v in value)
    return hint(value)  # int, float, bool


def budget_from_xargs(extra_args: dict[str, Any] | None) -> Budget | None:
    """A `Budget` from a stock `vllm serve` request's `vllm_xargs`, or None when it sets none.

    The fields arrive flat (strings, numbers, lists); a single string where a list belongs is a
    one-element list (`budgetforce.core.budget.xarg_budget_fields`).
    """
    fields = xarg_budget_fields(extra_args)
    return Budget.model_validate(fields) if fields else None


def split_words(n: int) -> tuple[int, int]:
    return n & 0x7FFFFFFF, (n >> 31) & 0x7FFFFFFF
