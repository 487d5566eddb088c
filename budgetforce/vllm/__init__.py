"""The engine adapters: everything that imports vLLM or torch.

`budgetforce.vllm:BudgetForcing` is the processor to name in `vllm serve --logits-processors`
(`processors.py`, loaded on first use so that importing a submodule does not import vLLM).
Beside it: the runner adapters (`forcing` for runner V1, `forcing_v2` for runner V2), the
admission (`admission`), the device tables (`slots`, `slots_kernel`), the wire format (`wire`), the
stats board (`stats_board`) and the Python engine (`engine`).
"""

from __future__ import annotations

from typing import Any

_PROCESSORS = ("ASYNC_PLUGIN_ERROR", "PLUGIN_ENV", "SPEC_DECODE_ERROR", "BudgetForcing", "BudgetForcingPlugin",
               "EngineForcing", "plugin_enabled")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _PROCESSORS:
        from budgetforce.vllm import processors

        return getattr(processors, name)
    raise AttributeError(f"module 'budgetforce.vllm' has no attribute {name!r}")
