"""The budget's rules without an engine: the modes beyond s1 (issue 14), each field and conflict,
the answer budget's share of the token cap, `vllm_xargs` parsing, and what the reports carry."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from budgetforce.core.budget import (
    BUDGET_FIELD_NAMES,
    XARG_FIELDS,
    Budget,
    BudgetDefaults,
    BudgetError,
    BudgetRequest,
    budget_error,
    misspelled_budget_field,
    xarg_budget_fields,
)


def test_each_mode_is_off_until_its_switch_is_set() -> None:
    assert Budget().modes == frozenset() and not Budget().is_active
    switches = {
        "nowait": {"banned_thinking_strings": ("Wait",)},
        "intervention": {"thinking_intervention": "Be brief."},
        "answer_budget": {"max_answer_tokens": 64},
        "scheduled_waits": {"alpha_moment_tokens": 500},
        "early_exit": {"probe_every": 128},
    }
    for mode, fields in switches.items():
        budget = Budget(**fields)
        assert budget.modes == {mode} and budget.is_active and not budget.is_budgeted, mode
    assert Budget(alpha=0.5, max_thinking_tokens=1000).modes == {"scheduled_waits"}
    assert Budget(max_thinking_tokens=10).is_budgeted and not Budget(max_thinking_tokens=10).modes
    assert Budget(max_answer_tokens=5, thinking_intervention="x").report_keys == (
        "answer_tokens", "answer_truncated", "intervened",
    )  # fmt: skip
    assert Budget(probe_every=64).report_keys == ("early_exit", "probes", "probe_tokens")
    assert Budget().report_keys == ()


def test_defaults_of_the_qualifying_fields() -> None:
    b = Budget(alpha_moment_tokens=100, probe_every=50)
    assert (b.wait_probability, b.wait_decay, b.paragraph_breaks) == (0.3, "linear", None)
    assert (b.probe_agree, b.probe_lead, b.probe_max_tokens, b.intervention_at) == (2, None, 16, 0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"banned_thinking_strings": ()}, "banned_thinking_strings"),
        ({"banned_thinking_strings": ("Wait", "")}, "banned_thinking_strings"),
        ({"banned_thinking_strings": tuple(f"w{i}" for i in range(33))}, "banned_thinking_strings"),
        ({"thinking_intervention": ""}, "thinking_intervention"),
        ({"thinking_intervention": "x" * 4097}, "thinking_intervention"),
        ({"thinking_intervention": "x", "intervention_at": -1}, "intervention_at"),
        ({"intervention_at": 10}, "intervention_at"),  # without an intervention
        ({"max_answer_tokens": -1}, "max_answer_tokens"),
        ({"alpha_moment_tokens": 0}, "alpha_moment_tokens"),
        ({"alpha": 0.0, "max_thinking_tokens": 100}, "alpha"),
        ({"alpha": float("inf"), "max_thinking_tokens": 100}, "alpha"),
        ({"alpha": 0.5}, "alpha"),  # a fraction of no maximum
        ({"alpha": 0.5, "alpha_moment_tokens": 10, "max_thinking_tokens": 100}, "alpha"),
        ({"alpha_moment_tokens": 10, "wait_probability": 1.5}, "wait_probability"),
        ({"alpha_moment_tokens": 10, "wait_probability": -0.1}, "wait_probability"),
        ({"wait_probability": 0.5}, "wait_probability"),  # without a schedule
        ({"alpha_moment_tokens": 10, "wait_decay": "exponential"}, "wait_decay"),
        ({"wait_decay": "constant"}, "wait_decay"),
        ({"alpha_moment_tokens": 10, "paragraph_breaks": ("",)}, "paragraph_breaks"),
        ({"alpha_moment_tokens": 10, "paragraph_breaks": tuple("abcdefghi")}, "paragraph_breaks"),
        ({"paragraph_breaks": ("\n",)}, "paragraph_breaks"),
        ({"alpha_moment_tokens": 10, "min_thinking_tokens": 5}, "alpha_moment_tokens"),
        ({"alpha": 0.5, "max_thinking_tokens": 100, "min_thinking_tokens": 5}, "alpha"),
        ({"probe_every": 0}, "probe_every"),
        ({"probe_every": 10, "probe_agree": 0}, "probe_agree"),
        ({"probe_every": 10, "probe_max_tokens": 257}, "probe_max_tokens"),
        ({"probe_every": 10, "probe_max_tokens": 0}, "probe_max_tokens"),
        ({"probe_every": 10, "probe_lead": "x" * 4097}, "probe_lead"),
        ({"probe_agree": 3}, "probe_agree"),  # without probes
        ({"probe_lead": "The answer is"}, "probe_lead"),
        ({"min_thinking_tokens": 10, "max_thinking_tokens": 5}, "min_thinking_tokens"),
    ],
)
def test_budget_refuses_and_names_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as err:
        Budget(**fields)
    error = budget_error(err.value)
    assert error.param == param and f"`{param}`" in str(error)


def test_scheduled_waits_conflict_says_why() -> None:
    with pytest.raises(ValidationError, match=r"s1's minimum \(`min_thinking_tokens` 5\); use one or the other"):
        Budget(alpha_moment_tokens=10, min_thinking_tokens=5)


def test_alpha_moment_in_tokens() -> None:
    assert Budget(alpha_moment_tokens=700).alpha_moment == 700
    assert Budget(alpha=0.25, max_thinking_tokens=1000).alpha_moment == 250
    assert Budget(alpha=1.4, max_thinking_tokens=1000).alpha_moment == 1400  # past the maximum: waits all along
    assert Budget(alpha=0.001, max_thinking_tokens=10).alpha_moment == 1  # never 0, which would mean "off"
    assert Budget(max_thinking_tokens=10).alpha_moment == 0


# -- the answer budget's share of the cap --------------------------------------------------------------------
def test_answer_budget_derives_the_maximum_thinking() -> None:
    # cap 1000, one forced close, 100 answer tokens, the forced end of sequence: 898 for thinking
    assert Budget(max_answer_tokens=100).with_answer_room(1000, reserved=1).max_thinking_tokens == 898
    assert Budget(max_answer_tokens=100).with_answer_room(None, reserved=1).max_thinking_tokens is None
    client = Budget(max_thinking_tokens=500, max_answer_tokens=100)
    assert client.with_answer_room(1000, reserved=1) is client  # a client's maximum is kept
    assert client.with_answer_room(300, reserved=1, server_max=True).max_thinking_tokens == 198
    assert Budget().with_answer_room(10, reserved=1) == Budget()
    with pytest.raises(BudgetError) as err:
        Budget(max_answer_tokens=100).with_answer_room(101, reserved=1, cap_param="max_completion_tokens")
    assert err.value.param == "max_answer_tokens" and "`max_completion_tokens` (101)" in str(err.value)
    assert Budget(max_answer_tokens=0).with_answer_room(10, reserved=2).max_thinking_tokens == 7


def test_resolved_budget_fits_the_answer_budget_once() -> None:
    defaults = BudgetDefaults()
    fitted = BudgetRequest(max_answer_tokens=100).resolve(defaults).fit(1000, 3, "max_completion_tokens")
    assert fitted is not None and fitted.max_thinking_tokens == 896 and fitted.max_answer_tokens == 100
    fitted.check_room(1000, reserved=3)
    # the server's maximum (the effort table's 4096) makes room for the answer too; the client's does not
    effort = BudgetRequest(max_answer_tokens=100, reasoning_effort="medium").resolve(defaults).fit(1000, 1)
    assert effort is not None and effort.max_thinking_tokens == 898
    own = BudgetRequest(max_answer_tokens=100, max_thinking_tokens=950).resolve(defaults).fit(1000, 1)
    assert own is not None and own.max_thinking_tokens == 950
    with pytest.raises(BudgetError) as err:
        BudgetRequest(max_answer_tokens=100).resolve(defaults).fit(100, 1, "max_completion_tokens")
    assert err.value.param == "max_answer_tokens" and "`max_completion_tokens` (100)" in str(err.value)


# -- the request's fields ----------------------------------------------------------------------------------
def test_request_fields_reach_the_budget() -> None:
    request = BudgetRequest.model_validate(
        {
            "banned_thinking_strings": ["Wait", "Hmm"], "thinking_intervention": "Be brief.", "intervention_at": 5,
            "max_answer_tokens": 64, "alpha": 1, "max_thinking_tokens": 1000, "wait_probability": 0,
            "wait_decay": "constant", "paragraph_breaks": ["\n\n", ".\n"],
        }
    )  # fmt: skip  (JSON numbers: `alpha` 1 and `wait_probability` 0 are integers)
    budget = request.resolve(BudgetDefaults()).budget
    assert budget is not None
    assert budget.banned_thinking_strings == ("Wait", "Hmm") and budget.paragraph_breaks == ("\n\n", ".\n")
    assert (budget.thinking_intervention, budget.intervention_at, budget.max_answer_tokens) == ("Be brief.", 5, 64)
    assert (budget.alpha_moment, budget.wait_probability, budget.wait_decay) == (1000, 0.0, "constant")
    only = BudgetRequest(banned_thinking_strings=["Wait"]).resolve(BudgetDefaults())
    assert only.budget is not None and only.budget.max_thinking_tokens is None  # a mode alone is a budget
    probe = BudgetRequest(probe_every=32, probe_lead="Answer:").resolve(BudgetDefaults()).budget
    assert probe is not None and (probe.probe_every, probe.probe_agree, probe.probe_lead) == (32, 2, "Answer:")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"banned_thinking_strings": "Wait"}, "banned_thinking_strings"),  # a list, as JSON sends it
        ({"banned_thinking_strings": []}, "banned_thinking_strings"),
        ({"thinking_intervention": ""}, "thinking_intervention"),
        ({"max_answer_tokens": "5"}, "max_answer_tokens"),  # strict, as the other fields
        ({"wait_probability": 2}, "wait_probability"),
        ({"wait_decay": "cubic"}, "wait_decay"),
        ({"probe_max_tokens": 1000}, "probe_max_tokens"),
        ({"alpha": -1}, "alpha"),
    ],
)
def test_request_refuses_bad_values(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as err:
        BudgetRequest.model_validate(fields)
    assert err.value.errors()[0]["loc"][0] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"intervention_at": 3}, "intervention_at"),
        ({"alpha": 0.5}, "alpha"),  # no maximum to be a fraction of
        ({"alpha_moment_tokens": 50, "min_thinking_tokens": 10}, "alpha_moment_tokens"),
        ({"wait_probability": 0.5}, "wait_probability"),
        ({"probe_agree": 2}, "probe_agree"),
    ],
)
def test_request_conflicts_are_budget_errors_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BudgetError) as err:
        BudgetRequest(**fields).resolve(BudgetDefaults())
    assert err.value.param == param


def test_a_server_minimum_gives_way_to_scheduled_waits() -> None:
    """`high` effort brings a minimum of 1024 from the operator's table; a schedule replaces it."""
    budget = BudgetRequest(reasoning_effort="high", alpha=0.5).resolve(BudgetDefaults()).budget
    assert budget is not None and (budget.min_thinking_tokens, budget.alpha_moment) == (0, 8192)
    defaults = BudgetDefaults(default_min_thinking_tokens=100)
    budget = BudgetRequest(alpha_moment_tokens=50).resolve(defaults).budget
    assert budget is not None and budget.min_thinking_tokens == 0


