"""The device layout of the forcing state: its columns, mode bits and failure codes, declared once.

`budgetforce.vllm.slots` (torch) and `budgetforce.vllm.slots_kernel` (Triton, as named constexprs) both read
the state table through these names, and the frontend reads the stats table through `S`; nothing
here imports torch, so the serving layer can name a failure without loading the engine's side.

Example:
    >>> int(F.FAIL), int(S.FAIL), FAIL_REASONS[FAIL_STEP]
    (19, 7, 'step_failed')
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

INT32_MAX = 2**31 - 1
FORCE_LOGIT = 1.0e9  # as vLLM's own thinking budget: the forced token wins under any temperature


class F(IntEnum):
    """Columns of the int32 state table, one row per request key."""

    ON = 0  # 1: budgeted and healthy; 0: inert
    PHASE = 1
    THINK = 2
    WAITS = 3
    MIN = 4
    MAXT = 5  # INT32_MAX: no maximum
    MAXW = 6  # INT32_MAX: no limit
    QSRC = 7  # forced sequence being written (-1: none); see `Src`
    QPOS = 8
    SMATCH = 9  # think_start tokens matched so far (phase BEFORE)
    JUST = 10  # a wait string was just completed: ban close attempts once
    ACT = 11  # the action applied at the last step
    ATOK = 12  # its token (the forced token, or the GUARD/REDIRECT target)
    DEC = 13  # GUARD: whether a sampled target stands for a close (the posterior draw)
    SEEN = 14  # completion tokens consumed
    FORCED = 15
    NWAIT = 16
    KLO = 17  # counter-RNG key (two 31-bit words)
    KHI = 18
    FAIL = 19
    TSLEN = 20
    NCA = 21  # close attempts in the CA table (think_end[0] first, then EOS ids)
    GREEDY = 22
    NONCE_LO = 23
    NONCE_HI = 24
    BUDG = 25  # an s1 budget (min or max): an end-of-sequence inside the thinking closes it
    IVAT = 26  # thinking tokens before the intervention is forced
    IVDONE = 27
    MAXA = 28  # answer tokens before end-of-sequence is forced (INT32_MAX: no limit)
    ANS = 29  # answer tokens so far (a forced answer prefix included, EOS excluded)
    AEND = 30  # the end-of-sequence id forced at MAXA
    ALPHA = 31  # scheduled waits before this many thinking tokens, waits turn into closes after; 0: off
    P24 = 32  # scheduled-wait probability in units of 2**-24
    DECAY = 33  # 1: the probability falls linearly to 0 at ALPHA
    SCHED = 34  # scheduled waits inserted
    EXITED = 35  # an early exit closed the thinking (the frontend's, or the logit margin)
    NBAN = 36  # banned tokens in the ban table
    NBRK = 37  # paragraph-break tokens in the break table
    EXITOK = 38  # the frontend may close the thinking early (the plan's early exit)
    MODES = 39  # the modes the row uses (`Mode` bits): the kernel loads and stores nothing for the others
    MARGIN = 40  # the logit-margin exit's margin, float32 bits (nats)
    ATBRK = 41  # 1: the last consumed token was a free exit break (the margin is tested on this step's logits)
    NXBRK = 42  # exit-break tokens in the exit-break table


NF = 43


class Mode(IntFlag):
    """The modes beyond s1 a row uses (`F.MODES` bits): the kernel touches no other mode's state.

    Named as the request's modes (`budgetforce.core.budget.Mode`, upper-cased): `Mode["NOWAIT"]`.
    """

    NOWAIT = 1
    INTERVENTION = 2
    ANSWER_BUDGET = 4
    SCHEDULED_WAITS = 8
    EARLY_EXIT = 16
    MARGIN_EXIT = 32


class S(IntEnum):
    """Columns of the stats table the frontend reads (shared memory)."""

    NONCE_LO = 0
    NONCE_HI = 1
    SEEN = 2
    WAITS = 3
    ACT = 4
    ATOK = 5
    DEC = 6
    FAIL = 7
    SCHED = 8
    EXITED = 9  # an early exit (agreeing probes, or the logit margin) closed the thinking
    EXIT = 10  # written by the frontend: close this request's thinking now (an early exit)


NS = 11
# Why a row stopped being forced (its `F.FAIL` and `S.FAIL`; 0: it is forced)
FAIL_BLOCKED = 1  # a forced token did not come out (the user's logit bias, a stop rule)
FAIL_STEP = 2  # the forcing step failed for this row (logged once per kind, counted)
FAIL_ADMISSION = 3  # admitted but not forceable (set by the adapter on the request's stats row)
FAIL_REASONS = {FAIL_BLOCKED: "forced_token_blocked", FAIL_STEP: "step_failed", FAIL_ADMISSION: "not_loaded"}


def enforcement(failure: int | None, thinking: int, max_thinking: int | None) -> tuple[bool | None, str | None]:
    """Whether a finished request's budget was forced: ``(enforced, reason)`` for its report.

    ``failure`` is its stats row's `FAIL` code (None: no row, nobody can tell). The engine's own
    reason comes first, since it names the cause; otherwise thinking past the maximum, seen on
    the ids, is `max_exceeded` whatever the engine says.

    Example:
        >>> enforcement(0, 50, 50), enforcement(FAIL_STEP, 90, 50), enforcement(None, 51, 50)
        ((True, None), (False, 'step_failed'), (False, 'max_exceeded'))
    """
    if failure:
        return False, FAIL_REASONS.get(failure, "unknown")
    if max_thinking is not None and thinking > max_thinking:
        return False, "max_exceeded"
    return (True, None) if failure == 0 else (None, None)
NS_ENGINE = 10  # the columns the step writes (EXIT belongs to the frontend)
