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
import os
import random
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from budgetforce.budget import (  # XARG_FIELDS: a budget's `vllm_xargs` keys, shared with the serving layer
    EARLY_EXIT_MESSAGE,
    PROBE_FIELDS,
    XARG_FIELDS,  # noqa: F401 - re-exported
    Budget,
    BudgetError,
    xarg_budget_fields,
)
from budgetforce.controller import Action, ForcingPlan
from budgetforce.profile import ProfileError
from budgetforce.slots import FAIL_ADMISSION, FAIL_STEP, NS, ForcingSlots, S, prepare_step, seed_key

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)

EXTRA_KEY = "budgetforce"  # SamplingParams.extra_args[EXTRA_KEY] holds a serialised ForcingPlan
NONCE_KEY = "budgetforce_nonce"  # set on vllm_xargs budgets at admission: a request's identity
BOARD_NAME_KEY = "budgetforce_board"  # vllm_xargs a frontend layer may add: its StatsBoard's name
BOARD_KEY_KEY = "budgetforce_key"  # ... and the row it acquired there (with `NONCE_KEY` as its nonce)
BOARD_ENV = "BUDGETFORCE_STATS_BOARD"  # the one board name a `vllm_xargs` request may name (set by the server)
PROFILE_ENV = "BUDGETFORCE_PROFILE"  # a profile name overriding detection for `vllm_xargs` budgets
# The n choices of one request share its extra_args (one nonce) but get seeds seed+i from vLLM:
# the processor keys state by (nonce, seed), so each choice has its own budget state. Unseeded
# n > 1 requests need a seed from the frontend (the budget layer adds one).
XARGS_CHILD_SAFE = True
BOARD_KEYS = 8192  # keys the frontend hands out (FIFO); a key is reused only after all others
OWN_KEYS = 4096  # keys the processor hands out itself (vllm_xargs requests)
CAPACITY = BOARD_KEYS + OWN_KEYS


