"""The per-request budget controller: s1's budget forcing as a state machine on token ids.

It knows nothing of vLLM. Each step an adapter asks `action()` what the next token may be,
lets the model sample accordingly, and reports the token back with `accept()`. The engine
strategy (a logits processor) and the rounds strategy (s1's loop) drive the same class, which
is what makes their outputs identical under greedy decoding.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from budgetforce.core.draws import SCHEDULE_SALT, draw24


class Phase(IntEnum):
    BEFORE = 0  # the thinking has not been opened yet
    THINKING = 1
    CLOSING = 2  # the end delimiter (and answer prefix) is being written
    ANSWERING = 3


class Action(IntEnum):
    """What the next token may be; `token` in `action()`'s result qualifies it."""

    FREE = 0  # anything
    FORCE = 1  # exactly `token`
    GUARD = 2  # below the minimum: a close attempt becomes `token`, the first wait token
    REDIRECT = 3  # inside a budgeted thinking: end-of-sequence (and, past the alpha moment, a wait) becomes `token`, the close
    BAN = 4  # the first free token after a wait string: no close attempt (s1 resubmits with min_tokens=1)


class ForcingError(RuntimeError):
    """The engine did not emit a token the controller forced."""


@dataclass(frozen=True, slots=True)
class ForcingPlan:
    """One request's budget in token ids (see `ResolvedProfile.plan`)."""

    think_start: tuple[int, ...]
    think_end: tuple[int, ...]
    eos: frozenset[int]
    waits: tuple[tuple[int, ...], ...] = ()
    answer_prefix: tuple[int, ...] = ()
    min_thinking: int = 0
    max_thinking: int | None = None
    max_waits: int | None = None
    # the modes beyond s1 (all off by default)
    banned: frozenset[int] = frozenset()  # never sampled while thinking (NoWait); forced tokens excepted
    intervention: tuple[int, ...] = ()  # forced into the thinking once it holds `intervention_at` tokens
    intervention_at: int = 0
    max_answer: int | None = None  # tokens after the close (a forced answer prefix included); then EOS is forced
    alpha_moment: int = 0  # scheduled waits (AlphaOne) before this many thinking tokens; 0 = off
    wait_probability: float = 0.0  # ... inserted after a `breaks` token with this probability,
    wait_decay: bool = True  # ... falling linearly to 0 at the alpha moment (False: constant)
    breaks: frozenset[int] = frozenset()  # paragraph-break tokens
    answer_end: int = -1  # the end-of-sequence id forced at `max_answer` (default: the smallest EOS id)
    early_exit: bool = False  # the frontend may close the thinking early (answer probes agreed)
    exit_margin: float | None = None  # the logit-margin exit (nats); None: off
    exit_breaks: frozenset[int] = frozenset()  # ... checked after these tokens

    @property
    def is_budgeted(self) -> bool:
        """s1's budget: a minimum or a maximum (an end-of-sequence inside the thinking closes it)."""
        return self.min_thinking > 0 or self.max_thinking is not None

    @property
    def is_active(self) -> bool:
        """Whether the plan changes anything at all (a budget or any mode)."""
        return (
            self.is_budgeted or bool(self.banned) or bool(self.intervention) or self.max_answer is not None
            or self.alpha_moment > 0 or self.early_exit or self.exit_margin is not None
        )

    @property
    def end_of_answer(self) -> int:
        return self.answer_end if self.answer_end >= 0 else min(self.eos)

    @property
    def wait_firsts(self) -> frozenset[int]:
        """First tokens of the wait strings: what a scheduled row closes on past its alpha moment."""
        return frozenset(w[0] for w in self.waits)

    @property
    def close_attempts(self) -> frozenset[int]:
        """Tokens that try to end the thinking: the close's first token and end-of-sequence."""
        return self.eos | {self.think_end[0]}

    @property
    def special(self) -> frozenset[int]:
        """Every token that can change a controller's state when it appears (see `quiet`)."""
        return (
            self.close_attempts | {w[0] for w in self.waits} | set(self.think_start) | set(self.think_end)
            | (self.breaks if self.alpha_moment > 0 else frozenset())
            | (self.exit_breaks if self.exit_margin is not None else frozenset())
        )

    def token_ids(self) -> set[int]:
        """Every id the plan forces, bans or watches for: all must lie inside the logits."""
        ids = set(self.think_start) | set(self.think_end) | set(self.eos) | set(self.answer_prefix)
        ids |= {t for w in self.waits for t in w} | set(self.banned) | set(self.intervention) | set(self.breaks)
        ids |= self.exit_breaks
        if self.max_answer is not None:
            ids.add(self.end_of_answer)
        return ids

    @property
    def forced_end_length(self) -> int:
        return len(self.think_end) + len(self.answer_prefix)