def test_new_fields_are_budget_fields_for_typos() -> None:
    for name in ("banned_thinking_strings", "max_answer_tokens", "alpha_moment_tokens", "probe_every"):
        assert name in BUDGET_FIELD_NAMES and name in XARG_FIELDS
    assert str(misspelled_budget_field(["max_answer_token"])).endswith("did you mean `max_answer_tokens`?")
    assert str(misspelled_budget_field(["banned_thinking_string"])).endswith("`banned_thinking_strings`?")
    assert misspelled_budget_field(["temperature", "top_k", "metadata"]) is None


# -- vllm_xargs ----------------------------------------------------------------------------------------------
def test_xargs_are_flat_and_a_string_is_a_one_element_list() -> None:
    xargs = {
        "banned_thinking_strings": "Wait", "paragraph_breaks": ["\n\n"], "wait_strings": "Hmm",
        "alpha_moment_tokens": 200, "wait_probability": 0.5, "wait_decay": "constant", "note": 1,
        "thinking_intervention": "Be brief.", "intervention_at": 3, "max_answer_tokens": 9,
    }  # fmt: skip
    fields = xarg_budget_fields(xargs)
    assert "note" not in fields and fields["banned_thinking_strings"] == ["Wait"] and fields["wait_strings"] == ["Hmm"]
    budget = Budget.model_validate(fields)
    assert budget.banned_thinking_strings == ("Wait",) and budget.alpha_moment == 200
    assert (budget.wait_probability, budget.wait_decay, budget.paragraph_breaks) == (0.5, "constant", ("\n\n",))
    assert xarg_budget_fields(None) == {} and xarg_budget_fields({"seed": 1}) == {}


