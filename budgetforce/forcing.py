"""The engine strategy: budget forcing as a vLLM (runner V1) logits processor.

Per-row controllers live on the host and advance on the tokens vLLM already brought back;
the logits are changed with a handful of vectorised writes for the whole batch. Rows without
a budget cost nothing.
"""

from __future__ import annotations

import functools
import logging
import random
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from budgetforce.budget import Budget
from budgetforce.controller import Action, ForcingPlan, Phase, ThinkingController
from budgetforce.profile import ProfileError

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)

EXTRA_KEY = "budgetforce"  # SamplingParams.extra_args[EXTRA_KEY] holds a serialised ForcingPlan
XARG_FIELDS = ("min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait_strings", "answer_prefix")
_GREEDY_EPS = 1e-5  # vLLM's own threshold for greedy rows


def plan_to_args(plan: ForcingPlan, board: str | None = None, slot: int = -1) -> dict[str, Any]:
    """Serialise a plan for `SamplingParams.extra_args` (plain lists survive msgspec).

    ``board``/``slot`` name the `StatsBoard` entry where the processor reports the request's stats.
    """
    return {
        EXTRA_KEY: {
            "think_start": list(plan.think_start),
            "think_end": list(plan.think_end),
            "eos": sorted(plan.eos),
            "waits": [list(w) for w in plan.waits],
            "answer_prefix": list(plan.answer_prefix),
            "min_thinking": plan.min_thinking,
            "max_thinking": plan.max_thinking,
            "max_waits": plan.max_waits,
            "board": board,
            "slot": slot,
        }
    }


def plan_from_args(args: dict[str, Any]) -> ForcingPlan:
    a = args[EXTRA_KEY]
    return ForcingPlan(
        think_start=tuple(a["think_start"]),
        think_end=tuple(a["think_end"]),
        eos=frozenset(a["eos"]),
        waits=tuple(tuple(w) for w in a["waits"]),
        answer_prefix=tuple(a["answer_prefix"]),
        min_thinking=a["min_thinking"],
        max_thinking=a["max_thinking"],
        max_waits=a["max_waits"],
    )


def budget_from_xargs(extra_args: dict[str, Any] | None) -> Budget | None:
    """A `Budget` from a stock `vllm serve` request's `vllm_xargs`, or None when it sets none."""
    if not extra_args or not any(k in extra_args for k in XARG_FIELDS):
        return None
    fields = {k: extra_args[k] for k in XARG_FIELDS if k in extra_args}
    if isinstance(fields.get("wait_strings"), str):
        fields["wait_strings"] = [fields["wait_strings"]]
    return Budget.model_validate(fields)