def plan_to_args(plan: ForcingPlan, board: str | None = None, key: int = -1, nonce: int = 0) -> dict[str, Any]:
    """Serialise a plan for `SamplingParams.extra_args` (plain lists survive msgspec).

    ``board``/``key``/``nonce`` name the `StatsBoard` row where the processor reports stats.
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
            "banned": sorted(plan.banned),
            "intervention": list(plan.intervention),
            "intervention_at": plan.intervention_at,
            "max_answer": plan.max_answer,
            "alpha_moment": plan.alpha_moment,
            "wait_probability": plan.wait_probability,
            "wait_decay": plan.wait_decay,
            "breaks": sorted(plan.breaks),
            "answer_end": plan.answer_end,
            "early_exit": plan.early_exit,
            "board": board,
            "key": key,
            "nonce": nonce or random.getrandbits(62),
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
        banned=frozenset(a.get("banned", ())),
        intervention=tuple(a.get("intervention", ())),
        intervention_at=int(a.get("intervention_at", 0)),
        max_answer=a.get("max_answer"),
        alpha_moment=int(a.get("alpha_moment", 0)),
        wait_probability=float(a.get("wait_probability", 0.0)),
        wait_decay=bool(a.get("wait_decay", True)),
        breaks=frozenset(a.get("breaks", ())),
        answer_end=int(a.get("answer_end", -1)),
        early_exit=bool(a.get("early_exit", False)),
    )


def budget_from_xargs(extra_args: dict[str, Any] | None) -> Budget | None:
    """A `Budget` from a stock `vllm serve` request's `vllm_xargs`, or None when it sets none.

    The fields arrive flat (strings, numbers, lists); a single string where a list belongs is a
    one-element list (`budgetforce.budget.xarg_budget_fields`).
    """
    fields = xarg_budget_fields(extra_args)
    return Budget.model_validate(fields) if fields else None


def _split(n: int) -> tuple[int, int]:
    return n & 0x7FFFFFFF, (n >> 31) & 0x7FFFFFFF


@dataclass(slots=True)
class Admitted:
    """What a processor needs to know of one budgeted request."""

    key: int
    nonce: int
    plan: ForcingPlan
    temperature: float
    seed: int
    board: str | None
    identity: tuple  # (nonce, the request's seed): one per choice of an n > 1 request


class Admission:
    """Request admission shared by both runners' adapters: plans, keys, nonces and the slots.

    The slots are created on the first budgeted request (the device is known by then).
    """

    def _admission_init(self, vllm_config: Any, device: torch.device) -> None:
        prepare_step(device)  # a broken install stops the engine here, not under load
        self.device = device
        model_config = getattr(vllm_config, "model_config", None)
        self._model = model_config.tokenizer if model_config is not None else None
        try:
            self._vocab = int(model_config.get_vocab_size()) if model_config is not None else None
        except Exception:  # noqa: BLE001 - a config without a vocabulary size: ids are not range-checked
            self._vocab = None
        self.slots: ForcingSlots | None = None
        self._board: StatsBoard | None = None
        self._board_name: str | None = None
        self._own_next = 0
        self._own: dict[tuple, int] = {}  # (nonce, seed) -> own key, bounded
        self._holder: dict[int, tuple] = {}  # key -> the (nonce, seed) whose state it holds
        self.unforced = 0  # requests that could not be forced (each logged once)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject bad `vllm_xargs` budgets before the request runs (HTTP 400 in `vllm serve`).

        A valid budget gets a nonce here, in the frontend: the request's identity, which lets
        a preempted and resumed request find its state again. An answer budget without a maximum
        gets its derived maximum here too (`Budget.with_answer_room`), written back into the args.
        Early exit (`probe_*`) is refused: it needs budgetforce's own engine loop.
        """
        args = sampling_params.extra_args
        if args and EXTRA_KEY in args:
            try:
                plan_from_args(args)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"`{EXTRA_KEY}` in extra_args is not a budgetforce plan: {e!r}") from None
            return
        probe = next((k for k in PROBE_FIELDS if args and k in args), None)
        if probe is not None:
            raise ValueError(EARLY_EXIT_MESSAGE.format(param=probe))
        try:
            budget = budget_from_xargs(args)
        except ValueError as e:  # pydantic's ValidationError is one, and reads well enough
            raise ValueError(f"invalid budget in vllm_xargs: {e}") from None
        if budget is None:
            return
        assert args is not None
        reserved = cls._reserved_tokens(budget)  # raises for strings the tokenizer cannot carry
        if sampling_params.max_tokens is not None:
            fitted = budget.with_answer_room(sampling_params.max_tokens, reserved)
            if fitted.max_thinking_tokens != budget.max_thinking_tokens:
                args["max_thinking_tokens"] = fitted.max_thinking_tokens  # what the engine's admission reads
            fitted.check_room(sampling_params.max_tokens, reserved=reserved)
        args.setdefault(NONCE_KEY, random.getrandbits(62))

    @classmethod
    def _reserved_tokens(cls, budget: Budget) -> int:
        """Tokens forced after a maximum (close + answer prefix); the profile's when it is known.

        Raises `BudgetError` (a `PlanError`) for a budget whose strings the tokenizer cannot carry
        (too many banned tokens, a long intervention): a 400 rather than a request run unforced.
        """
        profile = _frontend_profile()
        if profile is None:
            return 1
        try:
            return profile.plan(budget).forced_end_length
        except BudgetError:
            raise
        except ProfileError:
            return 1

    def _admit(self, params: SamplingParams) -> Admitted | None:
        """The request's plan and key, or None (no budget, or one that cannot be forced)."""
        args = params.extra_args or {}
        temperature = float(params.temperature)
        seed = params.seed if params.seed is not None else random.getrandbits(62)
        try:
            if EXTRA_KEY in args:  # budgetforce's own engine: its board is trusted (it made the plan)
                a = args[EXTRA_KEY]
                plan = plan_from_args(args)
                key, nonce, board = int(a.get("key", -1)), int(a.get("nonce", 0)), a.get("board")
            else:
                budget = budget_from_xargs(args)
                if budget is None or not budget.is_active:
                    return None
                plan = self._profile.plan(budget)
                nonce = int(args.get(NONCE_KEY) or random.getrandbits(62))
                key, board = int(args.get(BOARD_KEY_KEY, -1)), args.get(BOARD_NAME_KEY)
                if board is not None and board != os.environ.get(BOARD_ENV):
                    # only the board the server named at start: a client must not make the engine
                    # open (and write into) shared memory of its choosing
                    board = None
        except Exception as e:  # noqa: BLE001 - never take the engine down over one request
            self._unforced(f"budget ignored: {e!r}", args)
            return None
        if not plan.is_active:
            return None
        if self._vocab is not None and max(plan.token_ids(), default=-1) >= self._vocab:
            # an id past the logits' width would write outside them (on CUDA: a fault for everyone)
            self._unforced(f"a forced or banned token id is not below the vocabulary size {self._vocab}", args)
            return None
        identity = (nonce, params.seed)
        if board is not None and self._board_name not in (None, board):
            log.warning("budgetforce: one stats board per engine; %s is not %s: stats absent", board, self._board_name)
            board = None
        holder = self._holder.get(key) if board is not None and 0 <= key < BOARD_KEYS else None
        if board is None or not 0 <= key < BOARD_KEYS or (holder is not None and holder[0] == nonce and holder != identity):
            # no board row, or another choice of the same request holds it: an engine-side key, no stats
            key, board = self._own_key(identity), None
        return Admitted(key, nonce, plan, temperature, seed, board, identity)

    def _own_key(self, identity: tuple) -> int:
        key = self._own.get(identity)
        if key is None:
            key = BOARD_KEYS + self._own_next
            self._own_next = (self._own_next + 1) % OWN_KEYS
            self._own[identity] = key
            if len(self._own) > OWN_KEYS:  # forget the oldest (dicts keep insertion order)
                self._own.pop(next(iter(self._own)))
        return key

    def _slots_for(self, board: str | None) -> ForcingSlots:
        if self.slots is None:
            self.slots = ForcingSlots(CAPACITY, self.device)
        if board is not None and board != self._board_name:
            self._board_name = board
            self._board = StatsBoard.attach(board)
            self.slots.stats = self._board.device_view(self.device) if self._board is not None else None
        return self.slots

    def _settle(self, adm: Admitted, live: bool) -> None:
        """A request whose key a live row of the *same* identity holds is a twin (the prompts of one
        completion request share one params object): it gets a key of its own, without stats."""
        if live and self._holder.get(adm.key) == adm.identity:
            adm.identity = (*adm.identity, random.getrandbits(32))
            adm.key, adm.board = self._own_key(adm.identity), None

    def _is_resume(self, adm: Admitted) -> bool:
        """Whether this request's state already sits under its key (a preempted request resuming)."""
        return self._holder.get(adm.key) == adm.identity

    def _load(self, adm: Admitted, prompt_ids: list[int] | None) -> bool:
        slots = self._slots_for(adm.board)
        seed_words = seed_key(adm.seed, prompt_ids) if prompt_ids is not None else _split(adm.seed)
        if not slots.load(adm.key, adm.plan, adm.temperature, seed_words, prompt_ids, _split(adm.nonce)):
            self._unforced("budget does not fit the processor's tables")
            if adm.board is not None:
                self._mark_board(adm.key, adm.nonce)
            return False
        self._holder[adm.key] = adm.identity
        return True

    def _unforced(self, why: str, args: dict[str, Any] | None = None) -> None:
        """One request runs unforced: logged, counted, and said on its stats row where it has one."""
        self.unforced += 1
        log.warning("budgetforce: a request runs unforced: %s", why)
        _count_unforced()
        if args and args.get(BOARD_NAME_KEY) == os.environ.get(BOARD_ENV) and BOARD_KEY_KEY in args:
            try:
                self._slots_for(args[BOARD_NAME_KEY])
                self._mark_board(int(args[BOARD_KEY_KEY]), int(args[NONCE_KEY]))
            except Exception:  # noqa: BLE001 - the response then says nothing of the budget's fate
                pass

    def _mark_board(self, key: int, nonce: int) -> None:
        """Write `FAIL_ADMISSION` on a request's stats row (from the host: the row is shared memory)."""
        if self._board is not None and 0 <= key < BOARD_KEYS:
            row = torch.zeros(NS, dtype=torch.int32)
            row[S.NONCE_LO], row[S.NONCE_HI] = _split(nonce)
            row[S.FAIL] = FAIL_ADMISSION
            self._board.table[key] = row

    def _step_failed(self, error: Exception, keys: list[int]) -> None:
        """A failure outside `ForcingSlots.step` (the adapter's own indexing): its rows turn inert."""
        if self.slots is None:
            return
        self.slots.failures.record(error)
        for key in keys:
            if key >= 0:
                try:
                    self.slots.fail(int(key), FAIL_STEP)
                except Exception:  # noqa: BLE001
                    pass

    @cached_property
    def _profile(self) -> Any:
        """The served model's profile, for `vllm_xargs` budgets (loaded on first use)."""
        from transformers import AutoTokenizer

        from budgetforce.profile import detect_profile

        from budgetforce.profile import get_profile

        tok = AutoTokenizer.from_pretrained(self._model)
        name = os.environ.get(PROFILE_ENV)
        profile = get_profile(name) if name else detect_profile(tok, str(self._model))
        return profile.resolve(tok)


