"""Budget forcing for vLLM's Model Runner V2 (vLLM >= 0.31): the second thin adapter.

Runner V2 keeps each request in a persistent slot with its token history on the device
(`LogitsProcRequestState.all_token_ids`, valid up to `total_len`), calls `add_request` when a
request enters (also when a preempted one resumes) and `apply(logits, ctx)` once per step with
rows mapped to slots by `ctx.expanded_idx_mapping`. So the adapter does no per-step host work
at all: slot -> key is a device table written when requests are added, and `ForcingSlots.step`
reads each row's new tokens straight from the history.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from budgetforce.vllm.admission import Admission

try:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2Base
except ImportError:  # vLLM < 0.31: no custom processors on runner V2
    _V2Base = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)


class BudgetForcingV2(Admission, _V2Base):  # type: ignore[misc]
    """`ForcingSlots` behind runner V2's interface (see `BudgetForcingLogitsProcessor` for the rules).

    Example: `LLM(model, logits_processors=[BudgetForcingV2])` on vLLM >= 0.31 with runner V2;
    requests carry budgets as `vllm_xargs` or budgetforce engine plans.
    """

    def __init__(self, vllm_config: VllmConfig, req_states: Any) -> None:
        self.req_states = req_states
        self._admission_init(vllm_config, req_states.device)
        n = req_states.max_num_reqs
        self._slot_key = np.full(n, -1, dtype=np.int64)  # host copy, written on add
        self._slot_key_dev = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self._dirty = False
        self._fresh: list[tuple[int, int]] = []  # (slot, key) whose phase comes from the prompt

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        adm = self._admit(sampling_params)
        if self._slot_key[req_idx] != -1:
            self._slot_key[req_idx] = -1
            self._dirty = True
        if adm is None:
            return False
        self._settle(adm, bool((self._slot_key == adm.key).any()))
        taken = np.nonzero(self._slot_key == adm.key)[0]  # a request the frontend gave up on
        if taken.size:
            self._slot_key[taken] = -1
        if not self._is_resume(adm):
            if not self._load(adm, None):
                return False
            self._fresh.append((req_idx, adm.key))
        self._slot_key[req_idx] = adm.key
        self._dirty = True
        return True

    def apply_staged_writes(self) -> None:
        if self.slots is None:
            return
        if not (self.slots._staged or self._fresh or self._dirty):  # noqa: SLF001 - most steps: nothing to write
            return
        staged = [*self.slots._staged, *(key for _, key in self._fresh)]  # noqa: SLF001 - the rows this call loads
        try:
            self.slots.flush()
            if self._dirty:
                self._slot_key_dev.copy_(self._to_device(self._slot_key), non_blocking=True)
                self._dirty = False
            if self._fresh:
                fresh = self._to_device(np.array(self._fresh, dtype=np.int64))
                slots_idx, keys = fresh[:, 0], fresh[:, 1]
                self._fresh.clear()
                rs = self.req_states
                self.slots.open_from_history(keys, rs.all_token_ids.gpu, slots_idx, rs.prompt_len.gpu[slots_idx])
        except Exception as e:  # noqa: BLE001 - never take the engine down
            self._step_failed(e, staged)
            self._fresh.clear()

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        """A host array on the device; pinned, so the copy neither blocks nor waits for the stream."""
        t = torch.from_numpy(a.copy())
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.slots is None or not (self._slot_key[ctx.idx_mapping_np] >= 0).any():
            return logits
        try:
            rows_slot = ctx.expanded_idx_mapping
            rs = self.req_states
            prompt_len = rs.prompt_len.gpu[rows_slot].long()
            self.slots.step(
                logits,
                self._slot_key_dev[rows_slot],
                rs.all_token_ids.gpu,
                rows_slot.long(),
                prompt_len,
                rs.total_len.gpu[rows_slot].long() - prompt_len,
            )
        except Exception as e:  # noqa: BLE001 - the engine keeps serving everyone else
            self._step_failed(e, self._slot_key[ctx.idx_mapping_np].tolist())
        return logits