@dataclass(slots=True)
class _Row:
    ctl: ThinkingController
    out: list[int]  # vLLM's live list of this request's output ids
    greedy: bool
    temperature: float
    rng: random.Random
    special: frozenset[int]  # tokens that need the controller (`ForcingPlan.special`)
    seen: int = 0  # output ids already fed to the controller
    quiet: int = 0  # ordinary tokens that may still skip the controller
    action: tuple[Action, int] = (Action.FREE, -1)
    share_pos: int = -1  # where last step's guard share for this row lies, if it was guarded
    board: StatsBoard | None = None
    slot: int = -1
    reported: tuple[int, bool] = (0, False)


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """Replaces an early close of the thinking with a wait string and forces the close at the maximum.

    Per request, through `SamplingParams.extra_args`: either a plan prepared by
    `BudgetForcingEngine` (token ids) or, from a stock `vllm serve`, the `vllm_xargs`
    `min_thinking_tokens`, `max_thinking_tokens`, `max_waits`, `wait_strings`, `answer_prefix`
    resolved with the model's profile.

    Each step, per budgeted row, one of:
        FORCE     the row's logits become one-hot on the forced token (wait strings, the close
                  delimiter, the answer prefix: one token per step);
        GUARD     below the minimum: the close attempts (the close's first token, EOS) are banned
                  and their probability mass moves onto the first wait token (at the row's
                  temperature; greedy rows: its logit becomes the max). A sampled wait token is
                  then a replaced close with probability p_close / (p_close + p_wait), drawn with a
                  per-request RNG seeded from `seed`; if so the rest of the wait string is forced.
                  Tokens and wait counts are thus distributed exactly as in s1's loop (greedy: the
                  wait follows iff the argmax was a close). Caveat: top-k/top-p see the merged mass.
        REDIRECT  a budgeted thinking past its minimum: EOS mass moves onto the close token
                  (max for greedy rows), so the thinking is closed rather than the sequence ended.
    Example: min 100, the model's argmax at thinking token 40 is `</think>` -> "Wait" is emitted;
    a request without a budget in the same batch is left exactly as plain vLLM samples it.

    The guard shares travel back in a pinned buffer that is read a step later, after vLLM has
    synchronised on the sampled ids anyway: no extra host sync per step, no pass over the vocabulary.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.pin = is_pin_memory and device.type != "cpu"
        self.rows: dict[int, _Row] = {}
        self._model = vllm_config.model_config.tokenizer if vllm_config.model_config else None
        self._forcing: dict[int, int] = {}  # batch row -> token forced this step
        self._moving: dict[int, tuple[_Row, int, bool]] = {}  # batch row -> (state, target, is a guard)
        self._moves: tuple | None = None  # index tensors for `_moving`; None: rebuild
        self._shares_host = torch.zeros(64, dtype=torch.float32, pin_memory=self.pin)
        self._shares_ready: torch.cuda.Event | None = None
        self._shares: list[float] | None = None  # last step's guard shares, read lazily
        self._boards: dict[str, StatsBoard] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject bad `vllm_xargs` budgets before the request runs (HTTP 400 in `vllm serve`)."""
        args = sampling_params.extra_args
        if args and EXTRA_KEY in args:
            try:
                plan_from_args(args)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"`{EXTRA_KEY}` in extra_args is not a budgetforce plan: {e!r}") from None
            return
        try:
            budget = budget_from_xargs(args)
        except ValueError as e:  # pydantic's ValidationError is one, and reads well enough
            raise ValueError(f"invalid budget in vllm_xargs: {e}") from None
        if budget is not None and sampling_params.max_tokens is not None:
            budget.check_room(sampling_params.max_tokens, reserved=1)

    def is_argmax_invariant(self) -> bool:
        return False  # it forces and bans tokens, which moves the argmax

    # -- batch bookkeeping ----------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._drop(index)
        for index, params, prompt_ids, out_ids in batch_update.added:
            self._drop(index)
            row = self._new_row(params, prompt_ids or [], out_ids)
            if row is not None:
                self.rows[index] = row
        for a, b, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            for table in (self.rows, self._forcing, self._moving):
                va, vb = table.pop(a, None), table.pop(b, None)
                if va is not None:
                    table[b] = va  # type: ignore[index]
                if vb is not None and swap:
                    table[a] = vb  # type: ignore[index]
            self._moves = None

    def _drop(self, index: int) -> None:
        self.rows.pop(index, None)
        self._forcing.pop(index, None)
        if self._moving.pop(index, None) is not None:
            self._moves = None

    def _new_row(self, params: SamplingParams, prompt_ids: list[int], out_ids: list[int]) -> _Row | None:
        args = params.extra_args or {}
        board, slot = None, -1
        if EXTRA_KEY in args:
            plan = plan_from_args(args)
            name, slot = args[EXTRA_KEY].get("board"), args[EXTRA_KEY].get("slot", -1)
            if name is not None:
                board = self._boards.get(name) or self._boards.setdefault(name, StatsBoard(name))
        else:
            budget = budget_from_xargs(args)
            if budget is None or not budget.is_active:
                return None
            try:
                plan = self._profile.plan(budget)
            except ProfileError as e:  # never take the engine down over one request
                log.error("budget ignored: %s", e)
                return None
        if not plan.is_active:
            return None
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        return _Row(
            special=plan.special,
            ctl=ThinkingController(plan, prompt_ids),
            out=out_ids,
            greedy=params.temperature < _GREEDY_EPS,
            temperature=max(params.temperature, _GREEDY_EPS),
            rng=random.Random(seed ^ 0x5EED_F0CE),
            board=board,
            slot=slot,
        )

    @cached_property
    def _profile(self) -> Any:
        """The served model's profile, for `vllm_xargs` budgets (loaded on first use)."""
        from transformers import AutoTokenizer

        from budgetforce.profile import detect_profile

        tok = AutoTokenizer.from_pretrained(self._model)
        return detect_profile(tok, str(self._model)).resolve(tok)

    # -- the step -------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        for index, row in list(self.rows.items()):
            out = row.out
            n = len(out)
            # Fast path: one new ordinary token, and the controller said nothing can change.
            if row.quiet > 0 and n == row.seen + 1 and out[-1] not in row.special:
                row.quiet -= 1
                row.seen = n
                row.ctl.accept_quiet()
                continue
            self._step_row(index, row)
        if self._forcing:
            rows_t = self._tensor(list(self._forcing), torch.long)
            logits.index_fill_(0, rows_t, float("-inf"))
            logits.index_put_((rows_t, self._tensor(list(self._forcing.values()), torch.long)), self._zero(logits.device))
        if self._moving:
            self._move_mass(logits)
        return logits

    def _step_row(self, index: int, row: _Row) -> None:
        """Feed a row's new ids to its controller and file its next action."""
        ctl = row.ctl
        out = row.out
        while row.seen < len(out):
            token = out[row.seen]
            if token < 0:  # an async-scheduling placeholder not repaired yet
                break
            replaced = False
            if row.share_pos >= 0:
                # Posterior draw: a sampled wait token stood for the close attempts' mass with
                # probability `share`; this makes (token, branch) distributed exactly as in s1.
                if token == row.action[1]:
                    share = self._read_shares()[row.share_pos]
                    replaced = share >= 1.0 or (share > 0.0 and row.rng.random() < share)
                row.share_pos = -1
            elif row.seen < len(out) - 1 and ctl.guarding:
                # Replaying ids from before a preemption: a guarded wait token was a replacement.
                replaced = token == ctl.action()[1]
            ctl.accept(token, replaced)
            row.seen += 1
        if row.board is not None:
            now = (ctl.waits_inserted, ctl.forced_end)
            if now != row.reported:
                row.board.write(row.slot, *now)
                row.reported = now
        action = ctl.action()
        row.quiet = ctl.quiet()
        row.share_pos = -1
        if action == row.action and action[0] != Action.FORCE:
            return
        row.action = action
        kind, token = action
        self._forcing.pop(index, None)
        if self._moving.pop(index, None) is not None:
            self._moves = None
        if kind == Action.FORCE:
            self._forcing[index] = token
        elif kind in (Action.GUARD, Action.REDIRECT):
            self._moving[index] = (row, token, kind == Action.GUARD)
            self._moves = None
        elif ctl.phase is Phase.ANSWERING:
            del self.rows[index]  # answering freely: nothing left to enforce

    def _read_shares(self) -> list[float]:
        """Last step's guard shares (read once a step, after vLLM has synced on the sampled ids)."""
        if self._shares is None:
            if self._shares_ready is not None:
                self._shares_ready.synchronize()  # long done by now
            self._shares = self._shares_host.tolist()
        return self._shares

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype, pin_memory=self.pin)
        return t.to(self.device, non_blocking=True)

    @staticmethod
    @functools.cache
    def _zero(device: torch.device) -> torch.Tensor:
        return torch.zeros((), device=device)

    def _move_mass(self, logits: torch.Tensor) -> None:
        """Ban each moving row's source tokens and move their probability mass onto its target.

        Guard rows: sources are the close attempts, the target the first wait token. Redirect
        rows: sources are EOS, the target the close. Mass moves at the row's temperature
        (greedy rows: the target's logit becomes the max). Each guard row also sends back its
        share: P(the target, if sampled, stands for a source) = p_sources / (p_sources + p_target),
        exactly 0 or 1 for greedy rows. Only these few columns are touched: no vocabulary pass.
        The index tensors are rebuilt only when a row starts or stops moving.
        """
        if self._moves is None:
            self._moves = self._prepare_moves()
        rows, cols, pad, temp, inv_temp, greedy, mode, guards = self._moves
        picked = logits[rows, cols]
        target, sources = picked[:, 0], picked[:, 1:] + pad
        if mode != "sampled":
            g_mass = sources.amax(1)
            g_merged, g_share = torch.maximum(target, g_mass), (g_mass > target).float()
        if mode != "greedy":
            t_scaled = target * inv_temp
            s_mass = torch.logsumexp(sources * inv_temp[:, None], 1)
            s_merged, s_share = torch.logaddexp(t_scaled, s_mass) * temp, torch.sigmoid(s_mass - t_scaled)
        if mode == "greedy":
            merged, share = g_merged, g_share
        elif mode == "sampled":
            merged, share = s_merged, s_share
        else:
            merged, share = torch.where(greedy, g_merged, s_merged), torch.where(greedy, g_share, s_share)
        logits[rows[:, 1:], cols[:, 1:]] = float("-inf")
        logits[rows[:, 0], cols[:, 0]] = merged
        self._shares = None
        if guards:
            n = len(self._moving)
            if self._shares_host.numel() < n:
                self._shares_host = torch.zeros(max(64, 2 * n), dtype=torch.float32, pin_memory=self.pin)
            self._shares_host[:n].copy_(share, non_blocking=True)
            if self.device.type == "cuda":
                self._shares_ready = torch.cuda.Event()
                self._shares_ready.record()
            for row, pos in guards:
                row.share_pos = pos

    def _prepare_moves(self) -> tuple:
        moves = list(self._moving.items())
        sources = [tuple(sorted(r.ctl.plan.close_attempts if g else r.ctl.plan.eos)) for _, (r, _, g) in moves]
        k = max(len(s) for s in sources)
        cols = [[t, *s, *[s[0]] * (k - len(s))] for (_, (_, t, _)), s in zip(moves, sources)]
        pad = [[0.0] * len(s) + [float("-inf")] * (k - len(s)) for s in sources]
        greedy_flags = [r.greedy for _, (r, _, _) in moves]
        mode = "greedy" if all(greedy_flags) else "sampled" if not any(greedy_flags) else "mixed"
        temps = [r.temperature for _, (r, _, _) in moves]
        return (
            self._tensor([i for i, _ in moves], torch.long)[:, None].expand(-1, k + 1),
            self._tensor(cols, torch.long),
            self._tensor(pad, torch.float32),
            self._tensor(temps, torch.float32),
            self._tensor([1.0 / t for t in temps], torch.float32),
            self._tensor(greedy_flags, torch.bool),
            mode,
            [(r, p) for p, (_, (r, _, g)) in enumerate(moves) if g],
        )


