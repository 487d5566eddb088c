"""`ForcingSlots.step` as one Triton kernel: one program per logits row, scalar state, a few column writes.

The rules are `slots._consume` and `slots._decide` line for line (tests/test_slots_kernel.py
runs both on the same random batches under Triton's interpreter). A row without a budget
returns at its first load, so requests without a budget cost one tiny program each; there is
no host sync and no pass over the vocabulary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from budgetforce.controller import Action, Phase
from budgetforce.draws import SCHEDULE_SALT
from budgetforce.slots import FORCE_LOGIT, NF, NS, F, ForcingSlots

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
    state_ptr, seq_ptr, seq_len_ptr, start_ptr, close_ptr, ban_ptr, brk_ptr, temp_ptr, stats_ptr,
    NF_: tl.constexpr, NSRC: tl.constexpr, LS: tl.constexpr, LTS: tl.constexpr, LCA: tl.constexpr,
    LB: tl.constexpr, LBR: tl.constexpr, NW: tl.constexpr,
    SRC_END: tl.constexpr, SRC_CLOSE: tl.constexpr, SRC_IVN: tl.constexpr, NS_: tl.constexpr,
    HAS_STATS: tl.constexpr, WINDOW: tl.constexpr, FORCE_VALUE: tl.constexpr, SALT: tl.constexpr,
    HAS_MODES: tl.constexpr,
    FREE: tl.constexpr, FORCE: tl.constexpr, GUARD: tl.constexpr, REDIRECT: tl.constexpr, BAN: tl.constexpr,
    BEFORE: tl.constexpr, THINKING: tl.constexpr, CLOSING: tl.constexpr, ANSWERING: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    key = tl.load(row_keys_ptr + r).to(tl.int64)
    if key >= 0:
        sp = state_ptr + key * NF_
        on = tl.load(sp + 0)
        phase = tl.load(sp + 1)
        think = tl.load(sp + 2)
        waits = tl.load(sp + 3)
        min_t = tl.load(sp + 4)
        max_t = tl.load(sp + 5)
        max_w = tl.load(sp + 6)
        qsrc = tl.load(sp + 7)
        qpos = tl.load(sp + 8)
        smatch = tl.load(sp + 9)
        just = tl.load(sp + 10)
        act = tl.load(sp + 11)
        atok = tl.load(sp + 12)
        dec = tl.load(sp + 13)
        seen = tl.load(sp + 14)
        forced = tl.load(sp + 15)
        nwait = tl.load(sp + 16)
        klo = tl.load(sp + 17)
        khi = tl.load(sp + 18)
        fail = tl.load(sp + 19)
        tslen = tl.load(sp + 20)
        greedy = tl.load(sp + 22)
        budg = 1  # without modes every row is budgeted and nothing below them is compiled in
        modes = 0
        if HAS_MODES:
            budg = tl.load(sp + 25)
            modes = tl.load(sp + 39)
        # the modes' state, loaded only for rows that use them (an s1 row pays one load for all)
        ivat = 0
        ivdone = 1
        if (modes & 2) != 0:
            ivat = tl.load(sp + 26)
            ivdone = tl.load(sp + 27)
        maxa = 2147483647
        ans = 0
        aend = 0
        if (modes & 4) != 0:
            maxa = tl.load(sp + 28)
            ans = tl.load(sp + 29)
            aend = tl.load(sp + 30)
        alpha = 0
        p24 = 0
        decay = 0
        sched = 0
        if (modes & 8) != 0:
            alpha = tl.load(sp + 31)
            p24 = tl.load(sp + 32)
            decay = tl.load(sp + 33)
            sched = tl.load(sp + 34)
        exited = 1
        exit_ok = 0
        if (modes & 16) != 0:
            exited = tl.load(sp + 35)
            exit_ok = tl.load(sp + 38)
        seqp = seq_ptr + key * NSRC * LS
        lenp = seq_len_ptr + key * NSRC
        cap = close_ptr + key * LCA
        te0 = tl.load(cap)
        close_rest = tl.load(lenp + SRC_CLOSE)
        ivn_len = 0
        if (modes & 2) != 0:
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
                if (phase == THINKING) | ((modes & 4) != 0):
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
                        if ((modes & 4) != 0) & (phase != THINKING) & (qsrc == SRC_END) & (qpos >= close_rest + 1):
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
                elif (phase == ANSWERING) & ((modes & 4) != 0):
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
            if qsrc >= 0:
                act = FORCE
                atok = tl.load(seqp + qsrc * LS + tl.minimum(qpos, LS - 1))
                tl.store(lrow + atok, FORCE_VALUE)
            elif (phase == ANSWERING) & (ans >= maxa):
                act = FORCE
                atok = aend
                tl.store(lrow + atok, FORCE_VALUE)
            elif phase == THINKING:
                if (modes & 1) != 0:
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
        tl.store(sp + 0, on)
        tl.store(sp + 1, phase)
        tl.store(sp + 2, think)
        tl.store(sp + 3, waits)
        tl.store(sp + 7, qsrc)
        tl.store(sp + 8, qpos)
        tl.store(sp + 9, smatch)
        tl.store(sp + 10, just)
        tl.store(sp + 11, act)
        tl.store(sp + 12, atok)
        tl.store(sp + 13, dec)
        tl.store(sp + 14, seen)
        tl.store(sp + 15, forced)
        tl.store(sp + 19, fail)
        if (modes & 2) != 0:
            tl.store(sp + 27, ivdone)
        if (modes & 4) != 0:
            tl.store(sp + 29, ans)
        if (modes & 8) != 0:
            tl.store(sp + 34, sched)
        if (modes & 16) != 0:
            tl.store(sp + 35, exited)
        if HAS_STATS:
            stp = stats_ptr + key * NS_
            tl.store(stp + 0, tl.load(sp + 23))
            tl.store(stp + 1, tl.load(sp + 24))
            tl.store(stp + 2, seen)
            tl.store(stp + 3, waits)
            tl.store(stp + 4, act)
            tl.store(stp + 5, atok)
            tl.store(stp + 6, dec)
            tl.store(stp + 7, fail)
            if (modes & 8) != 0:
                tl.store(stp + 8, sched)
            if (modes & 16) != 0:
                tl.store(stp + 9, exited)


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
        slots.state, slots.seq, slots.seq_len, slots.start, slots.close, slots.ban, slots.brk, slots.temp, stats,
        NF_=NF, NSRC=slots.seq.shape[1], LS=slots.seq.shape[2], LTS=slots.start.shape[1], LCA=slots.close.shape[1],
        LB=slots.ban.shape[1], LBR=slots.brk.shape[1], NW=slots.seq.shape[1] - 3,
        SRC_END=slots.src_end, SRC_CLOSE=slots.src_close, SRC_IVN=slots.src_ivn, NS_=NS,
        HAS_STATS=slots.stats is not None, WINDOW=window, FORCE_VALUE=FORCE_LOGIT, SALT=SCHEDULE_SALT,
        HAS_MODES=bool(slots.uses),  # a second compiled variant once any request has used a mode
        FREE=_FREE, FORCE=_FORCE, GUARD=_GUARD, REDIRECT=_REDIRECT, BAN=_BAN,
        BEFORE=_BEFORE, THINKING=_THINKING, CLOSING=_CLOSING, ANSWERING=_ANSWERING,
        num_warps=1,
    )