_FRONTEND_PROFILE: list[Any] = []  # the profile admission checks against in this process


def set_frontend_profile(profile: Any) -> None:
    """Tell admission which model it serves (a `ResolvedProfile`), for exact room checks."""
    _FRONTEND_PROFILE[:] = [profile]


def _frontend_profile() -> Any:
    """The served model's profile in the frontend process, if known (see `set_frontend_profile`)."""
    if not _FRONTEND_PROFILE:
        try:  # vLLM's frontend sets its config as current in some versions
            from transformers import AutoTokenizer
            from vllm.config import get_current_vllm_config

            from budgetforce.profile import detect_profile

            name = get_current_vllm_config().model_config.tokenizer
            tok = AutoTokenizer.from_pretrained(name)
            _FRONTEND_PROFILE.append(detect_profile(tok, str(name)).resolve(tok))
        except Exception:  # noqa: BLE001 - unknown here: the check falls back to one forced token
            _FRONTEND_PROFILE.append(None)
    return _FRONTEND_PROFILE[0]


def _count_unforced() -> None:
    try:
        from prometheus_client import Counter, REGISTRY

        counter = REGISTRY._names_to_collectors.get("budgetforce_unforced_requests_total")  # noqa: SLF001
        if counter is None:
            counter = Counter("budgetforce_unforced_requests", "Budgeted requests that ran unforced (see the log)")
        counter.inc()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - metrics are best effort inside the engine
        pass


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