class StatsBoard:
    """Per-request forcing stats shared from the engine process back to the frontend.

    Waits are decided on the device and only the processor learns of them, so it writes each
    request's (waits_inserted, forced_end) into a slot of a shared-memory table the frontend
    reads when the request ends. A slot is two little-endian int64s.
    """

    SLOT_BYTES = 16

    def __init__(self, name: str | None = None, slots: int = 65536) -> None:
        from multiprocessing import shared_memory

        create = name is None
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=slots * self.SLOT_BYTES)
        self._owner = create
        self.slots = self._shm.size // self.SLOT_BYTES
        self._free = list(range(self.slots - 1, -1, -1)) if create else []

    @property
    def name(self) -> str:
        return self._shm.name

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeError("too many budgeted requests in flight for the stats board")
        slot = self._free.pop()
        self.write(slot, 0, False)
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def write(self, slot: int, waits: int, forced_end: bool) -> None:
        struct.pack_into("<qq", self._shm.buf, slot * self.SLOT_BYTES, waits, int(forced_end))

    def read(self, slot: int) -> tuple[int, bool]:
        waits, forced = struct.unpack_from("<qq", self._shm.buf, slot * self.SLOT_BYTES)
        return waits, bool(forced)

    def close(self) -> None:
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:  # an engine process's resource tracker got there first
                pass
