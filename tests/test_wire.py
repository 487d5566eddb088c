"""The wire format: a plan survives `extra_args` field for field, whatever fields `ForcingPlan` grows."""

from __future__ import annotations

import dataclasses

import msgspec

from budgetforce.core.controller import ForcingPlan
from budgetforce.vllm.wire import EXTRA_KEY, plan_from_args, plan_to_args


def test_every_plan_field_round_trips_through_msgspec() -> None:
    plan = ForcingPlan(
        think_start=(7,), think_end=(8, 9), eos=frozenset({2, 1}), waits=((10, 11), (12,)), answer_prefix=(13,),
        min_thinking=5, max_thinking=40, max_waits=3, banned=frozenset({20, 21}), intervention=(30, 31),
        intervention_at=4, max_answer=12, alpha_moment=25, wait_probability=0.25, wait_decay=False,
        breaks=frozenset({40}), answer_end=2, early_exit=True, exit_margin=0.75, exit_breaks=frozenset({41, 42}),
    )  # fmt: skip
    untouched = {f.name for f in dataclasses.fields(ForcingPlan)} - {
        f.name for f in dataclasses.fields(ForcingPlan) if getattr(plan, f.name) != f.default
    }
    assert not untouched, f"set every field here so the round trip covers it: {sorted(untouched)}"
    args = msgspec.msgpack.decode(msgspec.msgpack.encode(plan_to_args(plan, board="b", key=3, nonce=9)))
    assert plan_from_args(args) == plan
    assert args[EXTRA_KEY]["key"] == 3 and args[EXTRA_KEY]["nonce"] == 9 and args[EXTRA_KEY]["board"] == "b"


def test_a_field_the_sender_lacks_keeps_its_default() -> None:
    plan = ForcingPlan(think_start=(7,), think_end=(8,), eos=frozenset({2}), max_thinking=5)
    args = plan_to_args(plan)
    del args[EXTRA_KEY]["breaks"], args[EXTRA_KEY]["early_exit"]
    assert plan_from_args(args) == plan
