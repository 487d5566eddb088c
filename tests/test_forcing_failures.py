"""Failures inside the engine are loud and contained: a broken install stops the start, a failing
step hits only its rows (reported `enforced: false`, logged once per kind, counted), and a budget
the tables cannot hold is refused before it runs."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from budgetforce.vllm import slots as slots_mod
from budgetforce.core.controller import Action, ForcingPlan
from budgetforce.core.layout import FAIL_STEP, F, S
from budgetforce.vllm.slots import ForcingSlots

CLOSE, WAIT, EOS, START = 6, 9, 0, 5


def plan(wait: tuple[int, ...] = (WAIT,), **kw: Any) -> ForcingPlan:
    return ForcingPlan(
        think_start=(START,), think_end=(CLOSE,), eos=frozenset({EOS}), waits=(wait,), answer_prefix=(),
        min_thinking=kw.pop("min_thinking", 4), max_thinking=kw.pop("max_thinking", 8), max_waits=None, **kw,
    )  # fmt: skip


def test_a_kernel_that_cannot_be_imported_stops_the_processor_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's failure: a kernel module gone from disk. Now the processor refuses to be built."""
    from budgetforce.vllm.forcing import BudgetForcingLogitsProcessor

    monkeypatch.setitem(sys.modules, "budgetforce.vllm.slots_kernel", None)  # `import` raises ImportError
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer="unused", get_vocab_size=lambda: 32))
    with pytest.raises(RuntimeError, match=r"cannot run its forcing step on cuda.*budgetforce\.vllm\.slots_kernel"):
        BudgetForcingLogitsProcessor(config, torch.device("cuda"), False)  # type: ignore[arg-type]
    slots_mod.prepare_step(torch.device("cpu"))  # the torch path needs no kernel


def _batch(slots: ForcingSlots, keys: list[int], tokens: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(keys), 16)
    logits[:, CLOSE] = 5.0  # every row wants to close: a minimum replaces it with the wait
    hist = torch.tensor(tokens, dtype=torch.int64)[:, None]
    rows = torch.arange(len(keys))
    slots.step(logits, torch.tensor(keys), hist, rows, rows, torch.ones(len(keys), dtype=torch.int64), window=1)
    return logits


def test_a_failing_step_hits_only_its_row(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """One row makes the step fail: it turns inert with `FAIL_STEP` on its stats row; the others
    get exactly the logits and state of a run without the failure; one log line for many steps."""
    stats = torch.zeros(8, slots_mod.NS, dtype=torch.int32)
    failing, healthy = ForcingSlots(8, torch.device("cpu"), stats=stats), ForcingSlots(8, torch.device("cpu"))
    for s in (failing, healthy):
        for key in (0, 1, 2):
            assert s.load(key, plan(wait=(WAIT + key,)), 1.0, (1, key), [START], nonce=(key + 1, 0))
        s.flush()
    real = slots_mod._step_torch

    def poisoned(sl: ForcingSlots, logits: torch.Tensor, row_keys: torch.Tensor, *rest: Any) -> None:
        if sl is failing and bool((row_keys == 1).any()):
            raise IndexError("injected: row 1 cannot be stepped")
        real(sl, logits, row_keys, *rest)

    monkeypatch.setattr(slots_mod, "_step_torch", poisoned)
    before = failing.failures.total
    with caplog.at_level(logging.ERROR, logger="budgetforce.vllm.slots"):
        for tok in (11, 12, 13):
            got = _batch(failing, [0, 1, 2], [tok] * 3)
            want = _batch(healthy, [0, 1, 2], [tok] * 3)
            for r in (0, 2):
                assert torch.equal(got[r], want[r])
    assert torch.equal(failing.state[[0, 2]], healthy.state[[0, 2]])  # the others stay forced
    assert int(failing.state[1, F.ON]) == 0 and int(failing.state[1, F.FAIL]) == FAIL_STEP
    assert int(stats[1, S.FAIL]) == FAIL_STEP and int(stats[0, S.FAIL]) == 0 == int(stats[2, S.FAIL])
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1  # once per kind, then counted
    assert failing.failures.total - before >= 3
    assert int(failing.state[0, F.ACT]) == Action.GUARD  # the minimum still guards the healthy rows' closes


POISON = """
import os
if os.environ.get("BF_TEST_POISON_TOKEN"):  # a fault injected into the engine-core process (tests only)
    from budgetforce.vllm import slots
    token, real = int(os.environ["BF_TEST_POISON_TOKEN"]), slots._step_torch
    def poisoned(sl, logits, row_keys, *rest):
        keys = row_keys[row_keys >= 0].long()
        if bool((sl.seq[keys, 0, 0] == token).any()):  # the request whose wait string starts so
            raise RuntimeError("injected step failure")
        real(sl, logits, row_keys, *rest)
    slots._step_torch = poisoned
"""


def test_a_failing_step_in_a_real_engine_is_reported_not_enforced(
    run: Any, tiny_r1: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real vLLM engine (the fault injected into its spawned engine-core process by a
    `sitecustomize`): the request whose rows fail reports `enforced: false` / `step_failed`; the two
    beside it in the batch keep their budgets. (The one log line per kind is checked on the slots
    above; here it goes to the engine process's log.)"""
    import asyncio
    import os

    from transformers import AutoTokenizer

    from budgetforce import Budget
    from conftest import _start_engine

    tok = AutoTokenizer.from_pretrained(tiny_r1)
    hold = tok.encode("Hold on", add_special_tokens=False)
    assert hold[0] != tok.encode("Wait", add_special_tokens=False)[0]
    (tmp_path / "sitecustomize.py").write_text(POISON)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("BF_TEST_POISON_TOKEN", str(hold[0]))
    eng = _start_engine(run, tiny_r1)
    try:
        messages = [{"role": "user", "content": "Count the apples."}]

        async def three() -> list[Any]:
            budgets = [Budget(min_thinking_tokens=60, max_thinking_tokens=80, wait_strings=(w,))
                       for w in ("Hold on", "Wait", "Wait")]  # fmt: skip
            return await asyncio.gather(*(
                eng.generate(messages, b, max_tokens=200, temperature=0.8, seed=i) for i, b in enumerate(budgets)
            ))  # fmt: skip

        bad, *good = run(three())
        assert (bad.stats.enforced, bad.stats.unenforced_reason) == (False, "step_failed")
        assert bad.stats.waits_inserted is None  # a failed row's counts are not trusted
        for out in good:
            assert out.stats.enforced is True and out.stats.unenforced_reason is None
            assert out.stats.thinking_tokens <= 80 and (out.stats.thinking_tokens >= 60 or out.stats.forced_end)
    finally:
        eng.shutdown()


def test_vllm_xargs_beyond_the_tables_are_refused(tiny_r1: Any) -> None:
    """The same limits on a stock `vllm serve` (`validate_params`): a ValueError, vLLM's 400."""
    from vllm import SamplingParams

    from budgetforce.vllm.admission import Admission

    too_many = SamplingParams(max_tokens=300, extra_args={"min_thinking_tokens": 5, "wait_strings": [f"w{i}" for i in range(9)]})
    with pytest.raises(ValueError, match="wait_strings"):
        Admission.validate_params(too_many)
