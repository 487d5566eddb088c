"""`ForcingSlots.step` as one Triton kernel: one program per logits row, scalar state, a few column writes.

The rules are `slots._consume` and `slots._decide` line for line (tests/test_slots_kernel.py
runs both on the same random batches under Triton's interpreter). A row without a budget
returns at its first load, so requests without a budget cost one tiny program each; there is
no host sync and no pass over the vocabulary.
"""

# ruff: noqa: F821 - F_*, S_* and MODE_* are made below from budgetforce.core.layout (one declaration of the layout)
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from budgetforce.core.controller import Action, Phase
from budgetforce.core.draws import SCHEDULE_SALT
from budgetforce.core.layout import FORCE_LOGIT, NF, NS, F, Mode, S

if TYPE_CHECKING:
    from budgetforce.vllm.slots import ForcingSlots

# The layout's names as kernel constants (`F_PHASE`, `S_WAITS`, `MODE_NOWAIT`, ...): the kernel reads
# the state table through them, so a column moves in budgetforce.core.layout alone.
globals().update({f"F_{m.name}": tl.constexpr(int(m)) for m in F})
globals().update({f"S_{m.name}": tl.constexpr(int(m)) for m in S})
globals().update({f"MODE_{m.name}": tl.constexpr(int(m)) for m in Mode})

_FREE, _FORCE, _GUARD, _REDIRECT, _BAN = (int(a) for a in (Action.FREE, Action.FORCE, Action.GUARD, Action.REDIRECT, Action.BAN))
_BEFORE, _THINKING, _CLOSING, _ANSWERING = (int(p) for p in (Phase.BEFORE, Phase.THINKING, Phase.CLOSING, Phase.ANSWERING))


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _u24(klo, khi, pos):
    x = _mix32(khi.to(tl.uint32) ^ _mix32((pos * 2 + 1).to(tl.uint32)))
    x = _mix32(x ^ klo.to(tl.uint32))
    return x >> 8