# -- the engine's report ----------------------------------------------------------------------------------------
def test_engine_stats_have_every_report_key() -> None:
    from dataclasses import fields

    from budgetforce.core.budget import REPORT_KEYS
    from budgetforce.vllm.engine import BudgetStats

    keys = {k for ks in REPORT_KEYS.values() for k in ks}
    assert keys <= {f.name for f in fields(BudgetStats)}


# -- the one precedence order, and the operator's defaults ------------------------------------------------------
def _resolve(defaults: BudgetDefaults | None = None, **fields: Any) -> tuple[int, int | None, str | None]:
    resolved = BudgetRequest.model_validate(fields).resolve(defaults or BudgetDefaults())
    budget = resolved.budget
    return (budget.min_thinking_tokens, budget.max_thinking_tokens, resolved.max_source) if budget else (0, None, None)


def test_budget_precedence() -> None:
    every = {
        "thinking_token_budget": 50, "reasoning": {"max_tokens": 40, "effort": "low"},
        "thinking": {"type": "enabled", "budget_tokens": 30}, "reasoning_effort": "minimal",
    }  # fmt: skip
    assert _resolve(**every, max_thinking_tokens=60) == (0, 60, "max_thinking_tokens")
    assert _resolve(**every) == (0, 50, "thinking_token_budget")
    assert _resolve(**{**every, "thinking_token_budget": -1}) == (0, 40, "reasoning.max_tokens")
    assert _resolve(thinking={"type": "enabled", "budget_tokens": 30}, reasoning={"effort": "low"}) == (
        0, 30, "thinking.budget_tokens",
    )  # fmt: skip
    assert _resolve(reasoning={"effort": "low"}, reasoning_effort="minimal") == (0, 1024, None)
    assert _resolve(reasoning_effort="high") == (1024, 16384, None)
    assert _resolve(reasoning_effort="xhigh") == (2048, 32768, None)
    assert _resolve(reasoning_effort="max") == (4096, 65536, None)
    assert _resolve(reasoning={"effort": "xhigh"}, reasoning_effort="low") == (2048, 32768, None)
    assert _resolve(thinking={"type": "enabled"}) == (0, None, None)  # enabled without a budget: no change
    defaults = BudgetDefaults(default_min_thinking_tokens=100, default_max_thinking_tokens=200)
    assert _resolve(defaults) == (100, 200, None)
    assert _resolve(defaults, thinking_token_budget=10) == (10, 10, "thinking_token_budget")  # the default min yields
    assert _resolve(min_thinking_tokens=2000, reasoning_effort="low") == (2000, 2000, None)  # the table's max yields
    assert _resolve(defaults, min_thinking_tokens=5) == (5, 200, None)


def test_effort_table_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    table = '{"low": {"max_thinking_tokens": 512}, "max": {"min_thinking_tokens": 3000}}'
    monkeypatch.setenv("BUDGETFORCE_REASONING_EFFORT_BUDGETS", table)
    monkeypatch.setenv("BUDGETFORCE_MAX_THINKING_TOKENS_LIMIT", "4096")
    defaults = BudgetDefaults()
    assert _resolve(defaults, reasoning_effort="low") == (0, 512, None)
    assert _resolve(defaults, reasoning_effort="max") == (3000, 4096, None)  # the operator's, capped by the limit
    assert _resolve(defaults, reasoning={"effort": "xhigh"}) == (2048, 4096, None)  # default entry, capped
    assert _resolve(defaults, reasoning_effort="medium") == (0, 4096, None)
    assert _resolve(defaults, reasoning_effort="high") == (1024, 4096, None)
    assert _resolve(defaults) == (0, 4096, None)  # the limit is also the maximum of requests without one
