"""Per-request forcing state as device tensors: the controller's rules, vectorised over a batch.

`ThinkingController` (controller.py) is the specification: one request, one token at a time, on
the host. `ForcingSlots` holds the same state for many requests as rows of tensors that live on
the engine's device, keyed by a *request key* that survives preemption (a request that is
preempted and resumed finds its state where it left it). Each decoding step, `step()`:

1. consumes the tokens committed since the last step (normally one per row), advancing phase,
   thinking count, waits used and the position in the forced-token table;
2. settles last step's posterior draw: a sampled wait token stood for the close attempts with
   probability `share`; the draw ``u < share`` was made on the device with a counter-based hash
   of (request key, position), so it is reproducible, independent across requests that share
   a seed, and needs no read-back;
3. decides the next action (FREE, FORCE, GUARD, REDIRECT, BAN) and applies it to the logits with
   a few column writes per row (no pass over the vocabulary);
4. writes the request's stats row (waits, pending decision) for the frontend.

On CUDA one Triton kernel does all of this (`budgetforce.vllm.slots_kernel`); elsewhere the same rules
run as plain torch ops. Nothing here imports vLLM, and nothing raises inside `step()`: a row
whose forced token did not come out (a user's logit bias, a stop string) turns inert (`FAIL`,
counted by `count_failures`), and the request continues unforced; a step that fails is retried
row by row, and only the rows that fail alone turn inert (`FAIL_STEP`). The stats row carries the
reason to the frontend, which reports `enforced: false`.

Example (R1 ids: `</think>`=6, "Wait"=9; min 3, greedy):
    slots.load(key=0, plan, temperature=0.0, seed_key=(1, 2), prompt_ids=[..., 5])
    step 1: argmax is `</think>` -> GUARD moves its mass onto 9; 9 is sampled, DEC=1
    step 2: consumes 9 as a replaced close -> WAITS=1, THINK=1, next action BAN (no close)
"""

from __future__ import annotations

import logging

import torch

from budgetforce.core.controller import Action, ForcingPlan, Phase, ends_inside, schedule_p24
from budgetforce.core.layout import FAIL_STEP, FORCE_LOGIT, INT32_MAX, NF, NS, NS_ENGINE, F, Mode, S  # the device layout
from budgetforce.core.limits import LIMITS, TableLimits
from budgetforce.core.draws import M32, SCHEDULE_SALT, draw24, mix32

log = logging.getLogger(__name__)

GREEDY_EPS = 1e-5  # vLLM's threshold for greedy rows