@triton.jit
def _step_kernel(
    logits_ptr, logits_stride,
    row_keys_ptr, hist_ptr, hist_stride, row_hist_ptr, row_base_ptr, row_len_ptr,
    state_ptr, seq_ptr, seq_len_ptr, start_ptr, close_ptr, ban_ptr, brk_ptr, xbrk_ptr, temp_ptr, stats_ptr, vocab,
    NF_: tl.constexpr, NSRC: tl.constexpr, LS: tl.constexpr, LTS: tl.constexpr, LCA: tl.constexpr,
    LB: tl.constexpr, LBR: tl.constexpr, NW: tl.constexpr,
    SRC_END: tl.constexpr, SRC_CLOSE: tl.constexpr, SRC_IVN: tl.constexpr, NS_: tl.constexpr,
    HAS_STATS: tl.constexpr, WINDOW: tl.constexpr, FORCE_VALUE: tl.constexpr, SALT: tl.constexpr,
    HAS_MODES: tl.constexpr, BLOCK_V: tl.constexpr,
    FREE: tl.constexpr, FORCE: tl.constexpr, GUARD: tl.constexpr, REDIRECT: tl.constexpr, BAN: tl.constexpr,
    BEFORE: tl.constexpr, THINKING: tl.constexpr, CLOSING: tl.constexpr, ANSWERING: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    key = tl.load(row_keys_ptr + r).to(tl.int64)
    if key >= 0:
        sp = state_ptr + key * NF_
        on = tl.load(sp + F_ON)
        phase = tl.load(sp + F_PHASE)
        think = tl.load(sp + F_THINK)
        waits = tl.load(sp + F_WAITS)
        min_t = tl.load(sp + F_MIN)
        max_t = tl.load(sp + F_MAXT)
        max_w = tl.load(sp + F_MAXW)
        qsrc = tl.load(sp + F_QSRC)
        qpos = tl.load(sp + F_QPOS)
        smatch = tl.load(sp + F_SMATCH)
        just = tl.load(sp + F_JUST)
        act = tl.load(sp + F_ACT)
        atok = tl.load(sp + F_ATOK)
        dec = tl.load(sp + F_DEC)
        seen = tl.load(sp + F_SEEN)
        forced = tl.load(sp + F_FORCED)
        nwait = tl.load(sp + F_NWAIT)
        klo = tl.load(sp + F_KLO)
        khi = tl.load(sp + F_KHI)
        fail = tl.load(sp + F_FAIL)
        tslen = tl.load(sp + F_TSLEN)
        greedy = tl.load(sp + F_GREEDY)
        budg = 1  # without modes every row is budgeted and nothing below them is compiled in
        modes = 0
        if HAS_MODES:
            budg = tl.load(sp + F_BUDG)
            modes = tl.load(sp + F_MODES)
        # the modes' state, loaded only for rows that use them (an s1 row pays one load for all)
        ivat = 0
        ivdone = 1
        if (modes & MODE_INTERVENTION) != 0:
            ivat = tl.load(sp + F_IVAT)
            ivdone = tl.load(sp + F_IVDONE)
        maxa = 2147483647
        ans = 0
        aend = 0
        if (modes & MODE_ANSWER_BUDGET) != 0:
            maxa = tl.load(sp + F_MAXA)
            ans = tl.load(sp + F_ANS)
            aend = tl.load(sp + F_AEND)
        alpha = 0
        p24 = 0
        decay = 0
        sched = 0
        if (modes & MODE_SCHEDULED_WAITS) != 0:
            alpha = tl.load(sp + F_ALPHA)
            p24 = tl.load(sp + F_P24)
            decay = tl.load(sp + F_DECAY)
            sched = tl.load(sp + F_SCHED)
        exited = 0
        exit_ok = 0
        if (modes & (MODE_EARLY_EXIT | MODE_MARGIN_EXIT)) != 0:
            exited = tl.load(sp + F_EXITED)
        if (modes & MODE_EARLY_EXIT) != 0:
            exit_ok = tl.load(sp + F_EXITOK)
        atbrk = 0
        margin = 0.0
        if (modes & MODE_MARGIN_EXIT) != 0:
            atbrk = tl.load(sp + F_ATBRK)
            margin = tl.load(sp + F_MARGIN).to(tl.float32, bitcast=True)
        seqp = seq_ptr + key * NSRC * LS
        lenp = seq_len_ptr + key * NSRC
        cap = close_ptr + key * LCA
        te0 = tl.load(cap)
        close_rest = tl.load(lenp + SRC_CLOSE)
        ivn_len = 0
        if (modes & MODE_INTERVENTION) != 0:
            ivn_len = tl.load(lenp + SRC_IVN)

        # 1. consume the committed tokens this row has not seen
        hrow = tl.load(row_hist_ptr + r).to(tl.int64)
        if WINDOW:
            base = -seen.to(tl.int64)  # the row's new tokens start at column 0
            n_new = tl.load(row_len_ptr + r).to(tl.int32)
        else:
            base = tl.load(row_base_ptr + r).to(tl.int64)
            n_new = tl.load(row_len_ptr + r).to(tl.int32) - seen
        for _j in range(0, n_new):
            if on == 1:
                tok = tl.load(hist_ptr + hrow * hist_stride + base + seen).to(tl.int32)
                is_eos = 0
                if (phase == THINKING) | ((modes & MODE_ANSWER_BUDGET) != 0):
                    for c in tl.static_range(1, LCA):
                        v = tl.load(cap + c)
                        is_eos = is_eos | ((v == tok) & (v >= 0)).to(tl.int32)
                bad = 0
                counted = 0
                plain = 0
                if qsrc >= 0:
                    expected = tl.load(seqp + qsrc * LS + tl.minimum(qpos, LS - 1))
                    if tok != expected:
                        bad = 1
                    else:
                        if ((modes & MODE_ANSWER_BUDGET) != 0) & (phase != THINKING) & (qsrc == SRC_END) & (qpos >= close_rest + 1):
                            ans += 1  # a token of the forced answer prefix
                        qpos += 1
                        done = qpos >= tl.load(lenp + qsrc)
                        if phase == THINKING:
                            think += 1
                            counted = 1
                            just = (done & (qsrc < SRC_END)).to(tl.int32)
                        else:
                            if done:
                                phase = ANSWERING
                        if done:
                            qsrc = -1
                elif phase == BEFORE:
                    if tok == tl.load(start_ptr + key * LTS + tl.minimum(smatch, LTS - 1)):
                        smatch += 1
                    else:
                        smatch = (tok == tl.load(start_ptr + key * LTS)).to(tl.int32)
                    if smatch == tslen:
                        phase = THINKING
                        counted = 1
                elif phase == THINKING:
                    is_close0 = (tok == te0).to(tl.int32)
                    close_attempt = is_close0 | (is_eos & budg)
                    replaced = (act == GUARD) & (dec == 1) & (tok == atok)
                    if (just == 1) & ((is_close0 | is_eos) == 1) & (replaced == 0):
                        bad = 1
                    just = 0
                    if bad == 0:
                        if replaced:
                            wi = waits % nwait
                            wlen = tl.load(lenp + wi)
                            waits += 1
                            think += 1
                            counted = 1
                            qpos = 1
                            if wlen > 1:
                                qsrc = wi
                            else:
                                just = 1
                        elif close_attempt == 1:
                            qpos = 0
                            if close_rest > 0:
                                qsrc = SRC_CLOSE
                                phase = CLOSING
                            else:
                                phase = ANSWERING
                        elif is_eos == 0:
                            think += 1
                            counted = 1
                            plain = 1
                elif (phase == ANSWERING) & ((modes & MODE_ANSWER_BUDGET) != 0):
                    if is_eos == 0:
                        ans += 1
                if (counted == 1) & (bad == 0) & (phase == THINKING) & (think >= max_t):
                    qsrc = SRC_END
                    qpos = 0
                    forced = 1
                    just = 0
                    phase = CLOSING
                if (plain == 1) & (phase == THINKING) & (qsrc < 0) & (alpha > 0) & (think < alpha):
                    is_break = 0
                    for c in tl.static_range(LBR):
                        v = tl.load(brk_ptr + key * LBR + c)
                        is_break = is_break | ((v == tok) & (v >= 0)).to(tl.int32)
                    if is_break == 1:
                        u24 = _u24(klo ^ SALT, khi, seen).to(tl.int64)
                        hit = u24 < p24.to(tl.int64)
                        if decay == 1:
                            hit = u24 * alpha.to(tl.int64) < p24.to(tl.int64) * (alpha - think).to(tl.int64)
                        if hit:
                            qsrc = sched % nwait
                            qpos = 0
                            sched += 1
                if (modes & MODE_MARGIN_EXIT) != 0:  # a free exit break: the margin is tested on this step's logits
                    atbrk = 0
                    if plain == 1:
                        for c in tl.static_range(LBR):
                            v = tl.load(xbrk_ptr + key * LBR + c)
                            atbrk = atbrk | ((v == tok) & (v >= 0)).to(tl.int32)
                if (bad == 0) & (phase == THINKING) & (qsrc < 0) & (ivdone == 0) & (ivn_len > 0) & (think >= ivat):
                    qsrc = SRC_IVN
                    qpos = 0
                    ivdone = 1
                if bad == 1:
                    on = 0
                    fail = 1
                seen += 1
            # an inert row's later tokens are not consumed (as in the torch path)

        # 2. decide and apply this step's action
        lrow = logits_ptr + r * logits_stride
        act = FREE
        atok = -1
        dec = 0
        if on == 1:
            if HAS_STATS:
                if (exit_ok == 1) & (phase == THINKING) & (exited == 0):
                    exit_ok = tl.load(stats_ptr + key * NS_ + 10)  # the frontend's flag, read only when it may act
                if (exit_ok == 1) & (phase == THINKING) & (exited == 0):
                    qsrc = SRC_END  # the frontend's early exit
                    qpos = 0
                    forced = 1
                    exited = 1
                    just = 0
                    phase = CLOSING
            if (modes & MODE_MARGIN_EXIT) != 0:
                if (atbrk == 1) & (phase == THINKING) & (qsrc < 0) & (just == 0) & (think >= min_t) & (exited == 0):
                    top = -float("inf")  # the one pass over the vocabulary, at a break only
                    for v0 in range(0, vocab, BLOCK_V):
                        offs = v0 + tl.arange(0, BLOCK_V)
                        top = tl.maximum(top, tl.max(tl.load(lrow + offs, mask=offs < vocab, other=-float("inf")), 0))
                    if top - tl.load(lrow + te0) <= margin:  # the logit-margin exit
                        qsrc = SRC_END
                        qpos = 0
                        forced = 1
                        exited = 1
                        phase = CLOSING
            if qsrc >= 0:
                act = FORCE
                atok = tl.load(seqp + qsrc * LS + tl.minimum(qpos, LS - 1))
                tl.store(lrow + atok, FORCE_VALUE)
            elif (phase == ANSWERING) & (ans >= maxa):
                act = FORCE
                atok = aend
                tl.store(lrow + atok, FORCE_VALUE)
            elif phase == THINKING:
                if (modes & MODE_NOWAIT) != 0:
                    for c in tl.static_range(LB):  # NoWait: banned tokens inside a free thinking
                        v = tl.load(ban_ptr + key * LB + c)
                        if v >= 0:
                            tl.store(lrow + v, -float("inf"))
                quench = (alpha > 0) & (think >= alpha)
                moving = 1
                if just == 1:
                    act = BAN
                elif (think < min_t) & (waits < max_w):
                    act = GUARD
                    atok = tl.load(seqp + (waits % nwait) * LS)
                elif (budg == 1) | quench:
                    act = REDIRECT
                    atok = te0
                else:
                    moving = 0
                if moving == 1:
                    t = tl.load(temp_ptr + key)
                    tgt = tl.load(lrow + tl.maximum(atok, 0))
                    m = tgt / t
                    smax = -float("inf")
                    for c in tl.static_range(LCA):
                        v = tl.load(cap + c)
                        use = (v >= 0) & (((c > 0) & (budg == 1)) | (act != REDIRECT))
                        if use:
                            lv = tl.load(lrow + v)
                            smax = tl.maximum(smax, lv)
                            m = tl.maximum(m, lv / t)
                    if (act == REDIRECT) & quench:
                        for c in tl.static_range(NW):
                            if c < nwait:
                                lv = tl.load(lrow + tl.load(seqp + c * LS))
                                smax = tl.maximum(smax, lv)
                                m = tl.maximum(m, lv / t)
                    total = tl.exp(tgt / t - m)
                    for c in tl.static_range(LCA):
                        v = tl.load(cap + c)
                        use = (v >= 0) & (((c > 0) & (budg == 1)) | (act != REDIRECT))
                        if use:
                            total += tl.exp(tl.load(lrow + v) / t - m)
                            tl.store(lrow + v, -float("inf"))
                    if (act == REDIRECT) & quench:
                        for c in tl.static_range(NW):
                            if c < nwait:
                                v = tl.load(seqp + c * LS)
                                lv = tl.load(lrow + v)
                                if lv > -float("inf"):  # a wait string repeated in the rotation counts once
                                    total += tl.exp(lv / t - m)
                                tl.store(lrow + v, -float("inf"))
                    both = m + tl.log(total)
                    if act != BAN:
                        if greedy == 1:
                            tl.store(lrow + atok, tl.maximum(tgt, smax))
                        else:
                            tl.store(lrow + atok, both * t)
                    if act == GUARD:
                        share = 1.0 - tl.exp(tgt / t - both)
                        if greedy == 1:
                            share = (smax > tgt).to(tl.float32)
                        u = _u24(klo, khi, seen).to(tl.float32) * (1.0 / 16777216.0)
                        dec = (u < share).to(tl.int32)
        tl.store(sp + F_ON, on)
        tl.store(sp + F_PHASE, phase)
        tl.store(sp + F_THINK, think)
        tl.store(sp + F_WAITS, waits)
        tl.store(sp + F_QSRC, qsrc)
        tl.store(sp + F_QPOS, qpos)
        tl.store(sp + F_SMATCH, smatch)
        tl.store(sp + F_JUST, just)
        tl.store(sp + F_ACT, act)
        tl.store(sp + F_ATOK, atok)
        tl.store(sp + F_DEC, dec)
        tl.store(sp + F_SEEN, seen)
        tl.store(sp + F_FORCED, forced)
        tl.store(sp + F_FAIL, fail)
        if (modes & MODE_INTERVENTION) != 0:
            tl.store(sp + F_IVDONE, ivdone)
        if (modes & MODE_ANSWER_BUDGET) != 0:
            tl.store(sp + F_ANS, ans)
        if (modes & MODE_SCHEDULED_WAITS) != 0:
            tl.store(sp + F_SCHED, sched)
        if (modes & (MODE_EARLY_EXIT | MODE_MARGIN_EXIT)) != 0:
            tl.store(sp + F_EXITED, exited)
        if (modes & MODE_MARGIN_EXIT) != 0:
            tl.store(sp + F_ATBRK, atbrk)
        if HAS_STATS:
            stp = stats_ptr + key * NS_
            tl.store(stp + S_NONCE_LO, tl.load(sp + F_NONCE_LO))
            tl.store(stp + S_NONCE_HI, tl.load(sp + F_NONCE_HI))
            tl.store(stp + S_SEEN, seen)
            tl.store(stp + S_WAITS, waits)
            tl.store(stp + S_ACT, act)
            tl.store(stp + S_ATOK, atok)
            tl.store(stp + S_DEC, dec)
            tl.store(stp + S_FAIL, fail)
            if (modes & MODE_SCHEDULED_WAITS) != 0:
                tl.store(stp + S_SCHED, sched)
            if (modes & (MODE_EARLY_EXIT | MODE_MARGIN_EXIT)) != 0:
                tl.store(stp + S_EXITED, exited)


def step_cuda(
    slots: ForcingSlots,
    logits: torch.Tensor,
    row_keys: torch.Tensor,
    history: torch.Tensor,
    row_hist: torch.Tensor,
    row_base: torch.Tensor,
    row_len: torch.Tensor,
    window: bool = False,
) -> None:
    """`ForcingSlots.step` in one launch (CUDA, or Triton's interpreter on CPU tensors)."""
    b = logits.shape[0]
    if b == 0:
        return
    stats = slots.stats if slots.stats is not None else slots.state
    _step_kernel[(b,)](
        logits, logits.stride(0),
        row_keys, history, history.stride(0), row_hist, row_base, row_len,
        slots.state, slots.seq, slots.seq_len, slots.start, slots.close, slots.ban, slots.brk, slots.xbrk, slots.temp,
        stats, logits.shape[1],
        NF_=NF, NSRC=slots.seq.shape[1], LS=slots.seq.shape[2], LTS=slots.start.shape[1], LCA=slots.close.shape[1],
        LB=slots.ban.shape[1], LBR=slots.brk.shape[1], NW=slots.seq.shape[1] - 3,
        SRC_END=slots.src_end, SRC_CLOSE=slots.src_close, SRC_IVN=slots.src_ivn, NS_=NS,
        HAS_STATS=slots.stats is not None, WINDOW=window, FORCE_VALUE=FORCE_LOGIT, SALT=SCHEDULE_SALT,
        HAS_MODES=bool(slots.uses),  # a second compiled variant once any request has used a mode
        BLOCK_V=1024,
        FREE=_FREE, FORCE=_FORCE, GUARD=_GUARD, REDIRECT=_REDIRECT, BAN=_BAN,
        BEFORE=_BEFORE, THINKING=_THINKING, CLOSING=_CLOSING, ANSWERING=_ANSWERING,
        num_warps=1,
    )
