"""`budgetforce.vllm` without a server: the entry point, its inert default, and the runner checks."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from budgetforce import Budget
from budgetforce.vllm.wire import EXTRA_KEY, plan_to_args
from budgetforce.vllm import (
    ASYNC_PLUGIN_ERROR,
    PLUGIN_ENV,
    BudgetForcing,
    BudgetForcingPlugin,
)

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = "budgetforce.vllm:BudgetForcingPlugin"


def config(model: Path, named: list[Any] | None = None, async_scheduling: bool = False) -> Any:
    """The slice of `VllmConfig` the processors read."""
    return SimpleNamespace(
        model_config=SimpleNamespace(tokenizer=str(model), logits_processors=named),
        scheduler_config=SimpleNamespace(async_scheduling=async_scheduling),
    )


def added(index: int, params: SamplingParams) -> BatchUpdate:
    return BatchUpdate(batch_size=index + 1, removed=[], added=[(index, params, [0, 4], [])], moved=[])


BUDGETED = SamplingParams(max_tokens=64, extra_args={"min_thinking_tokens": 8})
BAD = SamplingParams(max_tokens=64, extra_args={"min_thinking_tokens": -1})


def test_entry_point_is_declared_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject's entry point, installed as a dist-info, is what vLLM's plugin loader returns."""
    from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert table["vllm.logits_processors"] == {"budgetforce": ENTRY_POINT}
    info = tmp_path / "budgetforce-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: budgetforce\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[vllm.logits_processors]\nbudgetforce = {ENTRY_POINT}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *[p for p in sys.path if p not in ("", str(ROOT))]])
    assert BudgetForcingPlugin in _load_logitsprocs_plugins()


