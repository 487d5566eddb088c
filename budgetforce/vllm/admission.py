"""Request admission shared by both runners' adapters: plans, keys, nonces and the slots.

`Admission.validate_params` runs in vLLM's frontend (a bad `vllm_xargs` budget is its 400);
`_admit` runs in the engine when a request enters the batch and never raises: a request that
cannot be forced runs unforced, with one log line, a Prometheus counter and, where the request
has a stats-board row, `FAIL_ADMISSION` on it.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from budgetforce.core.budget import EARLY_EXIT_MESSAGE, PROBE_FIELDS, Budget, BudgetError
from budgetforce.core.controller import ForcingPlan
from budgetforce.core.layout import FAIL_ADMISSION, FAIL_STEP, NS, S
from budgetforce.core.profile import ProfileError
from budgetforce.vllm.slots import ForcingSlots, count_event, prepare_step, seed_key
from budgetforce.vllm.stats_board import StatsBoard
from budgetforce.vllm.wire import (
    BOARD_ENV, BOARD_KEY_KEY, BOARD_KEYS, BOARD_NAME_KEY, CAPACITY, EXTRA_KEY, NONCE_KEY, OWN_KEYS, PROFILE_ENV,
    budget_from_xargs, plan_from_args,
)  # fmt: skip
from budgetforce.vllm.wire import split_words as _split

if TYPE_CHECKING:
    from vllm import SamplingParams

log = logging.getLogger(__name__)


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
    ``engine_plans`` False leaves budgetforce's own engine plans alone (`vllm_xargs` budgets only):
    a plan belongs to the processor budgetforce's engine names, not to a second one beside it.
    """

    engine_plans = True

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
        Early exit (`probe_*`) is refused unless a frontend that probes (the budget layer) gave the
        request its stats-board row, where its probes close the thinking.
        """
        args = sampling_params.extra_args
        if args and EXTRA_KEY in args:
            try:
                plan_from_args(args)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"`{EXTRA_KEY}` in extra_args is not a budgetforce plan: {e!r}") from None
            return
        probe = next((k for k in PROBE_FIELDS if args and k in args), None)
        if probe is not None and not (args.get(BOARD_NAME_KEY) and BOARD_KEY_KEY in args):
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
        if EXTRA_KEY in args and not self.engine_plans:
            return None
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
        count_event("budgetforce_unforced_requests", "Budgeted requests that ran unforced (see the log)")
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

        from budgetforce.core.profile import detect_profile, get_profile

        tok = AutoTokenizer.from_pretrained(self._model)
        name = os.environ.get(PROFILE_ENV)
        profile = get_profile(name) if name else detect_profile(tok, str(self._model))
        return profile.resolve(tok)


_FRONTEND_PROFILE: list[Any] = []  # a cache of the served model's profile in this process (detected once)


def _frontend_profile() -> Any:
    """The served model's profile in vLLM's frontend process, if vLLM's config tells the model (a budget
    layer in front has already checked room with the exact profile; this is for `vllm_xargs` alone)."""
    if not _FRONTEND_PROFILE:
        try:  # vLLM's frontend sets its config as current in some versions
            from transformers import AutoTokenizer
            from vllm.config import get_current_vllm_config

            from budgetforce.core.profile import detect_profile

            name = get_current_vllm_config().model_config.tokenizer
            tok = AutoTokenizer.from_pretrained(name)
            _FRONTEND_PROFILE.append(detect_profile(tok, str(name)).resolve(tok))
        except Exception:  # noqa: BLE001 - unknown here: the check falls back to one forced token
            _FRONTEND_PROFILE.append(None)
    return _FRONTEND_PROFILE[0]

