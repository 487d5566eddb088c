"""Budget forcing inside a stock `vllm serve`: the processor to name, and the entry-point plugin.

    vllm serve MODEL --logits-processors budgetforce.vllm:BudgetForcing

Clients then pass budgets per request as `vllm_xargs` (`min_thinking_tokens`,
`max_thinking_tokens`, `max_waits`, `wait_strings`, `answer_prefix`, and the modes beyond s1:
`banned_thinking_strings`, `thinking_intervention`, `intervention_at`, `max_answer_tokens`,
`alpha_moment_tokens`/`alpha`, `wait_probability`, `wait_decay`, `paragraph_breaks`); bad values
are refused with HTTP 400 by `validate_params`, requests without them are left untouched. Early
exit (`probe_*`) needs a frontend that probes, so it is a 400 here. The delimiters
and wait strings come from the served model's profile, detected from its tokenizer.

The names vLLM loads are thin: one adapter class per runner does the work
(`BudgetForcingLogitsProcessor` for runner V1, `BudgetForcingV2` for Model Runner V2, vLLM >= 0.31,
the default on CUDA), and constructing a named class returns the adapter of the runner that
constructs it (`build`, the one factory).
Speculative decoding is refused at start-up. See docs/vllm-serve.md.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base

from budgetforce.vllm.admission import Admission
from budgetforce.vllm.forcing import BudgetForcingLogitsProcessor
from budgetforce.vllm.forcing_v2 import BudgetForcingV2
from budgetforce.vllm.wire import EXTRA_KEY
from budgetforce.core.profile import ProfileError

if TYPE_CHECKING:
    from vllm.config import VllmConfig

try:  # vLLM >= 0.30: Model Runner V2 loads only subclasses of its own interface
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _RunnerV2Processor

    _RUNNER_V2_BASES: tuple[type, ...] = (_RunnerV2Processor,)
except ImportError:  # older vLLM: runner V1 only
    _RUNNER_V2_BASES = ()

log = logging.getLogger(__name__)

PLUGIN_ENV = "BUDGETFORCE_VLLM_PLUGIN"  # "1" turns the entry-point plugin on
SPEC_DECODE_ERROR = (
    "budgetforce forces one token per request per step and cannot follow speculative decoding's "
    "draft tokens; start vLLM without a speculative config to use thinking budgets."
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


def build(vllm_config: VllmConfig, args: tuple[Any, ...], engine_plans: bool) -> Admission:
    """The factory: the adapter of the runner that constructs us (`BudgetForcingLogitsProcessor` on
    runner V1, `BudgetForcingV2` on Model Runner V2). ``engine_plans`` False admits `vllm_xargs`
    budgets only, and then the served model must have a known profile (checked now, not on the
    first budgeted request). Speculative decoding is refused (one forced token per request per step).
    """
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise RuntimeError(SPEC_DECODE_ERROR)
    adapter = BudgetForcingLogitsProcessor if _runner_v1(args) else BudgetForcingV2
    proc = adapter(vllm_config, *args)
    proc.engine_plans = engine_plans
    if not engine_plans:
        try:
            _ = proc._profile
        except ProfileError as e:
            raise RuntimeError(f"budgetforce cannot force budgets on {proc._model}: {e}") from None
    return proc


class _Named(_V1Base, *_RUNNER_V2_BASES):  # type: ignore[misc]
    """What vLLM loads by name: a subclass of both runners' interfaces (each loader checks its own);
    constructing one returns `build`'s adapter for the runner that constructs it."""

    engine_plans = False

    def __new__(cls, vllm_config: VllmConfig, *args: Any) -> Any:
        return build(vllm_config, args, cls.engine_plans)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        Admission.validate_params(sampling_params)


class BudgetForcing(_Named):
    """The processor for `vllm serve --logits-processors budgetforce.vllm:BudgetForcing`.

    Budgets arrive as `vllm_xargs`; see `BudgetForcingLogitsProcessor` for the mechanism. The
    profile (delimiters, default wait string) is detected from the served model's tokenizer when
    the engine starts; a model it does not recognise stops the start.

    Args:
        vllm_config: The engine's config (the served model's tokenizer gives the profile).
        *args: Runner V1 passes `device, is_pin_memory`; runner V2 passes `req_states`.

    Example:
        `{"vllm_xargs": {"min_thinking_tokens": 200}}` turns an early `</think>` into "Wait";
        a request without budget xargs samples exactly as in plain vLLM.
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Also refuses `vllm_xargs.budgetforce`: the engine plan's key, which no client can fill correctly."""
        if EXTRA_KEY in (sampling_params.extra_args or {}):
            raise ValueError(
                f"`vllm_xargs.{EXTRA_KEY}` is reserved for budgetforce's own engine; "
                "pass `min_thinking_tokens`, `max_thinking_tokens`, `max_waits`, ... instead"
            )
        Admission.validate_params(sampling_params)


class EngineForcing(_Named):
    """The processor `BudgetForcingEngine` registers: its plans (and `vllm_xargs`) on either runner."""

    engine_plans = True


class _Inert(_V1Base, *_RUNNER_V2_BASES):  # type: ignore[misc]
    """The plugin when it is not enabled, on either runner: adds no rows, changes nothing."""

    enabled = False
    rows: dict[int, Any] = {}

    def __init__(self, *args: Any) -> None:
        pass

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

    def apply(self, logits: torch.Tensor, *ctx: Any) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True  # it changes nothing, so greedy rows may skip it


class BudgetForcingPlugin(_Named):
    """The `vllm.logits_processors` entry point: inert unless `BUDGETFORCE_VLLM_PLUGIN=1`.

    vLLM loads an installed entry point into every engine of the environment, so this is an
    inert processor (no rows, no validation, the logits untouched) unless the variable is set.
    Even then it stands aside where a budget-forcing processor is configured by name
    (budgetforce's own engine, or `--logits-processors`), never acts on budgetforce's engine
    plans, and refuses async scheduling on runner V1 (see `ASYNC_PLUGIN_ERROR`).

    Example:
        `BUDGETFORCE_VLLM_PLUGIN=1 vllm serve MODEL --no-async-scheduling` honours `vllm_xargs`
        budgets; without the variable the same server behaves as if budgetforce were absent.
    """

    def __new__(cls, vllm_config: VllmConfig, *args: Any) -> Any:
        if not plugin_enabled() or _named_processor(vllm_config):
            return _Inert()
        if _runner_v1(args) and getattr(vllm_config.scheduler_config, "async_scheduling", False):
            raise RuntimeError(ASYNC_PLUGIN_ERROR)
        return build(vllm_config, args, engine_plans=False)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        if plugin_enabled():  # budgetforce's own engine plans pass: its named processor reads them
            Admission.validate_params(sampling_params)


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
        if isinstance(entry, type) and issubclass(entry, (BudgetForcingLogitsProcessor, _Named)):
            return True
    return False