def test_plugin_is_inert_by_default(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    plugin = BudgetForcingPlugin(config(tiny_r1), torch.device("cpu"), False)
    plugin.update_state(added(0, BUDGETED))
    logits = torch.randn(1, 8)
    before = logits.clone()
    assert not plugin.rows and plugin.apply(logits) is logits and torch.equal(logits, before)
    assert plugin.is_argmax_invariant()  # greedy rows skip it
    BudgetForcingPlugin.validate_params(BAD)  # someone else's engine: not ours to refuse


def test_enabled_plugin_budgets_xargs_only(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGIN_ENV, "1")
    plugin = BudgetForcingPlugin(config(tiny_r1), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        BudgetForcingPlugin.validate_params(BAD)
    plugin.update_state(added(0, BUDGETED))
    assert 0 in plugin.rows and not plugin.is_argmax_invariant()
    plan = plugin._profile.plan(Budget(min_thinking_tokens=8))
    own = SamplingParams(max_tokens=64, extra_args=plan_to_args(plan))
    BudgetForcingPlugin.validate_params(own)  # budgetforce's engine sends these: not the plugin's to refuse
    plugin.update_state(added(1, own))
    assert 1 not in plugin.rows  # budgetforce's engine plan belongs to its named processor


@pytest.mark.parametrize(
    "named", [["budgetforce.vllm.forcing:BudgetForcingLogitsProcessor"], [BudgetForcing], ["budgetforce.vllm:EngineForcing"]]
)
def test_enabled_plugin_stands_aside_for_named_processor(
    tiny_r1: Path, monkeypatch: pytest.MonkeyPatch, named: list[Any]
) -> None:
    monkeypatch.setenv(PLUGIN_ENV, "1")
    plugin = BudgetForcingPlugin(config(tiny_r1, named=named), torch.device("cpu"), False)
    plugin.update_state(added(0, BUDGETED))
    assert not plugin.enabled and not plugin.rows


def test_enabled_plugin_refuses_async_scheduling(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGIN_ENV, "1")
    with pytest.raises(RuntimeError, match="--no-async-scheduling") as err:
        BudgetForcingPlugin(config(tiny_r1, async_scheduling=True), torch.device("cpu"), False)
    assert str(err.value) == ASYNC_PLUGIN_ERROR
    # named processors get their placeholder ids repaired by vLLM: async scheduling is fine for them
    BudgetForcing(config(tiny_r1, async_scheduling=True), torch.device("cpu"), False)


def test_runner_v2_builds_the_v2_adapter(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model Runner V2 (vLLM >= 0.31) constructs processors as `(vllm_config, req_states)`: both
    names load, the named processor becomes `BudgetForcingV2`, the plugin stays inert unless enabled,
    and speculative decoding is refused at start-up."""
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from budgetforce.vllm.forcing_v2 import BudgetForcingV2

    assert _load_v2_logitsprocs_by_fqcns(["budgetforce.vllm:BudgetForcing", ENTRY_POINT]) == [
        BudgetForcing, BudgetForcingPlugin,
    ]  # fmt: skip
    req_states = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=4)
    proc = BudgetForcing(config(tiny_r1), req_states)
    assert isinstance(proc, BudgetForcingV2)
    assert proc.add_request(0, SamplingParams(max_tokens=64, extra_args={"min_thinking_tokens": 8, "budgetforce_nonce": 5}))
    assert not proc.add_request(1, SamplingParams(max_tokens=64))  # no budget: declined
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    inert = BudgetForcingPlugin(config(tiny_r1), req_states)  # other engines in the environment still start
    logits = torch.randn(2, 8)
    assert not inert.add_request(0, BUDGETED) and inert.apply(logits, object()) is logits
    spec = SimpleNamespace(**vars(config(tiny_r1)), speculative_config=object())
    with pytest.raises(RuntimeError, match="speculative"):
        BudgetForcing(spec, req_states)


def test_unknown_model_stops_the_start(tiny_s1: Path, tmp_path: Path) -> None:
    """A chat model without thinking delimiters: a clear error when the engine starts."""
    import shutil

    plain = tmp_path / "plain-chat"
    plain.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_s1 / name).exists():
            shutil.copy(tiny_s1 / name, plain / name)
    with pytest.raises(RuntimeError, match="cannot tell how this model delimits its thinking"):
        BudgetForcing(config(plain), torch.device("cpu"), False)


def test_clients_cannot_send_an_engine_plan() -> None:
    """`vllm_xargs.budgetforce` would reach the engine as a malformed plan: refused at the edge."""
    with pytest.raises(ValueError, match="reserved"):
        BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args={EXTRA_KEY: "x"}))


def test_xargs_modes_are_checked_at_the_edge(tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock `vllm serve`: the modes' fields arrive flat in `vllm_xargs`; early exit is refused (a 400)
    unless the budget layer gave the request its stats-board row (its probes close the thinking there),
    an answer budget gets its maximum thinking written back, and what the tokenizer cannot carry is refused."""
    from transformers import AutoTokenizer

    from budgetforce.vllm import admission
    from budgetforce.core.profile import detect_profile

    tok = AutoTokenizer.from_pretrained(tiny_r1)
    monkeypatch.setattr(admission, "_FRONTEND_PROFILE", [detect_profile(tok).resolve(tok)])
    with pytest.raises(ValueError, match="BudgetMiddleware") as err:
        BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args={"probe_every": 16}))
    assert "`probe_every`" in str(err.value)
    with pytest.raises(ValueError, match="probe_lead"):
        BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args={"probe_lead": "Answer:"}))
    probed = {"probe_every": 16, "budgetforce_board": "board", "budgetforce_key": 3}  # the layer's row
    BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args=probed))
    args: dict[str, Any] = {"max_answer_tokens": 20, "banned_thinking_strings": "Wait"}
    BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args=args))
    assert args["max_thinking_tokens"] == 64 - 1 - 20 - 1 and "budgetforce_nonce" in args
    budget = admission.budget_from_xargs(args)
    assert budget is not None and budget.banned_thinking_strings == ("Wait",) and budget.max_thinking_tokens == 42
    with pytest.raises(ValueError, match="max_answer_tokens"):
        BudgetForcing.validate_params(SamplingParams(max_tokens=16, extra_args={"max_answer_tokens": 20}))
    with pytest.raises(ValueError, match="wait_probability"):
        BudgetForcing.validate_params(
            SamplingParams(max_tokens=64, extra_args={"alpha_moment_tokens": 8, "wait_probability": 3})
        )
    with pytest.raises(ValueError, match="thinking_intervention"):
        BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args={"thinking_intervention": "x" * 65}))
    scheduled = {"alpha_moment_tokens": "8", "wait_decay": "constant", "paragraph_breaks": "\n"}  # xargs may be strings
    BudgetForcing.validate_params(SamplingParams(max_tokens=64, extra_args=scheduled))
    plan = admission._frontend_profile().plan(admission.budget_from_xargs(scheduled))
    assert plan.alpha_moment == 8 and not plan.wait_decay and plan.breaks