class ForcingSlots:
    """The state of up to ``capacity`` budgeted requests, on ``device``.

    Args:
        capacity: request keys (rows of every table).
        device: where the state lives (the engine's device).
        stats: an int32 tensor [capacity, NS] the frontend can read (shared memory on the
            host; on CUDA a device view of it), or None when stats cannot be shared.
    """

    def __init__(
        self, capacity: int, device: torch.device, stats: torch.Tensor | None = None, limits: TableLimits = LIMITS
    ) -> None:
        self.capacity = capacity
        self.device = device
        self.limits = limits
        w, ls = limits.wait_strings, limits.forced_tokens
        self.src_end = w  # think_end + answer_prefix (a forced end)
        self.src_close = w + 1  # think_end[1:] (a natural close)
        self.src_ivn = w + 2  # the intervention
        self.state = torch.zeros(capacity, NF, dtype=torch.int32, device=device)
        self.seq = torch.zeros(capacity, w + 3, ls, dtype=torch.int32, device=device)
        self.seq_len = torch.zeros(capacity, w + 3, dtype=torch.int32, device=device)
        self.start = torch.full((capacity, limits.start_tokens), -1, dtype=torch.int32, device=device)
        self.close = torch.full((capacity, limits.close_attempts), -1, dtype=torch.int32, device=device)
        self.ban = torch.full((capacity, limits.banned_tokens), -1, dtype=torch.int32, device=device)
        self.brk = torch.full((capacity, limits.break_tokens), -1, dtype=torch.int32, device=device)
        self.xbrk = torch.full((capacity, limits.break_tokens), -1, dtype=torch.int32, device=device)  # exit breaks
        self.temp = torch.ones(capacity, dtype=torch.float32, device=device)
        self.stats = stats
        self.kernel = True  # the Triton kernel on CUDA; False after it failed once (torch path)
        self.failures = StepFailures()
        self._staged: dict[int, tuple] = {}
        # which modes any request has used: the torch path skips the others' work (a host flag, no sync)
        self.uses: set[Mode] = set()

    # -- host side: requests come and go ---------------------------------------------------
    def load(
        self,
        key: int,
        plan: ForcingPlan,
        temperature: float,
        seed_key: tuple[int, int],
        prompt_ids: list[int] | None,
        nonce: tuple[int, int] = (0, 0),
    ) -> bool:
        """Stage a fresh request's state under ``key``; False (with a log line) if it cannot be forced.

        ``prompt_ids`` decide whether the completion starts inside the thinking; None leaves
        that to `open_from_history` (runner V2, where the prompt lives on the device).
        """
        why = self.limits.check(plan)
        if why is not None:
            log.warning("budget not forced (runs unforced): `%s`: %s", *why)
            return False
        row = [0] * NF
        row[F.ON] = 1
        inside = prompt_ids is not None and ends_inside(prompt_ids, plan.think_start, plan.think_end)
        row[F.PHASE] = int(Phase.THINKING if inside else Phase.BEFORE)
        row[F.MIN] = plan.min_thinking
        row[F.MAXT] = INT32_MAX if plan.max_thinking is None else plan.max_thinking
        row[F.MAXW] = INT32_MAX if plan.max_waits is None else plan.max_waits
        row[F.QSRC] = -1
        row[F.NWAIT] = max(len(plan.waits), 1)
        row[F.KLO], row[F.KHI] = seed_key
        row[F.TSLEN] = len(plan.think_start)
        row[F.NCA] = 1 + len(plan.eos)
        row[F.GREEDY] = int(temperature < GREEDY_EPS)
        row[F.NONCE_LO], row[F.NONCE_HI] = nonce
        row[F.BUDG] = int(plan.is_budgeted)
        row[F.IVAT] = plan.intervention_at
        row[F.MAXA] = INT32_MAX if plan.max_answer is None else plan.max_answer
        row[F.AEND] = plan.end_of_answer
        row[F.ALPHA] = plan.alpha_moment
        row[F.P24] = schedule_p24(plan.wait_probability)
        row[F.DECAY] = int(plan.wait_decay)
        row[F.NBAN], row[F.NBRK] = len(plan.banned), len(plan.breaks)
        row[F.EXITOK] = int(plan.early_exit)
        row[F.MARGIN] = float_bits(plan.exit_margin or 0.0)
        row[F.NXBRK] = len(plan.exit_breaks)
        row[F.MODES] = (
            Mode.NOWAIT * bool(plan.banned) | Mode.INTERVENTION * bool(plan.intervention)
            | Mode.ANSWER_BUDGET * (plan.max_answer is not None) | Mode.SCHEDULED_WAITS * (plan.alpha_moment > 0)
            | Mode.EARLY_EXIT * plan.early_exit | Mode.MARGIN_EXIT * (plan.exit_margin is not None)
        )  # fmt: skip
        if inside and plan.max_thinking == 0:  # a zero budget closes before the first token
            row[F.QSRC], row[F.FORCED], row[F.PHASE] = self.src_end, 1, int(Phase.CLOSING)
        elif inside and plan.intervention and plan.intervention_at == 0:  # the thinking opens with it
            row[F.QSRC], row[F.IVDONE] = self.src_ivn, 1
        lim = self.limits
        w, ls = lim.wait_strings, lim.forced_tokens
        seq = [[0] * ls for _ in range(w + 3)]
        seq_len = [0] * (w + 3)
        for i, ids in enumerate(plan.waits):
            seq[i][: len(ids)], seq_len[i] = list(ids), len(ids)
        end = list(plan.think_end) + list(plan.answer_prefix)
        seq[self.src_end][: len(end)], seq_len[self.src_end] = end, len(end)
        rest = list(plan.think_end[1:])
        seq[self.src_close][: len(rest)], seq_len[self.src_close] = rest, len(rest)
        ivn = list(plan.intervention)
        seq[self.src_ivn][: len(ivn)], seq_len[self.src_ivn] = ivn, len(ivn)
        start = list(plan.think_start) + [-1] * (lim.start_tokens - len(plan.think_start))
        close = [plan.think_end[0], *sorted(plan.eos)]
        close += [-1] * (lim.close_attempts - len(close))
        ban = sorted(plan.banned) + [-1] * (lim.banned_tokens - len(plan.banned))
        brk = sorted(plan.breaks) + [-1] * (lim.break_tokens - len(plan.breaks))
        xbrk = sorted(plan.exit_breaks) + [-1] * (lim.break_tokens - len(plan.exit_breaks))
        self._staged[key] = (row, seq, seq_len, start, close, ban, brk, xbrk, max(temperature, GREEDY_EPS))
        self.uses |= {m for m in Mode if row[F.MODES] & m}
        return True

    def disable(self, key: int) -> None:
        """Make ``key`` inert (its request left, or another request took the key over)."""
        self._staged.pop(key, None)
        self.state[key, F.ON] = 0

    def flush(self) -> None:
        """Write the staged rows to the device in one go (a handful of copies per batch of adds)."""
        if not self._staged:
            return
        keys = list(self._staged)
        rows, seq, seq_len, start, close, ban, brk, xbrk, temp = zip(*self._staged.values())
        self._staged.clear()
        pin = self.device.type == "cuda"

        def put(table: torch.Tensor, values: object, dtype: torch.dtype) -> None:
            src = torch.tensor(values, dtype=dtype, pin_memory=pin).to(self.device, non_blocking=True)
            table.index_copy_(0, idx, src)

        idx = torch.tensor(keys, dtype=torch.long, pin_memory=pin).to(self.device, non_blocking=True)
        put(self.state, rows, torch.int32)
        put(self.seq, seq, torch.int32)
        put(self.seq_len, seq_len, torch.int32)
        put(self.start, start, torch.int32)
        put(self.close, close, torch.int32)
        put(self.ban, ban, torch.int32)
        put(self.brk, brk, torch.int32)
        put(self.xbrk, xbrk, torch.int32)
        put(self.temp, temp, torch.float32)
        if self.stats is not None:
            init = torch.zeros(len(keys), NS, dtype=torch.int32)
            init[:, S.NONCE_LO] = torch.tensor([r[F.NONCE_LO] for r in rows], dtype=torch.int32)
            init[:, S.NONCE_HI] = torch.tensor([r[F.NONCE_HI] for r in rows], dtype=torch.int32)
            init[:, S.ACT] = int(Action.FREE)
            self.stats.index_copy_(0, idx.to(self.stats.device), init.to(self.stats.device))

    def open_from_history(
        self, keys: torch.Tensor, history: torch.Tensor, rows: torch.Tensor, prompt_len: torch.Tensor
    ) -> None:
        """Runner V2: set each new key's phase from its prompt on the device (no host sync).

        A prompt that ends inside an opened thinking span starts the completion in THINKING.
        ``history[rows[i], :prompt_len[i]]`` is key ``keys[i]``'s prompt.
        """
        if keys.numel() == 0:
            return
        width = history.shape[1]
        pos = torch.arange(width, device=history.device)
        hist = history[rows].long()
        valid = pos[None, :] < prompt_len[:, None].long()

        def last_match(pattern: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            ok = valid.clone()
            for j in range(pattern.shape[1]):
                shifted = torch.roll(hist, -j, dims=1)
                inside_pat = j < n
                ok &= (shifted == pattern[:, j : j + 1].long()) | ~inside_pat[:, None]
                ok &= (pos[None, :] + j < prompt_len[:, None]) | ~inside_pat[:, None]
            return torch.where(ok, pos[None, :], -1).amax(1)

        start = self.start[keys]
        tslen = self.state[keys, F.TSLEN]
        last_start = last_match(start, tslen)
        ends = self.seq[keys, self.src_end]  # think_end is the head of the forced-end sequence
        te_len = (self.seq_len[keys, self.src_close] + 1).long()
        last_end = last_match(ends, te_len)
        inside = (last_start >= 0) & (last_end < last_start)
        st = self.state[keys]
        # the load left the raw seed in the key words: mix in the prompt (as `seed_key` does on the host)
        ids = torch.where(valid, hist, -1)
        digest = prompt_digest(ids, digest_weights(width, history.device))
        seed = st[:, F.KLO].long() + (st[:, F.KHI].long() << 31)
        klo, khi = key_words(seed, digest)
        st[:, F.KLO], st[:, F.KHI] = klo.int(), khi.int()
        zero_max = inside & (st[:, F.MAXT] == 0)
        opens_ivn = inside & ~zero_max & (self.seq_len[keys, self.src_ivn] > 0) & (st[:, F.IVAT] == 0)
        st[:, F.PHASE] = torch.where(inside, int(Phase.THINKING), st[:, F.PHASE])
        st[:, F.QSRC] = torch.where(opens_ivn, self.src_ivn, st[:, F.QSRC])
        st[:, F.IVDONE] = torch.where(opens_ivn, 1, st[:, F.IVDONE])
        st[:, F.QSRC] = torch.where(zero_max, self.src_end, st[:, F.QSRC])
        st[:, F.FORCED] = torch.where(zero_max, 1, st[:, F.FORCED])
        st[:, F.PHASE] = torch.where(zero_max, int(Phase.CLOSING), st[:, F.PHASE])
        self.state[keys] = st

    def count_failures(self) -> int:
        return int(self.state[:, F.FAIL].sum())

    # -- device side: one decoding step ----------------------------------------------------
    def step(
        self,
        logits: torch.Tensor,
        row_keys: torch.Tensor,
        history: torch.Tensor,
        row_hist: torch.Tensor,
        row_base: torch.Tensor,
        row_len: torch.Tensor,
        window: int | None = None,
    ) -> None:
        """Advance every row on its new tokens, then apply its action to ``logits`` in place.

        Args:
            logits: [B, V] float32.
            row_keys: [B] request key per row, -1 for rows without a budget.
            history: [H, W] int token table. History mode (``window`` None, runner V2): row
                ``r``'s completion token ``j`` is ``history[row_hist[r], row_base[r] + j]`` for
                ``j < row_len[r]``, and the row consumes those it has not seen. Window mode
                (``window`` = the table's width, runner V1): ``history[row_hist[r], :row_len[r]]``
                are exactly the row's new tokens (``row_base`` unused).
        """
        try:
            self._step(logits, row_keys, history, row_hist, row_base, row_len, window)
        except Exception as e:  # noqa: BLE001 - the engine keeps serving; the failure is isolated below
            self._recover(e, logits, row_keys, history, row_hist, row_base, row_len, window)

    def _step(self, logits, row_keys, history, row_hist, row_base, row_len, window) -> None:  # noqa: ANN001
        if logits.is_cuda and self.kernel:
            from budgetforce.vllm.slots_kernel import step_cuda

            step_cuda(self, logits, row_keys, history, row_hist, row_base, row_len, window is not None)
            return
        _step_torch(self, logits, row_keys, history, row_hist, row_base, row_len, window)

    def _recover(self, error: Exception, logits, row_keys, history, row_hist, row_base, row_len, window) -> None:  # noqa: ANN001
        """A failed step: logged once per kind, counted, then retried row by row on the torch path.

        Rows that fail alone turn inert with `FAIL_STEP` (their responses say `enforced: false`);
        every other row of the batch is forced as if nothing had happened. A kernel that failed is
        not tried again in this engine: the torch path implements the same rules. This path syncs
        with the device, which only a failure pays for.
        """
        self.failures.record(error)
        self.kernel = False
        keys = row_keys.tolist()
        for r, key in enumerate(keys):
            if key < 0:
                continue
            alone = torch.full_like(row_keys, -1)
            alone[r] = key
            try:
                _step_torch(self, logits, alone, history, row_hist, row_base, row_len, window)
            except Exception as e:  # noqa: BLE001
                self.failures.record(e)
                self.fail(key, FAIL_STEP)

    def fail(self, key: int, code: int) -> None:
        """Make ``key`` inert and say why on its stats row (`FAIL_*`), where the frontend reads it."""
        self.state[key, F.ON] = 0
        self.state[key, F.FAIL] = code
        if self.stats is not None:
            self.stats[key, S.FAIL] = code


class StepFailures:
    """Failed forcing steps: a traceback once per kind of failure, a count of all of them."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def record(self, error: Exception) -> None:
        kind = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
        seen = self.kinds.get(kind, 0)
        self.kinds[kind] = seen + 1
        if seen == 0:
            log.error("budgetforce: a forcing step failed (%s); the rows it hit run unforced and their responses "
                      "say `enforced: false`; further failures of this kind are counted, not logged",
                      kind, exc_info=error)  # fmt: skip
        count_event("budgetforce_step_failures", "Forcing steps that failed (see the first traceback of each kind)")

    @property
    def total(self) -> int:
        return sum(self.kinds.values())


def count_event(name: str, doc: str) -> None:
    """A Prometheus counter of the engine process, best effort (the engine never fails over metrics)."""
    try:
        from prometheus_client import REGISTRY, Counter

        counter = REGISTRY._names_to_collectors.get(f"{name}_total")  # noqa: SLF001
        (counter if counter is not None else Counter(name, doc)).inc()  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001
        pass


def prepare_step(device: torch.device) -> None:
    """Import and compile everything the step needs on ``device``, now: a broken install stops the
    engine at start-up with a readable error instead of failing every step under load.

    On CUDA that is the Triton kernel, compiled for both token layouts and both mode variants on a
    tiny table; elsewhere the torch path, which needs nothing beyond this module.

    Raises:
        RuntimeError: the kernel cannot be imported or compiled here.
    """
    if device.type != "cuda":
        return
    try:
        from budgetforce.vllm.slots_kernel import step_cuda

        slots = ForcingSlots(2, device)
        plan = ForcingPlan(think_start=(1,), think_end=(2,), eos=frozenset({3}), waits=((4, 5),), answer_prefix=(6,),
                           min_thinking=2, max_thinking=4, max_waits=None)  # fmt: skip
        slots.load(0, plan, 1.0, (1, 2), [1])
        slots.flush()
        logits = torch.zeros(2, 8, dtype=torch.float32, device=device)
        keys = torch.tensor([0, -1], dtype=torch.int64, device=device)
        hist = torch.full((2, 4), 7, dtype=torch.int64, device=device)
        rows = torch.arange(2, dtype=torch.int64, device=device)
        ones = torch.ones(2, dtype=torch.int64, device=device)
        for modes in (set(), {Mode.NOWAIT}):
            slots.uses = modes
            step_cuda(slots, logits, keys, hist, rows, rows * 0, ones, True)
            step_cuda(slots, logits, keys, hist, rows, rows * 0, ones, False)
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - anything here means the step could not run under load
        raise RuntimeError(
            f"budgetforce cannot run its forcing step on {device}: {type(e).__name__}: {e}. "
            "The Triton kernel (budgetforce.vllm.slots_kernel) must import and compile at start-up; check that "
            "budgetforce is installed completely (pip install --force-reinstall budgetforce) and that Triton "
            "works with this torch."
        ) from e


def float_bits(x: float) -> int:
    """A float32's bits as a signed int32 (how the int32 state table holds the margin)."""
    return int(torch.tensor([x], dtype=torch.float32).view(torch.int32)[0])


# -- the counter-based RNG (identical in torch and Triton; see budgetforce.core.draws) ----------
SEED_MASK = (1 << 62) - 1  # seeds are taken modulo 2**62 (two 31-bit words)


def uniform(klo: torch.Tensor, khi: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """A uniform draw in [0, 1) per (key, position): float32."""
    return draw24(klo.long(), khi.long(), position.long()).float() * (1.0 / (1 << 24))


def key_words(seed: torch.Tensor, digest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 31-bit key words from a seed and a prompt digest (int64 tensors, same shape)."""
    a = mix32((seed & M32) ^ mix32((digest & M32) + 0x9E37))
    b = mix32(((seed >> 32) & M32) ^ mix32(((digest >> 32) & M32) + 0x79B9) ^ a)
    return a & INT32_MAX, b & INT32_MAX


_DIGEST_MOD = 1 << 20


def digest_weights(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-position weights of `prompt_digest` (below 2**20, so sums of products stay exact in int64)."""
    i = torch.arange(n, dtype=torch.int64, device=device)
    return (mix32(i + 1) % _DIGEST_MOD) + 1


def prompt_digest(prompt_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """What differs between requests that share a seed: a weighted sum of the prompt's ids.

    ``prompt_ids`` [..., L] (padding -1), ``weights`` [L]; the same on the host and the device.
    """
    ids = prompt_ids.long()
    return torch.where(ids >= 0, (ids + 1) * weights, 0).sum(-1)


def seed_key(seed: int, prompt_ids: list[int]) -> tuple[int, int]:
    """A request's RNG key words on the host (runner V1, which sees the prompt there)."""
    d = prompt_digest(torch.tensor(prompt_ids, dtype=torch.int64), digest_weights(len(prompt_ids)))
    a, b = key_words(torch.tensor(seed & SEED_MASK, dtype=torch.int64), d)
    return int(a), int(b)


# -- the torch implementation (CPU; the reference for the Triton kernel) -----------------
def _step_torch(
    slots: ForcingSlots,
    logits: torch.Tensor,
    row_keys: torch.Tensor,
    history: torch.Tensor,
    row_hist: torch.Tensor,
    row_base: torch.Tensor,
    row_len: torch.Tensor,
    window: int | None,
) -> None:
    rows = torch.nonzero(row_keys >= 0).flatten()
    if rows.numel() == 0:
        return
    keys = row_keys[rows].long()
    st = slots.state[keys]  # [R, NF] (a copy; written back at the end)
    t = _Tables(slots, keys)
    hist_rows = row_hist[rows].long()
    if window is None:
        n_new = (row_len[rows] - st[:, F.SEEN]).clamp(min=0)
        base = row_base[rows].long()
    else:
        n_new = row_len[rows].int()
    steps = int(n_new.max()) if n_new.numel() else 0
    for j in range(steps):
        live = (j < n_new) & (st[:, F.ON] == 1)
        col = j if window is not None else (base + st[:, F.SEEN]).clamp(max=history.shape[1] - 1)
        tok = history[hist_rows, col].int()
        _consume(slots, st, live, tok, t)
    exit_flag = None
    if slots.stats is not None and Mode.EARLY_EXIT in slots.uses:
        exit_flag = slots.stats[keys.to(slots.stats.device), S.EXIT].to(st.device)
    _decide(slots, st, logits, rows, t, slots.temp[keys], exit_flag)
    slots.state[keys] = st
    if slots.stats is not None:
        out = torch.stack(
            [st[:, F.NONCE_LO], st[:, F.NONCE_HI], st[:, F.SEEN], st[:, F.WAITS], st[:, F.ACT], st[:, F.ATOK],
             st[:, F.DEC], st[:, F.FAIL], st[:, F.SCHED], st[:, F.EXITED]], dim=1,
        )
        slots.stats[keys.to(slots.stats.device), :NS_ENGINE] = out.to(slots.stats.device)


class _Tables:
    """The per-key tables of the rows in this step (gathered once)."""

    def __init__(self, slots: ForcingSlots, keys: torch.Tensor) -> None:
        self.seq, self.seq_len = slots.seq[keys], slots.seq_len[keys]
        self.start, self.close = slots.start[keys], slots.close[keys]
        self.ban, self.brk, self.xbrk = slots.ban[keys], slots.brk[keys], slots.xbrk[keys]
        self.ar = torch.arange(len(keys))


def _consume(slots: ForcingSlots, st: torch.Tensor, live: torch.Tensor, tok: torch.Tensor, t: _Tables) -> None:
    """One committed token per live row: the controller's `accept`, vectorised."""
    seq, seq_len, start, close, ar = t.seq, t.seq_len, t.start, t.close, t.ar
    phase = st[:, F.PHASE].clone()  # the phase each token arrived in (the writes below must not leak)
    qsrc = st[:, F.QSRC]
    forcing = live & (qsrc >= 0)
    q = qsrc.clamp(min=0).long()
    qpos = st[:, F.QPOS].long().clamp(max=seq.shape[2] - 1)
    expected = seq[ar, q, qpos]
    bad = forcing & (tok != expected)
    ok_force = forcing & ~bad
    in_think = phase == Phase.THINKING
    new_qpos = st[:, F.QPOS] + 1
    done = new_qpos >= seq_len[ar, q]
    is_wait_src = q < slots.src_end
    # inside a wait string or an intervention (thinking), or the close and answer prefix (closing)
    think_add = ok_force & in_think
    telen = seq_len[:, slots.src_close] + 1
    answer_mode = (st[:, F.MODES] & Mode.ANSWER_BUDGET) != 0  # answer tokens are counted for answer budgets only
    prefix_tok = answer_mode & ok_force & ~in_think & (q == slots.src_end) & (st[:, F.QPOS] >= telen)
    st[:, F.ANS] += prefix_tok.int()
    st[:, F.THINK] += think_add.int()
    st[:, F.QPOS] = torch.where(ok_force, new_qpos, st[:, F.QPOS])
    st[:, F.QSRC] = torch.where(ok_force & done, -1, st[:, F.QSRC])
    st[:, F.JUST] = torch.where(think_add, (done & is_wait_src).int(), st[:, F.JUST])
    st[:, F.PHASE] = torch.where(ok_force & ~in_think & done, int(Phase.ANSWERING), st[:, F.PHASE])
    # phase BEFORE: match the think-start delimiter
    before = live & ~forcing & (phase == Phase.BEFORE)
    m = st[:, F.SMATCH].long().clamp(max=start.shape[1] - 1)
    nxt = torch.where(tok == start[ar, m], st[:, F.SMATCH] + 1, (tok == start[:, 0]).int())
    st[:, F.SMATCH] = torch.where(before, nxt, st[:, F.SMATCH])
    opened = before & (st[:, F.SMATCH] == st[:, F.TSLEN])
    st[:, F.PHASE] = torch.where(opened, int(Phase.THINKING), st[:, F.PHASE])
    # phase THINKING, free tokens
    thinking = live & ~forcing & (phase == Phase.THINKING)
    is_close = (close == tok[:, None]) & (close >= 0)
    is_eos = is_close[:, 1:].any(1)
    budg = st[:, F.BUDG] == 1
    close_attempt = is_close[:, 0] | (is_eos & budg)
    replaced = thinking & (st[:, F.ACT] == Action.GUARD) & (st[:, F.DEC] == 1) & (tok == st[:, F.ATOK])
    # a close right after a wait string was banned; if it still came (a user's bias), no forcing
    bad = bad | (thinking & (st[:, F.JUST] == 1) & is_close.any(1) & ~replaced)
    st[:, F.JUST] = torch.where(thinking, 0, st[:, F.JUST])
    wi = (st[:, F.WAITS] % st[:, F.NWAIT]).long()
    wlen = seq_len[ar, wi]
    st[:, F.WAITS] += replaced.int()
    st[:, F.THINK] += replaced.int()
    st[:, F.QSRC] = torch.where(replaced & (wlen > 1), wi.int(), st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(replaced, 1, st[:, F.QPOS])
    st[:, F.JUST] = torch.where(replaced & (wlen <= 1), 1, st[:, F.JUST])
    closing = thinking & ~replaced & close_attempt & ~bad
    has_rest = seq_len[:, slots.src_close] > 0
    st[:, F.QSRC] = torch.where(closing & has_rest, slots.src_close, st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(closing, 0, st[:, F.QPOS])
    st[:, F.PHASE] = torch.where(
        closing, torch.where(has_rest, int(Phase.CLOSING), int(Phase.ANSWERING)), st[:, F.PHASE]
    )
    plain = thinking & ~replaced & ~close_attempt & ~is_eos  # an unbudgeted row's EOS counts nothing
    st[:, F.THINK] += plain.int()
    # the maximum: inside the thinking (free token, replaced close, or a forced token)
    counted = (plain | replaced | think_add | opened) & ~bad  # a thinking opened at a zero maximum closes
    at_max = counted & (st[:, F.PHASE] == Phase.THINKING) & (st[:, F.THINK] >= st[:, F.MAXT])
    st[:, F.QSRC] = torch.where(at_max, slots.src_end, st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(at_max, 0, st[:, F.QPOS])
    st[:, F.FORCED] = torch.where(at_max, 1, st[:, F.FORCED])
    st[:, F.JUST] = torch.where(at_max, 0, st[:, F.JUST])
    st[:, F.PHASE] = torch.where(at_max, int(Phase.CLOSING), st[:, F.PHASE])
    if Mode.MARGIN_EXIT in slots.uses:  # a free exit break: the margin is tested on this step's logits
        is_xbrk = ((t.xbrk == tok[:, None]) & (t.xbrk >= 0)).any(1)
        st[:, F.ATBRK] = torch.where(live, (plain & ~bad & is_xbrk).int(), st[:, F.ATBRK])
    if Mode.SCHEDULED_WAITS in slots.uses:
        _schedule(st, tok, t, plain & ~bad)
    if Mode.INTERVENTION in slots.uses:
        _intervene(slots, st, live & ~bad, seq_len)
    # the answer: free tokens after the close, end-of-sequence excluded
    answering = answer_mode & live & ~forcing & (phase == Phase.ANSWERING) & ~is_eos
    st[:, F.ANS] += answering.int()
    # a row whose forced token did not come out runs on unforced
    st[:, F.ON] = torch.where(bad, 0, st[:, F.ON])
    st[:, F.FAIL] = torch.where(bad, 1, st[:, F.FAIL])
    st[:, F.SEEN] += live.int()


def _schedule(st: torch.Tensor, tok: torch.Tensor, t: _Tables, plain: torch.Tensor) -> None:
    """Scheduled waits: a paragraph break before the alpha moment, with the schedule's probability."""
    free_now = (st[:, F.PHASE] == Phase.THINKING) & (st[:, F.QSRC] < 0)
    alpha, think = st[:, F.ALPHA].long(), st[:, F.THINK].long()
    is_break = ((t.brk == tok[:, None]) & (t.brk >= 0)).any(1)
    u24 = draw24(st[:, F.KLO].long() ^ SCHEDULE_SALT, st[:, F.KHI].long(), st[:, F.SEEN].long())
    p24 = st[:, F.P24].long()
    hit = torch.where(st[:, F.DECAY] == 1, u24 * alpha < p24 * (alpha - think), u24 < p24)
    sched = plain & free_now & (alpha > 0) & is_break & (think < alpha) & hit
    st[:, F.QSRC] = torch.where(sched, (st[:, F.SCHED] % st[:, F.NWAIT]), st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(sched, 0, st[:, F.QPOS])
    st[:, F.SCHED] += sched.int()


def _intervene(slots: ForcingSlots, st: torch.Tensor, live: torch.Tensor, seq_len: torch.Tensor) -> None:
    """The intervention, once the thinking holds its number of tokens and nothing else is forced."""
    ivn = (
        live & (st[:, F.PHASE] == Phase.THINKING) & (st[:, F.QSRC] < 0) & (st[:, F.IVDONE] == 0)
        & (seq_len[:, slots.src_ivn] > 0) & (st[:, F.THINK] >= st[:, F.IVAT])
    )
    st[:, F.QSRC] = torch.where(ivn, slots.src_ivn, st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(ivn, 0, st[:, F.QPOS])
    st[:, F.IVDONE] = torch.where(ivn, 1, st[:, F.IVDONE])


def _margin_exit(
    slots: ForcingSlots, st: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, t: _Tables, on: torch.Tensor
) -> None:
    """The logit-margin exit (ThinkBrake): after a free exit break past the minimum, close the thinking
    when ``logit(top) - logit(close) <= margin`` on this step's logits (the controller's `margin_exit`)."""
    due = (
        on & ((st[:, F.MODES] & Mode.MARGIN_EXIT) != 0) & (st[:, F.ATBRK] == 1) & (st[:, F.PHASE] == Phase.THINKING)
        & (st[:, F.QSRC] < 0) & (st[:, F.JUST] == 0) & (st[:, F.THINK] >= st[:, F.MIN]) & (st[:, F.EXITED] == 0)
    )  # fmt: skip
    row_logits = logits[rows]
    gap = row_logits.amax(1) - row_logits[t.ar, t.close[:, 0].long().clamp(min=0)]
    margin = st[:, F.MARGIN].contiguous().view(torch.float32)
    leave = due & (gap <= margin)
    st[:, F.QSRC] = torch.where(leave, slots.src_end, st[:, F.QSRC])
    st[:, F.QPOS] = torch.where(leave, 0, st[:, F.QPOS])
    st[:, F.FORCED] = torch.where(leave, 1, st[:, F.FORCED])
    st[:, F.EXITED] = torch.where(leave, 1, st[:, F.EXITED])
    st[:, F.PHASE] = torch.where(leave, int(Phase.CLOSING), st[:, F.PHASE])


def _decide(
    slots: ForcingSlots, st: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, t: _Tables, temp: torch.Tensor,
    exit_flag: torch.Tensor | None,
) -> None:
    """The controller's `action()` per row, applied to the logits with a few column writes."""
    seq, close, ar = t.seq, t.close, t.ar
    on = st[:, F.ON] == 1
    if exit_flag is not None:  # the frontend's early exit: the close and answer prefix are forced now
        leave = on & (exit_flag == 1) & (st[:, F.EXITOK] == 1) & (st[:, F.PHASE] == Phase.THINKING) & (st[:, F.EXITED] == 0)
        st[:, F.QSRC] = torch.where(leave, slots.src_end, st[:, F.QSRC])
        st[:, F.QPOS] = torch.where(leave, 0, st[:, F.QPOS])
        st[:, F.FORCED] = torch.where(leave, 1, st[:, F.FORCED])
        st[:, F.EXITED] = torch.where(leave, 1, st[:, F.EXITED])
        st[:, F.JUST] = torch.where(leave, 0, st[:, F.JUST])
        st[:, F.PHASE] = torch.where(leave, int(Phase.CLOSING), st[:, F.PHASE])
    if Mode.MARGIN_EXIT in slots.uses:
        _margin_exit(slots, st, logits, rows, t, on)
    qsrc = st[:, F.QSRC]
    force = on & (qsrc >= 0)
    thinking = on & ~force & (st[:, F.PHASE] == Phase.THINKING)
    budg = st[:, F.BUDG] == 1
    quench = (st[:, F.ALPHA] > 0) & (st[:, F.THINK] >= st[:, F.ALPHA])
    ban = thinking & (st[:, F.JUST] == 1)
    guard = thinking & ~ban & (st[:, F.THINK] < st[:, F.MIN]) & (st[:, F.WAITS] < st[:, F.MAXW])
    redirect = thinking & ~ban & ~guard & (budg | quench)
    stop = torch.zeros_like(force)
    if Mode.ANSWER_BUDGET in slots.uses:
        stop = on & ~force & (st[:, F.PHASE] == Phase.ANSWERING) & (st[:, F.ANS] >= st[:, F.MAXA])
    force = force | stop
    forced_tok = seq[ar, qsrc.clamp(min=0).long(), st[:, F.QPOS].long().clamp(max=seq.shape[2] - 1)]
    forced_tok = torch.where(stop, st[:, F.AEND], forced_tok)
    wait_tok = seq[ar, (st[:, F.WAITS] % st[:, F.NWAIT]).long(), 0]
    target = torch.where(force, forced_tok, torch.where(guard, wait_tok, close[:, 0]))
    act = torch.full_like(qsrc, int(Action.FREE))
    act = torch.where(force, int(Action.FORCE), act)
    act = torch.where(guard, int(Action.GUARD), act)
    act = torch.where(redirect, int(Action.REDIRECT), act)
    act = torch.where(ban, int(Action.BAN), act)
    st[:, F.ACT] = act
    st[:, F.ATOK] = torch.where(force | guard | redirect, target, -1)
    st[:, F.DEC] = 0
    # NoWait: banned tokens inside a free thinking (before any mass is moved, so none moves onto them)
    if Mode.NOWAIT in slots.uses:
        banning = thinking[:, None] & (t.ban >= 0)
        logits[rows[:, None].expand_as(t.ban)[banning], t.ban.long()[banning]] = float("-inf")
    # sources: all close attempts (GUARD, BAN), or for REDIRECT end-of-sequence (a budget) and the
    # wait strings' first tokens (past the alpha moment)
    cols = close.long()
    nca = close.shape[1]
    if Mode.SCHEDULED_WAITS in slots.uses:  # past the alpha moment the wait strings' first tokens are sources too
        nw = seq.shape[1] - 3
        wait_ok = torch.arange(nw)[None, :] < st[:, F.NWAIT][:, None]
        cols = torch.cat([cols, torch.where(wait_ok, seq[:, :nw, 0], -1).long()], 1)
    valid = cols >= 0
    valid[:, 0] &= ~redirect
    valid[:, 1:nca] &= ~(redirect & ~budg)[:, None]
    if Mode.SCHEDULED_WAITS in slots.uses:
        valid[:, nca:] &= (redirect & quench)[:, None]
        # a token listed twice (a wait string repeated in the rotation) is one source
        earlier = torch.ones(cols.shape[1], cols.shape[1], dtype=torch.bool).tril(-1)
        valid &= ~((cols[:, :, None] == cols[:, None, :]) & earlier & valid[:, None, :]).any(2)
    moving = guard | redirect | ban
    sel = moving[:, None] & valid
    if bool(sel.any()):
        r = rows[:, None].expand_as(cols)
        c = cols.clamp(min=0)
        src = logits[r, c].masked_fill(~sel, float("-inf"))
        tcol = target.long().clamp(min=0)
        tgt = logits[rows, tcol]
        greedy = st[:, F.GREEDY] == 1
        lt = tgt / temp
        ls = src / temp[:, None]
        both = torch.logsumexp(torch.cat([lt[:, None], ls], 1), 1)
        merged = torch.where(greedy, torch.maximum(tgt, src.amax(1)), both * temp)
        share = torch.where(greedy, (src.amax(1) > tgt).float(), 1.0 - torch.exp(lt - both))
        share = torch.nan_to_num(share, nan=0.0)
        u = uniform(st[:, F.KLO], st[:, F.KHI], st[:, F.SEEN])
        st[:, F.DEC] = torch.where(guard, (u < share).int(), 0)
        # bans first, then the target's merged logit (the target is never a source)
        flat_r, flat_c = r[sel], c[sel]
        logits[flat_r, flat_c] = float("-inf")
        mv = guard | redirect
        logits[rows[mv], tcol[mv]] = merged[mv]
    if bool(force.any()):
        logits[rows[force], forced_tok[force].long()] = FORCE_LOGIT
