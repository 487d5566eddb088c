"""The budget layer's request side without a server: what reaches vLLM, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from budgetforce.core.budget import BudgetDefaults
from budgetforce.server.rewrite import RequestError, ServedModel, prepare

CHAT_FIELDS = frozenset({"messages", "model", "max_tokens", "max_completion_tokens", "stop", "n", "seed", "stream",
                         "vllm_xargs", "thinking_token_budget", "reasoning_effort", "include_reasoning",
                         "return_token_ids", "temperature", "logprobs", "tools"})  # fmt: skip
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model() -> ServedModel:
    from transformers import AutoTokenizer

    from budgetforce.core.profile import detect_profile
    from budgetforce.student import STUDENT_PATH

    tok = AutoTokenizer.from_pretrained(STUDENT_PATH)
    return ServedModel(
        profile=detect_profile(tok).resolve(tok), tokenizer=tok, max_model_len=1024, chat_fields=CHAT_FIELDS,
        completion_fields=CHAT_FIELDS | {"prompt", "echo"}, reasoning_parser=True,
    )  # fmt: skip


def rewrite(model: ServedModel, defaults: BudgetDefaults | None = None, **body: Any) -> Any:
    return prepare({"messages": HELLO, **body}, "chat", model, defaults or BudgetDefaults())


def test_budget_fields_become_vllm_xargs(model: ServedModel) -> None:
    out = rewrite(model, max_tokens=300, thinking_token_budget=50, reasoning_effort="high", stop="\n\n",
                  vllm_xargs={"note": 1}, temperature=0.6)  # fmt: skip
    body = out.body
    # vLLM's own budget handling is not applied twice, and stop strings are the layer's
    assert "thinking_token_budget" not in body and "reasoning_effort" not in body and "stop" not in body
    assert body["vllm_xargs"] == {"note": 1, "min_thinking_tokens": 50, "max_thinking_tokens": 50}  # effort's min yields
    assert body["return_token_ids"] is True and body["include_reasoning"] is True and body["temperature"] == 0.6
    assert out.stops == ["\n\n"] and not out.wants_token_ids
    # the operator's table is shrunk to fit the cap; a client's budget is not
    effort = rewrite(model, max_tokens=100, reasoning_effort="xhigh").body["vllm_xargs"]
    assert effort == {"min_thinking_tokens": 98, "max_thinking_tokens": 98}
    with pytest.raises(RequestError) as err:
        rewrite(model, max_completion_tokens=100, max_thinking_tokens=100)
    assert err.value.param == "max_thinking_tokens" and "`max_completion_tokens` (100)" in err.value.message
    # the server's defaults reach requests that set nothing
    defaults = BudgetDefaults(default_max_thinking_tokens=64)
    assert rewrite(model, defaults).body["vllm_xargs"] == {"min_thinking_tokens": 0, "max_thinking_tokens": 64}


def test_requests_without_budget_pass_untouched(model: ServedModel) -> None:
    assert rewrite(model, max_tokens=5, seed=0, metadata={"a": 1}) is None
    stripped = rewrite(model, thinking_token_budget=-1, budget_strategy="engine")
    assert stripped is not None and not stripped.annotate
    assert stripped.body == {"messages": HELLO}
    with pytest.raises(RequestError, match="did you mean `max_waits`"):
        rewrite(model, max_wait=2)
    with pytest.raises(RequestError, match="reserved"):
        rewrite(model, vllm_xargs={"budgetforce_board": "psm_x"})


# -- the modes beyond s1 -------------------------------------------------------------------------------------
def test_mode_fields_become_vllm_xargs(model: ServedModel) -> None:
    out = rewrite(
        model, max_tokens=300, banned_thinking_strings=["Wait"], thinking_intervention="Be brief.", intervention_at=4,
        alpha_moment_tokens=100, wait_probability=0.5, wait_decay="constant", paragraph_breaks=["\n"],
    )  # fmt: skip
    assert out.body["vllm_xargs"] == {
        "min_thinking_tokens": 0, "banned_thinking_strings": ["Wait"], "thinking_intervention": "Be brief.",
        "intervention_at": 4, "alpha_moment_tokens": 100, "wait_probability": 0.5, "wait_decay": "constant",
        "paragraph_breaks": ["\n"],
    }  # fmt: skip
    assert not any(k in out.body for k in ("banned_thinking_strings", "alpha_moment_tokens", "wait_decay"))
    # vllm_xargs carry them too, a single string as a one-element list
    xargs = rewrite(model, max_tokens=300, vllm_xargs={"banned_thinking_strings": "Wait"}).body["vllm_xargs"]
    assert xargs == {"min_thinking_tokens": 0, "banned_thinking_strings": ["Wait"]}


def test_answer_budget_sets_the_maximum_thinking(model: ServedModel) -> None:
    """The student closes with one token (`</think>`) and has no answer prefix: 300 - 1 - 50 - 1 (EOS)."""
    out = rewrite(model, max_completion_tokens=300, max_answer_tokens=50)
    assert out.body["vllm_xargs"] == {"min_thinking_tokens": 0, "max_thinking_tokens": 248, "max_answer_tokens": 50}
    assert out.budget.max_thinking_tokens == 248
    kept = rewrite(model, max_completion_tokens=300, max_answer_tokens=50, max_thinking_tokens=100)
    assert kept.body["vllm_xargs"]["max_thinking_tokens"] == 100
    with pytest.raises(RequestError) as err:
        rewrite(model, max_completion_tokens=40, max_answer_tokens=50)
    assert err.value.param == "max_answer_tokens" and "`max_completion_tokens` (40)" in err.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"wait_probability": 2, "alpha_moment_tokens": 9}, "wait_probability"),
        ({"banned_thinking_strings": [""]}, "banned_thinking_strings[0]"),
        ({"thinking_intervention": "x" * 4097}, "thinking_intervention"),
        ({"intervention_at": 5}, "intervention_at"),
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": 0.5, "alpha_moment_tokens": 9, "max_thinking_tokens": 50}, "alpha"),
        ({"alpha_moment_tokens": 9, "min_thinking_tokens": 5}, "alpha_moment_tokens"),
        ({"wait_decay": "constant"}, "wait_decay"),
        # what only the tokenizer can tell: too many tokens
        ({"banned_thinking_strings": ["Wait", "Hmm", "Alternatively", "But", "So", "Let", "Check"]},
         "banned_thinking_strings"),
        ({"thinking_intervention": "x" * 65}, "thinking_intervention"),
        ({"alpha_moment_tokens": 9, "paragraph_breaks": ["§"]}, "paragraph_breaks"),
        ({"exit_margin": -1}, "exit_margin"),
        ({"exit_margin": 65}, "exit_margin"),
        ({"exit_margin": 0.5, "budget_strategy": "rounds"}, "exit_margin"),
        ({"exit_breaks": ["\n\n"]}, "exit_breaks"),
        ({"exit_margin": 0.5, "exit_breaks": ["§"]}, "exit_breaks"),
    ],
)  # fmt: skip
def test_mode_mistakes_are_400s_naming_the_field(model: ServedModel, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, **fields)
    assert err.value.status == 400 and err.value.param == param, err.value.message


@pytest.mark.parametrize("where", ["body", "vllm_xargs"])
def test_early_exit_and_rounds_are_run_by_the_layer_not_written_into_xargs(model: ServedModel, where: str) -> None:
    """The budget stays with the layer, which issues the engine requests itself: `vllm_xargs` keeps
    only what the client put there besides the budget (the processor would refuse `probe_*`)."""
    fields = {"probe_every": 64, "probe_agree": 3}
    body = fields if where == "body" else {"vllm_xargs": {**fields, "note": 1}}
    out = rewrite(model, max_tokens=300, **body)
    assert out.orchestrated and out.budget.probe_every == 64 and out.budget.probe_agree == 3
    assert out.body.get("vllm_xargs") == ({"note": 1} if where == "vllm_xargs" else None)
    rounds = rewrite(model, max_tokens=300, n=2, budget_strategy="rounds", min_thinking_tokens=5)
    assert rounds.orchestrated and rounds.budget.strategy == "rounds" and "vllm_xargs" not in rounds.body
    assert not rewrite(model, max_tokens=300, min_thinking_tokens=5).orchestrated


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"budget_strategy": "rounds", "probe_every": 8}, "probe_every"),
        ({"budget_strategy": "rounds", "logprobs": True}, "logprobs"),
        ({"budget_strategy": "rounds", "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_what_the_rounds_loop_cannot_carry_is_a_400(model: ServedModel, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, max_thinking_tokens=20, **fields)
    assert err.value.status == 400 and err.value.param == param, err.value.message


def test_orchestrated_text_completions_take_one_prompt(model: ServedModel) -> None:
    body = {"prompt": ["a", "b"], "max_tokens": 300, "budget_strategy": "rounds", "max_thinking_tokens": 20}
    with pytest.raises(RequestError) as err:
        prepare(body, "completions", model, BudgetDefaults())
    assert err.value.param == "prompt" and "2 requests" in err.value.message


class _Board:
    """A stats board stand-in: what the processor would have counted."""

    def waits(self, key: int, nonce: int, ids: list[int]) -> int:
        return 0

    def scheduled_waits(self, key: int, nonce: int, ids: list[int]) -> int:
        return 2

    def failure(self, key: int, nonce: int) -> int:
        return 0

    def exited(self, key: int, nonce: int) -> bool:
        return False


def test_report_gains_the_keys_of_the_modes_used(model: ServedModel) -> None:
    from budgetforce.server.annotate import Annotator, BoardRow

    tok = model.tokenizer
    lead = tok.encode("Be brief.", add_special_tokens=False)
    think = [70, *lead, 71]  # the intervention forced after one thinking token
    ids = [*think, 5, 72, 73, 74, 0]  # </think>, three answer tokens, end of sequence
    choice = {"index": 0, "message": {"content": "x"}, "token_ids": ids}

    def annotate(stats: Any = None, **fields: Any) -> dict[str, Any]:
        prepared = rewrite(model, max_tokens=300, **fields)
        response = {"prompt_token_ids": [2, 70, 3, 4], "choices": [dict(choice)]}
        body = Annotator(prepared, model, stats).json_body(response)
        return body["choices"][0]["budget"]

    plain = annotate(max_thinking_tokens=100)
    assert set(plain) == {"thinking_tokens", "waits_inserted", "forced_end", "strategy", "enforced"}
    assert plain["enforced"] is None  # no stats board, and the ids show no maximum overrun
    report = annotate(max_answer_tokens=3, thinking_intervention="Be brief.")
    assert report["thinking_tokens"] == len(think)
    assert (report["answer_tokens"], report["answer_truncated"], report["intervened"]) == (3, True, True)
    assert annotate(max_answer_tokens=4)["answer_truncated"] is False
    assert annotate(thinking_intervention="Something else.")["intervened"] is False
    assert annotate(alpha_moment_tokens=50)["scheduled_waits"] is None  # no stats board
    assert annotate(BoardRow(_Board(), 1, 7), alpha_moment_tokens=50)["scheduled_waits"] == 2


def test_an_orchestrated_choice_reports_its_own_sources_counts(model: ServedModel) -> None:
    """Early exit: the probes are reported apart, an exit counts as a forced end; a choice whose source
    has not finished (cut by a stop string) says nothing it cannot know."""
    from budgetforce.core.budget import Budget
    from budgetforce.vllm.engine import EngineSide, Tally
    from budgetforce.server.annotate import Annotator
    from budgetforce.server.orchestrate import Orchestrated

    prepared = rewrite(model, max_tokens=300, probe_every=8)
    run = Orchestrated(prepared.budget, EngineSide(None, model.tokenizer, model.profile.plan(Budget())), model.profile)

    def report() -> dict[str, Any]:
        body = {"prompt_token_ids": [2, 70, 3, 4], "choices": [{"index": 0, "message": {"content": "x"}, "token_ids": [70, 71, 5, 72, 0]}]}
        return Annotator(prepared, model, run).json_body(body)["choices"][0]["budget"]

    cut = report()
    assert (cut["waits_inserted"], cut["probes"], cut["early_exit"], cut["enforced"]) == (None, None, False, None)
    run.tallies[0] = Tally(waits=0, early_exit=True, probes=2, probe_tokens=8)
    done = report()
    assert (done["early_exit"], done["forced_end"], done["probes"], done["probe_tokens"]) == (True, True, 2, 8)
    assert done["enforced"] is True and done["thinking_tokens"] == 2 and done["waits_inserted"] == 0


def test_enforced_reports_what_the_board_and_the_ids_say(model: ServedModel) -> None:
    """`enforced` is true on a healthy board row, false with the row's reason code, and false
    (`max_exceeded`) whenever the ids show the thinking past its maximum, board or not."""
    from budgetforce.vllm.stats_board import StatsBoard
    from budgetforce.server.annotate import Annotator, BoardRow
    from budgetforce.core.layout import FAIL_STEP, S

    ids = [70, 71, 72, 5, 73, 0]  # three thinking tokens, </think>, an answer token, EOS
    board = StatsBoard(create=True)
    try:
        key, nonce = board.acquire()

        def report(row: list[int] | None, **fields: Any) -> dict[str, Any]:
            board.table[key] = 0
            if row is not None:
                board.table[key, S.NONCE_LO], board.table[key, S.NONCE_HI] = nonce & 0x7FFFFFFF, (nonce >> 31) & 0x7FFFFFFF
                board.table[key, S.SEEN] = len(ids)
                board.table[key, S.FAIL] = row[0]
            prepared = rewrite(model, max_tokens=300, **fields)
            body = {"prompt_token_ids": [2, 70, 3, 4], "choices": [{"index": 0, "message": {"content": "x"}, "token_ids": ids}]}
            return Annotator(prepared, model, BoardRow(board, key, nonce)).json_body(body)["choices"][0]["budget"]

        healthy = report([0], max_thinking_tokens=3)
        assert (healthy["enforced"], healthy["forced_end"], healthy["waits_inserted"]) == (True, True, 0)
        assert "unenforced_reason" not in healthy
        failed = report([FAIL_STEP], max_thinking_tokens=10)
        assert (failed["enforced"], failed["unenforced_reason"], failed["waits_inserted"]) == (False, "step_failed", None)
        assert report(None, max_thinking_tokens=10)["enforced"] is None  # the engine never wrote the row
        overrun = report([0], max_thinking_tokens=2)  # three thinking tokens under a maximum of two
        assert (overrun["enforced"], overrun["unenforced_reason"], overrun["forced_end"]) == (False, "max_exceeded", False)
    finally:
        board.close()


def test_budgets_beyond_the_forcing_tables_are_400s_naming_the_field(model: ServedModel) -> None:
    """Nine wait strings, or an answer prefix of more than 64 tokens, cannot be forced: refused up front."""
    from budgetforce.core.limits import LIMITS

    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, min_thinking_tokens=10, wait_strings=[f"Wait {i}" for i in range(9)])
    assert err.value.param == "wait_strings" and err.value.status == 400
    rewrite(model, max_tokens=300, min_thinking_tokens=10, wait_strings=[f"Wait {i}" for i in range(8)])
    long_text = " ".join(["alpha beta"] * LIMITS.forced_tokens)
    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, max_thinking_tokens=10, answer_prefix=long_text)
    assert err.value.param == "answer_prefix" and "64" in err.value.message
    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, max_thinking_tokens=10, thinking_intervention=long_text)
    assert err.value.param == "thinking_intervention"
    with pytest.raises(RequestError) as err:
        rewrite(model, max_tokens=300, min_thinking_tokens=10, wait_strings=[long_text])
    assert err.value.param == "wait_strings"


def test_reasoning_effort_reaches_vllm_only_under_its_effort_map(model: ServedModel) -> None:
    """With vLLM's `--reasoning-effort-map` (vLLM >= 0.33) a chat's `reasoning_effort` is forwarded
    unchanged, for vLLM to map for the chat template, while the budget still comes from budgetforce's
    table keyed by the effort the client sent; without the map vLLM never sees it."""
    import dataclasses

    from budgetforce.core.budget import EffortBudget

    mapped = dataclasses.replace(model, effort_map=True)
    defaults = BudgetDefaults(reasoning_effort_budgets={"medium": EffortBudget(max_thinking_tokens=300)})
    out = rewrite(mapped, defaults, max_tokens=2000, reasoning_effort="medium")
    assert out.body["reasoning_effort"] == "medium"  # not rewritten here: vLLM applies its own map
    assert out.body["vllm_xargs"] == {"min_thinking_tokens": 0, "max_thinking_tokens": 300}  # budgetforce's table
    assert "reasoning_effort" not in rewrite(model, defaults, max_tokens=2000, reasoning_effort="medium").body
    # an explicit budget still outranks the effort; the effort still reaches the template
    out = rewrite(mapped, max_tokens=2000, reasoning_effort="none", max_thinking_tokens=40)
    assert out.body["reasoning_effort"] == "none" and out.body["vllm_xargs"]["max_thinking_tokens"] == 40
    # an effort the table gives no budget: the request passes on with its effort (and only then unannotated)
    free = BudgetDefaults(reasoning_effort_budgets={"low": EffortBudget()})
    out = rewrite(mapped, free, max_tokens=50, reasoning_effort="low")
    assert out is not None and not out.annotate
    assert out.body == {"messages": HELLO, "max_tokens": 50, "reasoning_effort": "low"}
    # vLLM's text completions have no `reasoning_effort`: removed there, map or not
    text = prepare({"prompt": "hi", "max_tokens": 2000, "reasoning_effort": "low"}, "completions", mapped, defaults)
    assert text is not None and "reasoning_effort" not in text.body
    assert text.body["vllm_xargs"]["max_thinking_tokens"] == 1024
