"""Budget forcing inside a stock `vllm serve`: the processor to name, and the entry-point plugin.

    vllm serve MODEL --logits-processors budgetforce.vllm:BudgetForcing

Clients then pass budgets per request as `vllm_xargs` (`min_thinking_tokens`,
`max_thinking_tokens`, `max_waits`, `wait_strings`, `answer_prefix`); bad values are refused
with HTTP 400 by `validate_params`, requests without them are left untouched. The delimiters
and wait strings come from the served model's profile, detected from its tokenizer.

Both classes implement vLLM's runner-V1 interface. vLLM >= 0.30 runs Model Runner V2 by
default on CUDA; there both refuse to start (the named processor) or stay out of the way (the
plugin, unless enabled) and ask for `VLLM_USE_V2_MODEL_RUNNER=0`. See docs/vllm-serve.md.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from budgetforce.forcing import EXTRA_KEY, BudgetForcingLogitsProcessor
from budgetforce.profile import ProfileError

if TYPE_CHECKING:
    from vllm.config import VllmConfig

try:  # vLLM >= 0.30: Model Runner V2 loads only subclasses of its own interface
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _RunnerV2Processor

    _RUNNER_V2_BASES: tuple[type, ...] = (_RunnerV2Processor,)
except ImportError:  # older vLLM: runner V1 only
    _RUNNER_V2_BASES = ()

log = logging.getLogger(__name__)

PLUGIN_ENV = "BUDGETFORCE_VLLM_PLUGIN"  # "1" turns the entry-point plugin on
RUNNER_V2_ERROR = (
    "budgetforce's logits processor implements vLLM's runner-V1 interface, but this engine runs "
    "Model Runner V2 (the default of vLLM >= 0.30 on CUDA). Start vLLM with "
    "`VLLM_USE_V2_MODEL_RUNNER=0` in its environment (and without options that require runner V2, "
    "such as watermarking)."
)
ASYNC_PLUGIN_ERROR = (
    f"`{PLUGIN_ENV}=1` enables budgetforce as an entry-point plugin, but this engine uses async "
    "scheduling, under which vLLM hands entry-point-only processors placeholder token ids (-1) "
    "and budgets could not be followed. Name the processor instead "
    "(`--logits-processors budgetforce.vllm:BudgetForcing`), or pass `--no-async-scheduling`."
)


def _runner_v1(args: tuple[Any, ...]) -> bool:
    """Whether vLLM built us through runner V1 (`device, is_pin_memory`), not V2 (`req_states`)."""
    return len(args) == 2


class BudgetForcing(BudgetForcingLogitsProcessor, *_RUNNER_V2_BASES):
    """`BudgetForcingLogitsProcessor` for `vllm serve --logits-processors budgetforce.vllm:BudgetForcing`.

    Budgets arrive as `vllm_xargs`; see `BudgetForcingLogitsProcessor` for the mechanism. It
    also declares Model Runner V2's interface so that vLLM >= 0.30 constructs it and it can
    fail with `RUNNER_V2_ERROR` instead of vLLM's generic "not a subclass" message.

    The profile (delimiters, default wait string) is detected from the served model's
    tokenizer when the engine starts; a model it does not recognise stops the start.

    Args:
        vllm_config: The engine's config (the served model's tokenizer gives the profile).
        *args: Runner V1 passes `device, is_pin_memory`; runner V2 passes `req_states`.

    Example:
        `{"vllm_xargs": {"min_thinking_tokens": 200}}` turns an early `</think>` into "Wait";
        a request without budget xargs samples exactly as in plain vLLM.
    """

    def __init__(self, vllm_config: VllmConfig, *args: Any) -> None:
        if not _runner_v1(args):
            raise RuntimeError(RUNNER_V2_ERROR)
        super().__init__(vllm_config, *args)
        try:  # now: a model without a known profile fails at startup, not on its first budgeted request
            _ = self._profile
        except ProfileError as e:
            raise RuntimeError(f"budgetforce cannot force budgets on {self._model}: {e}") from None

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Also refuses `vllm_xargs.budgetforce`: the engine plan's key, which no client can fill correctly."""
        if EXTRA_KEY in (sampling_params.extra_args or {}):
            raise ValueError(
                f"`vllm_xargs.{EXTRA_KEY}` is reserved for budgetforce's own engine; "
                "pass `min_thinking_tokens`, `max_thinking_tokens`, `max_waits`, ... instead"
            )
        super().validate_params(sampling_params)

    def _new_row(self, params: SamplingParams, prompt_ids: list[int], out_ids: list[int]) -> Any:
        if EXTRA_KEY in (params.extra_args or {}):
            return None  # budgetforce's own engine plan (its named processor's), never a client's
        return super()._new_row(params, prompt_ids, out_ids)


class BudgetForcingPlugin(BudgetForcing):
    """The `vllm.logits_processors` entry point: inert unless `BUDGETFORCE_VLLM_PLUGIN=1`.

    vLLM loads an installed entry point into every engine of the environment, so this class
    adds no rows, validates nothing and returns the logits untouched unless the variable is
    set. Even then it stands aside where a `BudgetForcingLogitsProcessor` is configured by name
    (budgetforce's own engine, or `--logits-processors`), never acts on budgetforce's engine
    plans, and refuses async scheduling (see `ASYNC_PLUGIN_ERROR`).

    Example:
        `BUDGETFORCE_VLLM_PLUGIN=1 vllm serve MODEL --no-async-scheduling` honours `vllm_xargs`
        budgets; without the variable the same server behaves as if budgetforce were absent.
    """

    def __init__(self, vllm_config: VllmConfig, *args: Any) -> None:
        self.enabled = plugin_enabled() and not _named_processor(vllm_config)
        self.rows = {}
        if not self.enabled:
            return
        if _runner_v1(args) and getattr(vllm_config.scheduler_config, "async_scheduling", False):
            raise RuntimeError(ASYNC_PLUGIN_ERROR)
        super().__init__(vllm_config, *args)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        if plugin_enabled():  # budgetforce's own engine plans pass: its named processor reads them
            super(BudgetForcing, cls).validate_params(sampling_params)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.enabled:
            super().update_state(batch_update)

    def apply(self, logits: torch.Tensor, *ctx: Any) -> torch.Tensor:
        return super().apply(logits) if self.enabled else logits

    def is_argmax_invariant(self) -> bool:
        return not self.enabled  # inert: it changes nothing, so greedy rows may skip it

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return False  # runner V2: only ever constructed inert (an enabled one raised)


def plugin_enabled() -> bool:
    return os.environ.get(PLUGIN_ENV, "") == "1"


def _named_processor(vllm_config: VllmConfig) -> bool:
    """Whether the engine's `--logits-processors` already include a budget-forcing processor."""
    model_config = getattr(vllm_config, "model_config", None)
    for entry in getattr(model_config, "logits_processors", None) or ():
        if isinstance(entry, str):
            module, _, qualname = entry.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for attr in qualname.split("."):
                    obj = getattr(obj, attr)
            except (ImportError, AttributeError):
                continue  # vLLM reports it when it loads the list itself
            entry = obj
        if isinstance(entry, type) and issubclass(entry, BudgetForcingLogitsProcessor):
            return True
    return False
