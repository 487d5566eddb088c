"""The engine strategy: budget forcing as vLLM logits processors over device-resident slots.

`ForcingSlots` (slots.py) holds every budgeted request's state on the engine's device and does
each step's work in one fused pass; this module adapts it to vLLM's two runners:

- `BudgetForcingLogitsProcessor`: runner V1 (`BatchUpdate` + `apply(logits)`), vLLM 0.26-0.33
  with `VLLM_USE_V2_MODEL_RUNNER=0`, and the CPU build;
- `BudgetForcingV2` (forcing_v2.py): Model Runner V2 (`add_request` + `apply(logits, ctx)`).

Requests carry either a plan prepared by `BudgetForcingEngine` (token ids, a stats-board key and
nonce) or, from a stock `vllm serve`, the `vllm_xargs` budget fields resolved with the model's
profile. Each request's state lives under a *key* that survives preemption: a resumed request
(same nonce) continues exactly where it stopped. Nothing here raises inside the engine: a
request that cannot be forced runs unforced, with one log line and a Prometheus counter.

Stats (waits inserted) reach the frontend through `StatsBoard`, a shared-memory table the
step writes to directly (on CUDA through a mapped view of it): no extra sync, exact for the
last token too (the frontend settles the pending decision of the final token itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from budgetforce.vllm.admission import Admission

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)


try:
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base
except ImportError:  # a vLLM without runner V1's interface
    _V1Base = object  # type: ignore[assignment,misc]


class BudgetForcingLogitsProcessor(Admission, _V1Base):  # type: ignore[misc]
    """Budget forcing for vLLM's runner V1 (`BatchUpdate` + `apply(logits)`).

    Per step it hands each budgeted row's new token ids (normally one) to `ForcingSlots.step`,
    which advances the device state and writes the logits: FORCE one-hot-by-1e9 on the
    forced token, GUARD (close attempts' mass moved onto the first wait token at the row's
    temperature; a sampled wait is a replaced close with probability p_close/(p_close+p_wait),
    drawn on the device), REDIRECT (EOS mass onto the close), BAN (the first token after a
    wait string may not close, as in s1's loop). Rows without a budget are never touched.
    Example: min 100, the model's argmax at thinking token 40 is `</think>` -> "Wait" is emitted.

    The host work per step is reading each budgeted row's last token from vLLM's lists (V1
    keeps them on the host anyway); adds, removals and moves only edit small host tables.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self._admission_init(vllm_config, device)
        self.pin = is_pin_memory and device.type != "cpu"
        self._rows: dict[int, tuple[int, list[int]]] = {}  # batch row -> (key, live output ids)
        self._handed: dict[int, int] = {}  # key -> output ids handed to the device so far
        self._layout: _Layout | None = None  # None: rebuild
        self._ring = [torch.empty(0, dtype=torch.int64) for _ in range(4)]
        self._ring_next = 0

    @property
    def rows(self) -> dict[int, int]:
        """Budgeted batch rows and their request keys."""
        return {i: key for i, (key, _) in self._rows.items()}

    def is_argmax_invariant(self) -> bool:
        return False  # it forces and bans tokens, which moves the argmax

    # -- batch bookkeeping ----------------------------------------------------------------
    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        from vllm.v1.sample.logits_processor import MoveDirectionality

        self._save_handed()

        for index in batch_update.removed:
            self._rows.pop(index, None)  # the key keeps its state: the request may resume
        for index, params, prompt_ids, out_ids in batch_update.added:
            self._rows.pop(index, None)
            adm = self._admit(params) if params is not None else None
            if adm is None:
                continue
            self._settle(adm, any(key == adm.key for key, _ in self._rows.values()))
            for other, (key, _) in list(self._rows.items()):
                if key == adm.key:  # a request the frontend gave up on still holds the key
                    del self._rows[other]
            if not self._is_resume(adm):
                if not self._load(adm, list(prompt_ids or [])):
                    continue
                self._handed[adm.key] = 0
            self._rows[index] = (adm.key, out_ids)
        for a, b, direction in batch_update.moved:
            va, vb = self._rows.pop(a, None), self._rows.pop(b, None)
            if va is not None:
                self._rows[b] = va
            if vb is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = vb
        self._layout = None

    # -- the step -------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows or self.slots is None:
            return logits
        try:
            self._step(logits)
        except Exception as e:  # noqa: BLE001 - the engine keeps serving everyone else
            self._step_failed(e, [key for key, _ in self._rows.values()])
        return logits

    def _step(self, logits: torch.Tensor) -> None:
        slots = self.slots
        assert slots is not None
        slots.flush()
        b = logits.shape[0]
        if self._layout is None or self._layout.width != b:
            self._save_handed()
            self._layout = self._new_layout(b)
        lay = self._layout
        rows, outs, row_keys, row_hist, ones, handed = lay.rows, lay.outs, lay.row_keys, lay.row_hist, lay.ones, lay.handed
        n = len(outs)
        lens = np.fromiter(map(len, outs), dtype=np.int64, count=n)
        last = np.fromiter((o[-1] if o else -1 for o in outs), dtype=np.int64, count=n)
        if (lens == handed + 1).all() and (last >= 0).all():  # the steady state: one new token per row
            handed += 1
            slots.step(logits, row_keys, self._put(last[:, None]), row_hist, row_hist, ones, window=1)
            return
        window = [_fresh(o, int(h)) for o, h in zip(outs, handed)]
        width = max(1, max(len(w) for w in window))
        hist = np.full((n, width), -1, dtype=np.int64)
        counts = np.zeros(b, dtype=np.int64)
        for i, w in enumerate(window):
            hist[i, : len(w)] = w
            handed[i] += len(w)
        counts[rows] = [len(w) for w in window]
        slots.step(logits, row_keys, self._put(hist), row_hist, row_hist, self._put(counts), window=width)

    def _new_layout(self, width: int) -> _Layout:
        """The batch as the step sees it, rebuilt only when rows come, go or move."""
        rows = sorted(self._rows)
        keys = [self._rows[r][0] for r in rows]
        row_keys = np.full(width, -1, dtype=np.int64)
        row_keys[rows] = keys
        hist_of_row = np.zeros(width, dtype=np.int64)
        hist_of_row[rows] = np.arange(len(rows))
        ones = np.zeros(width, dtype=np.int64)
        ones[rows] = 1
        return _Layout(
            width=width, rows=rows, keys=keys, outs=[self._rows[r][1] for r in rows],
            row_keys=self._put(row_keys), row_hist=self._put(hist_of_row), ones=self._put(ones),
            handed=np.array([self._handed[k] for k in keys], dtype=np.int64),
        )

    def _save_handed(self) -> None:
        """Write the layout's per-row counts of handed ids back to the per-key table."""
        if self._layout is not None:
            for k, h in zip(self._layout.keys, self._layout.handed):
                self._handed[k] = int(h)

    def _put(self, a: np.ndarray) -> torch.Tensor:
        """A host array on the device: through a ring of pinned buffers, never a fresh pinned allocation."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cpu":
            return t
        if not self.pin:
            return t.to(self.device)
        # a buffer is reused four transfers later, long after vLLM synchronised on its step
        i = self._ring_next = (self._ring_next + 1) % 4
        buf = self._ring[i]
        if buf.numel() < t.numel():
            buf = self._ring[i] = torch.empty(max(2 * t.numel(), 1024), dtype=torch.int64, pin_memory=True)
        staged = buf[: t.numel()].view(t.shape)
        staged.copy_(t)
        return staged.to(self.device, non_blocking=True)


@dataclass(slots=True)
class _Layout:
    """The V1 batch in the step's terms: budgeted rows, their keys and live output lists, and the
    device index tensors built from them; `handed` counts the ids each row's key has been given."""

    width: int  # logits rows
    rows: list[int]
    keys: list[int]
    outs: list[list[int]]
    row_keys: torch.Tensor
    row_hist: torch.Tensor
    ones: torch.Tensor
    handed: np.ndarray


def _fresh(out: list[int], handed: int) -> list[int]:
    """Output ids not yet handed to the device, up to the first async-scheduling placeholder."""
    new = out[handed:]
    for i, t in enumerate(new):
        if t < 0:
            return new[:i]
    return new