@dataclass(frozen=True, slots=True)
class ForcingStats:
    thinking_tokens: int
    waits_inserted: int
    forced_end: bool
    scheduled_waits: int = 0
    answer_tokens: int = 0
    answer_truncated: bool = False


P_ONE = 1 << 24  # probabilities in units of 2**-24, so host and device decide identically


def f32(x: float) -> float:
    """``x`` rounded to float32, the device's precision: the margin test decides alike everywhere."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def margin_holds(gap: float, margin: float) -> bool:
    """The logit-margin exit's test: ``log p(top) - log p(close) <= margin``, both in float32."""
    return f32(gap) <= f32(margin)


def schedule_p24(probability: float) -> int:
    return max(0, min(P_ONE, round(probability * P_ONE)))


def scheduled_wait(u24: int, p24: int, thinking: int, alpha: int, decay: bool) -> bool:
    """Whether a paragraph break at ``thinking`` tokens gets a scheduled wait (integer arithmetic).

    ``u24`` is the draw (uniform below 2**24); the probability is p, or p * (1 - t/alpha) with decay.
    """
    if thinking >= alpha:
        return False
    if decay:
        return u24 * alpha < p24 * (alpha - thinking)
    return u24 < p24


class ThinkingController:
    """Enforces one request's thinking budget, one token at a time.

    Thinking tokens are the completion tokens between the think-start and think-end delimiters,
    waits and forced tokens included. Below `min_thinking` a close attempt (the close's first
    token, or end-of-sequence) is replaced by the next wait string, at most `max_waits` times.
    At `max_thinking` the close delimiter and answer prefix are forced. A budgeted thinking that
    ends the sequence instead of closing is closed (as s1 does: it stops on either).

    Example (R1 ids: `<think>`=5, `</think>`=6, EOS=2, "Wait"=9; min 3):
        prompt [..., 5]; the model closes after one token:
        accept(17) -> action() == (GUARD, 9); the close attempt is replaced:
        accept(9, replaced=True) -> waits_inserted == 1, thinking_tokens == 2
        With no budget, action() is always (FREE, -1) and only the spans are tracked.
    """

    __slots__ = (
        "plan", "phase", "thinking_tokens", "waits_inserted", "forced_end",
        "think_end_at", "answer_at", "n_out", "_queue", "_recent", "_tail", "just_waited",
        "scheduled_waits", "answer_tokens", "answer_truncated", "intervened", "early_exit",
        "_queue_is_wait", "_rng", "_p24", "_at_break",
    )

    def __init__(self, plan: ForcingPlan, prompt_ids: list[int], rng_key: tuple[int, int] = (0, 0)) -> None:
        self.plan = plan
        self.thinking_tokens = 0
        self.waits_inserted = 0
        self.forced_end = False
        self.scheduled_waits = 0
        self.answer_tokens = 0  # after the close, a forced answer prefix included, end-of-sequence excluded
        self.answer_truncated = False
        self.intervened = False
        self.early_exit = False
        self._queue_is_wait = False  # the queue holds the rest of a wait string (not an intervention)
        self._at_break = False  # the last token was a free exit break: the margin is checked on the next logits
        self._rng = (rng_key[0] ^ SCHEDULE_SALT, rng_key[1])  # the scheduled-wait stream
        self._p24 = schedule_p24(plan.wait_probability)
        self.n_out = 0  # completion tokens accepted so far
        self.think_end_at: int | None = None  # completion index where the close delimiter starts
        self.answer_at: int | None = None  # completion index where the answer starts
        self._queue: deque[int] = deque()
        self.just_waited = False  # a wait string was just completed: the next token may not close
        self._recent: deque[int] = deque(prompt_ids[-len(plan.think_start) :], maxlen=len(plan.think_start))
        self._tail: deque[int] = deque(maxlen=len(plan.think_end))  # for spotting a close when only observing
        self.phase = Phase.BEFORE
        if ends_inside(prompt_ids, plan.think_start, plan.think_end):
            self._enter_thinking()

    # -- queries ---------------------------------------------------------------------------
    def action(self) -> tuple[Action, int]:
        if self._queue:
            return Action.FORCE, self._queue[0]
        p = self.plan
        if self.phase is Phase.THINKING and p.is_active:
            if self.just_waited:
                return Action.BAN, -1
            if self.guarding:
                return Action.GUARD, p.waits[self.waits_inserted % len(p.waits)][0]
            if p.is_budgeted or self.quenching:
                return Action.REDIRECT, p.think_end[0]
        if self.phase is Phase.ANSWERING and p.max_answer is not None and self.answer_tokens >= p.max_answer:
            return Action.FORCE, p.end_of_answer
        return Action.FREE, -1

    @property
    def quenching(self) -> bool:
        """Past the alpha moment of a wait schedule: a wait the model starts becomes the close."""
        return self.plan.alpha_moment > 0 and self.thinking_tokens >= self.plan.alpha_moment

    @property
    def redirected(self) -> frozenset[int]:
        """The tokens whose mass a REDIRECT moves onto the close: EOS (a budget), waits (past alpha)."""
        out = self.plan.eos if self.plan.is_budgeted else frozenset()
        return out | self.plan.wait_firsts if self.quenching else out

    def banned_now(self) -> frozenset[int]:
        """Tokens the model may not sample now: the plan's banned tokens, inside a free thinking."""
        return self.plan.banned if self.phase is Phase.THINKING and not self._queue else frozenset()

    @property
    def guarding(self) -> bool:
        """Whether a close attempt now would be replaced by a wait."""
        p = self.plan
        return (
            self.phase is Phase.THINKING
            and self.thinking_tokens < p.min_thinking
            and (p.max_waits is None or self.waits_inserted < p.max_waits)
        )

    def tokens_to_event(self) -> int | None:
        """Thinking tokens until the rules change (the maximum, the intervention, the alpha moment); None: never."""
        p, t = self.plan, self.thinking_tokens
        marks = [p.max_thinking] if p.max_thinking is not None else []
        if p.intervention and not self.intervened:
            marks.append(p.intervention_at)
        if p.alpha_moment > 0:
            marks.append(p.alpha_moment)
        ahead = [m - t for m in marks if m > t]
        return min(ahead) if ahead else None

    @property
    def tokens_to_max(self) -> int | None:
        """Thinking tokens left before the end is forced (None: no maximum)."""
        if self.plan.max_thinking is None:
            return None
        return self.plan.max_thinking - self.thinking_tokens

    def quiet(self) -> int:
        """How many tokens outside `plan.special` may follow without changing `action()`.

        Adapters use it to skip the controller on ordinary tokens (`accept_quiet`).
        """
        if self._queue or self.just_waited or self.margin_due:
            return 0
        p = self.plan
        if self.phase is Phase.THINKING:
            left = 1 << 62
            if self.guarding:
                left = p.min_thinking - self.thinking_tokens - 1
            if p.max_thinking is not None:
                left = min(left, p.max_thinking - self.thinking_tokens - 1)
            if p.intervention and not self.intervened:
                left = min(left, p.intervention_at - self.thinking_tokens - 1)
            if p.alpha_moment > 0 and not self.quenching:
                left = min(left, p.alpha_moment - self.thinking_tokens - 1)
            return max(left, 0)
        if self.phase is Phase.BEFORE:
            return 1 << 62 if len(p.think_start) == 1 else 0
        if self.phase is Phase.ANSWERING and p.max_answer is not None:
            return max(p.max_answer - self.answer_tokens - 1, 0)
        return 1 << 62

    def accept_quiet(self) -> None:
        """`accept` for a token outside `plan.special` while `quiet()` allows it."""
        self.n_out += 1
        self._at_break = False
        if self.phase is Phase.THINKING:
            self.thinking_tokens += 1
        elif self.phase is Phase.ANSWERING:
            self.answer_tokens += 1

    @property
    def stats(self) -> ForcingStats:
        return ForcingStats(
            self.thinking_tokens, self.waits_inserted, self.forced_end, self.scheduled_waits, self.answer_tokens,
            self.answer_truncated,
        )

    # -- transitions -----------------------------------------------------------------------
    def accept(self, token: int, replaced: bool = False) -> None:
        """Record the emitted ``token``; ``replaced`` marks a close attempt turned into a wait."""
        index = self.n_out
        self.n_out += 1
        self._at_break = False
        if self._queue:
            expected = self._queue.popleft()
            if token != expected:
                raise ForcingError(f"expected forced token {expected}, got {token} at completion index {index}")
            if self.phase is Phase.THINKING:  # inside a wait string or an intervention
                self.thinking_tokens += 1
                self.just_waited = not self._queue and self._queue_is_wait
                self._check_max()
                self._check_intervention()
            else:
                if self.forced_end and len(self._queue) < len(self.plan.answer_prefix):
                    self.answer_tokens += 1  # a token of the forced answer prefix
                if not self._queue:
                    self.phase = Phase.ANSWERING
                    self.answer_at = self.n_out
            return
        if self.phase is Phase.BEFORE:
            self._recent.append(token)
            if tuple(self._recent) == self.plan.think_start:
                self._enter_thinking()
        elif self.phase is Phase.THINKING and not self.plan.is_active:
            self._observe_thinking(index, token)
        elif self.phase is Phase.THINKING:
            p = self.plan
            was_just, self.just_waited = self.just_waited, False
            if was_just and (token == p.think_end[0] or token in p.eos):
                raise ForcingError(f"a close attempt ({token}) right after a wait string")
            if replaced:
                wait = p.waits[self.waits_inserted % len(p.waits)]
                if token != wait[0]:
                    raise ForcingError(f"a replaced close must emit wait token {wait[0]}, got {token}")
                self.waits_inserted += 1
                self.thinking_tokens += 1
                self._queue.extend(wait[1:])
                self._queue_is_wait = True
                self.just_waited = not self._queue
                self._check_max()
            elif token == p.think_end[0] or (token in p.eos and p.is_budgeted):
                self._close(index, p.think_end[1:])
            elif token in p.eos:
                return  # an unbudgeted row (modes only) ends inside its thinking
            else:
                self.thinking_tokens += 1
                self._check_max()
                if token in p.breaks and self.phase is Phase.THINKING and not self._queue:
                    self._maybe_schedule(index)
                self._at_break = token in p.exit_breaks
            self._check_intervention()
        elif self.phase is Phase.ANSWERING:
            p = self.plan
            if p.max_answer is not None and self.answer_tokens >= p.max_answer:
                if token != p.end_of_answer:
                    raise ForcingError(f"expected the forced end of the answer {p.end_of_answer}, got {token}")
                self.answer_truncated = True
            elif token not in p.eos:
                self.answer_tokens += 1

    def _maybe_schedule(self, index: int) -> None:
        """A paragraph break before the alpha moment: a wait string, with the schedule's probability."""
        p = self.plan
        if p.alpha_moment <= 0 or not p.waits:
            return
        u24 = draw24(self._rng[0], self._rng[1], index)
        if scheduled_wait(u24, self._p24, self.thinking_tokens, p.alpha_moment, p.wait_decay):
            wait = p.waits[self.scheduled_waits % len(p.waits)]
            self.scheduled_waits += 1
            self._queue.extend(wait)
            self._queue_is_wait = True

    def _check_intervention(self) -> None:
        p = self.plan
        if (
            p.intervention and not self.intervened and self.phase is Phase.THINKING and not self._queue
            and self.thinking_tokens >= p.intervention_at
        ):
            self.intervened = True
            self._queue.extend(p.intervention)
            self._queue_is_wait = False

    @property
    def margin_due(self) -> bool:
        """Whether the logit-margin exit is tested on the next logits: the last token was a free exit
        break inside the thinking, the minimum is reached, and nothing is being forced."""
        p = self.plan
        return (
            p.exit_margin is not None and self._at_break and self.phase is Phase.THINKING and not self._queue
            and not self.just_waited and self.thinking_tokens >= p.min_thinking and not self.early_exit
        )

    def margin_exit(self, gap: float) -> bool:
        """The logit-margin exit (ThinkBrake): ``gap`` is ``log p(top) - log p(close)`` on the next
        logits. Closes the thinking (as `exit_now`) when it is due and the gap is within the margin.

        Example (margin 0.5; the last token was "\n\n", the minimum reached):
            margin_exit(2.3) -> False (the model is sure it goes on); margin_exit(0.4) -> True,
            and action() == (FORCE, think_end[0]).
        """
        if not self.margin_due or not margin_holds(gap, self.plan.exit_margin or 0.0):
            return False
        return self.exit_now()

    def exit_now(self) -> bool:
        """Close the thinking here (an early exit): the close and answer prefix are forced next.

        False when there is no thinking left to close.
        """
        if self.phase is not Phase.THINKING:
            return False
        self._queue.clear()
        self.just_waited = self._at_break = False
        self.early_exit = self.forced_end = True
        self._close(self.n_out, self.plan.think_end + self.plan.answer_prefix)
        return True

    def _observe_thinking(self, index: int, token: int) -> None:
        """Without a budget nothing is forced: the close is the whole delimiter, as generated."""
        if token in self.plan.eos:
            return  # the sequence ends inside its thinking
        self.thinking_tokens += 1
        self._tail.append(token)
        end = self.plan.think_end
        if tuple(self._tail) == end:
            self.thinking_tokens -= len(end)
            self.think_end_at = index - len(end) + 1
            self.phase = Phase.ANSWERING
            self.answer_at = self.n_out

    def _enter_thinking(self) -> None:
        self.phase = Phase.THINKING
        self._tail.clear()
        if self.plan.is_active:
            self._check_max()
            self._check_intervention()

    def _check_max(self) -> None:
        limit = self.plan.max_thinking
        if limit is not None and self.thinking_tokens >= limit:
            self._queue.clear()  # a forced end pre-empts an unfinished wait string
            self.just_waited = False
            self.forced_end = True
            self._close(self.n_out, self.plan.think_end + self.plan.answer_prefix)

    def _close(self, at: int, rest: tuple[int, ...]) -> None:
        self.think_end_at = at
        self._queue.extend(rest)
        if self._queue:
            self.phase = Phase.CLOSING
        else:
            self.phase = Phase.ANSWERING
            self.answer_at = self.n_out

    # -- output ----------------------------------------------------------------------------
    def split(self, output_ids: list[int]) -> tuple[list[int], list[int]]:
        """(reasoning ids, answer ids) of a completion: the close delimiter belongs to neither.

        A completion that never opened a thinking span is all answer; one still thinking is all
        reasoning. The think-start delimiter, when generated, is dropped from the reasoning.
        """
        if self.phase is Phase.BEFORE:
            return [], list(output_ids)
        start = self._reasoning_start(output_ids)
        if self.think_end_at is None:
            return list(output_ids[start:]), []
        answer_at = self.answer_at if self.answer_at is not None else len(output_ids)
        if self.forced_end:  # the answer prefix is forced text of the answer: keep it visible
            answer_at = self.think_end_at + len(self.plan.think_end)
        return list(output_ids[start : self.think_end_at]), list(output_ids[answer_at:])

    def _reasoning_start(self, output_ids: list[int]) -> int:
        n = len(self.plan.think_start)
        idx = rfind(output_ids[: self.think_end_at] if self.think_end_at is not None else output_ids, self.plan.think_start)
        return idx + n if idx >= 0 else 0


def rfind(ids: list[int], pattern: tuple[int, ...]) -> int:
    """Index of the last occurrence of ``pattern`` in ``ids``, or -1."""
    n = len(pattern)
    first = pattern[0]
    for i in range(len(ids) - n, -1, -1):
        if ids[i] == first and tuple(ids[i : i + n]) == pattern:
            return i
    return -1


def ends_inside(ids: list[int], start: tuple[int, ...], end: tuple[int, ...]) -> bool:
    """Whether ``ids`` ends inside an opened, unclosed thinking span."""
    last_start = rfind(ids, start)
    return last_start >= 0 and rfind(ids, end) < last_start
