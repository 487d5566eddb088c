"""The budget layer's request side without a server: what reaches vLLM, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from budgetforce.budget import BudgetDefaults
from budgetforce.serving.rewrite import RequestError, ServedModel, prepare

CHAT_FIELDS = frozenset({"messages", "model", "max_tokens", "max_completion_tokens", "stop", "n", "seed", "stream",
                         "vllm_xargs", "thinking_token_budget", "reasoning_effort", "include_reasoning",
                         "return_token_ids", "temperature", "logprobs", "tools"})  # fmt: skip
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model() -> ServedModel:
    from transformers import AutoTokenizer

    from budgetforce.profile import detect_profile
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