def _lock_dir() -> str:
    """Where the boards' lock files live: beside the shared memory where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else __import__("tempfile").gettempdir()


def _fresh(out: list[int], handed: int) -> list[int]:
    """Output ids not yet handed to the device, up to the first async-scheduling placeholder."""
    new = out[handed:]
    for i, t in enumerate(new):
        if t < 0:
            return new[:i]
    return new


class StatsBoard:
    """Per-request forcing stats, shared from the engine process back to the frontend.

    A shared-memory int32 table, one row per request key (`slots.S` columns: nonce, tokens
    consumed, waits, the pending action and decision). The frontend hands keys out round robin
    with a fresh nonce; the processor writes the row every step (on CUDA through a mapped device
    view, so the write lands before vLLM returns the step's tokens). A reader whose nonce does
    not match sees no stats rather than someone else's. Where the engine cannot open the board
    (another node), stats are absent and responses say so.

    Several API server processes (`--api-server-count N`) share one board: behind the table sit
    a lease per key (the holding process's pid) and a cursor, and `acquire` takes a key under an
    exclusive file lock, so no two processes ever hold one key. A dead process's leases are
    reclaimed when the keys run out.
    """

    def __init__(self, name: str | None = None, capacity: int = CAPACITY, create: bool | None = None) -> None:
        from multiprocessing import shared_memory

        create = name is None if create is None else create
        size = capacity * NS * 4 + (BOARD_KEYS + 1) * 4  # the table, then the leases and the cursor
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        self._owner = create
        self.table = torch.frombuffer(self._shm.buf, dtype=torch.int32, count=capacity * NS).view(-1, NS)
        tail = np.frombuffer(self._shm.buf, dtype=np.int32, count=BOARD_KEYS + 1, offset=capacity * NS * 4) \
            if len(self._shm.buf) >= size else None  # fmt: skip
        self._leases = tail[:BOARD_KEYS] if tail is not None else None  # pid holding each key, 0: free
        self._cursor = tail[BOARD_KEYS:] if tail is not None else None
        self._lock: int | None = None
        self._registered = False

    @classmethod
    def attach(cls, name: str) -> StatsBoard | None:
        try:
            return cls(name)
        except (FileNotFoundError, OSError, ValueError) as e:
            log.warning("budgetforce: stats board %s cannot be opened here (%r): stats are absent", name, e)
            return None

    @classmethod
    def shared(cls, name: str) -> StatsBoard:
        """The board ``name`` for an API server process: created by the first, attached by the others."""
        try:
            return cls(name, create=True)
        except FileExistsError:
            return cls(name, create=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def acquire(self) -> tuple[int, int]:
        """A key (round robin over the free ones, so a key is reused late) and a fresh nonce for one request."""
        import fcntl

        assert self._leases is not None and self._cursor is not None, "a board attached by the engine hands out no keys"
        if self._lock is None:
            self._lock = os.open(os.path.join(_lock_dir(), f"{self.name.lstrip('/')}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            key = self._next_free()
            if key is None:
                self._reclaim()
                key = self._next_free()
            if key is None:
                raise RuntimeError("too many budgeted requests in flight for the stats board")
            self._leases[key] = os.getpid()
            self._cursor[0] = (key + 1) % BOARD_KEYS
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        return key, random.getrandbits(62)

    def _next_free(self) -> int | None:
        assert self._leases is not None and self._cursor is not None
        start = int(self._cursor[0])
        order = np.concatenate([np.arange(start, BOARD_KEYS), np.arange(0, start)])
        free = order[self._leases[order] == 0]
        return int(free[0]) if free.size else None

    def _reclaim(self) -> None:
        """Free the keys of API processes that have died holding them."""
        assert self._leases is not None
        for pid in set(self._leases[self._leases != 0].tolist()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self._leases[self._leases == pid] = 0
            except PermissionError:  # alive, another user's
                pass

    def release(self, key: int) -> None:
        assert self._leases is not None
        self._leases[key] = 0

    def waits(self, key: int, nonce: int, token_ids: list[int]) -> int | None:
        """Waits inserted into a finished request's ``token_ids``; None if the board lacks them."""
        row = self._row(key, nonce, token_ids)
        if row is None:
            return None
        waits = row[S.WAITS]
        if row[S.SEEN] == len(token_ids) - 1:  # the last token was sampled under the recorded action: settle it
            if row[S.ACT] == Action.GUARD and row[S.DEC] and token_ids[-1] == row[S.ATOK]:
                waits += 1
        return waits

    def scheduled_waits(self, key: int, nonce: int, token_ids: list[int]) -> int | None:
        """Scheduled waits (a wait schedule's insertions) in a finished request; None if the board lacks them.

        A wait is scheduled when its paragraph break is consumed, so the count is final once the
        break's successor has been sampled (a break as the very last token schedules nothing seen).
        """
        row = self._row(key, nonce, token_ids)
        return None if row is None else row[S.SCHED]

    def failure(self, key: int, nonce: int) -> int | None:
        """Why this request's budget stopped being forced (`slots.FAIL_*`), 0 if it is forced, None if unknown."""
        row = self.table[key].tolist()
        if (row[S.NONCE_LO], row[S.NONCE_HI]) != _split(nonce):
            return None  # the engine never wrote this request's row
        return row[S.FAIL]

    def exited(self, key: int, nonce: int) -> bool:
        """Whether the engine carried out `request_exit` for this request (it closed the thinking)."""
        row = self.table[key].tolist()
        return (row[S.NONCE_LO], row[S.NONCE_HI]) == _split(nonce) and bool(row[S.EXITED])

    def request_exit(self, key: int, nonce: int) -> bool:
        """Ask the engine to close this request's thinking at its next step (an early exit).

        False when the row is not (or no longer) this request's.
        """
        row = self.table[key]
        if (int(row[S.NONCE_LO]), int(row[S.NONCE_HI])) != _split(nonce):
            return False
        row[S.EXIT] = 1
        return True

    def _row(self, key: int, nonce: int, token_ids: list[int]) -> list[int] | None:
        """The request's row once the engine has consumed all but at most the last token; else None."""
        row = self.table[key].tolist()
        if (row[S.NONCE_LO], row[S.NONCE_HI]) != _split(nonce) or row[S.FAIL]:
            return None
        if row[S.SEEN] not in (len(token_ids), len(token_ids) - 1):
            return None
        return row

    def device_view(self, device: torch.device) -> torch.Tensor | None:
        """The table as the processor writes it: itself on the CPU, a mapped view on CUDA."""
        if device.type != "cuda":
            return self.table
        try:
            ptr, nbytes = self.table.data_ptr(), self.table.numel() * 4
            rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 2)  # cudaHostRegisterMapped
            if int(rc) != 0:
                raise RuntimeError(f"cudaHostRegister returned {rc}")
            self._registered = True

            class _View:  # UVA: the registered host address is valid on the device
                __cuda_array_interface__ = {
                    "shape": tuple(self.table.shape), "typestr": "<i4", "data": (ptr, False),
                    "version": 3, "strides": None,
                }

            return torch.as_tensor(_View(), device=device)
        except Exception as e:  # noqa: BLE001
            log.warning("budgetforce: cannot map the stats board into device memory (%r): stats are absent", e)
            return None

    def close(self) -> None:
        if self._registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.table.data_ptr())
            except Exception:  # noqa: BLE001
                pass
        del self.table
        self._leases = self._cursor = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self._owner:  # the creator leaves no lock file behind
            try:
                os.unlink(os.path.join(_lock_dir(), f"{self.name.lstrip('/')}.lock"))
            except FileNotFoundError:
                pass
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:  # an engine process's resource tracker got there first
                pass
