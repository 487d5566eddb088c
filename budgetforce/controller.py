"""The per-request budget controller: s1's budget forcing as a state machine on token ids.

It knows nothing of vLLM. Each step an adapter asks `action()` what the next token may be,
lets the model sample accordingly, and reports the token back with `accept()`. The engine
strategy (a logits processor) and the rounds strategy (s1's loop) drive the same class, which
is what makes their outputs identical under greedy decoding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum


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
    REDIRECT = 3  # inside a budgeted thinking: end-of-sequence becomes `token`, the close
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

    @property
    def is_active(self) -> bool:
        return self.min_thinking > 0 or self.max_thinking is not None

    @property
    def close_attempts(self) -> frozenset[int]:
        """Tokens that try to end the thinking: the close's first token and end-of-sequence."""
        return self.eos | {self.think_end[0]}

    @property
    def special(self) -> frozenset[int]:
        """Every token that can change a controller's state when it appears (see `quiet`)."""
        return self.close_attempts | {w[0] for w in self.waits} | set(self.think_start) | set(self.think_end)

    @property
    def forced_end_length(self) -> int:
        return len(self.think_end) + len(self.answer_prefix)


@dataclass(frozen=True, slots=True)
class ForcingStats:
    thinking_tokens: int
    waits_inserted: int
    forced_end: bool


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
    )

    def __init__(self, plan: ForcingPlan, prompt_ids: list[int]) -> None:
        self.plan = plan
        self.thinking_tokens = 0
        self.waits_inserted = 0
        self.forced_end = False
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
        if self.phase is Phase.THINKING and self.plan.is_active:
            if self.just_waited:
                return Action.BAN, -1
            if self.guarding:
                waits = self.plan.waits
                return Action.GUARD, waits[self.waits_inserted % len(waits)][0]
            return Action.REDIRECT, self.plan.think_end[0]
        return Action.FREE, -1

    @property
    def guarding(self) -> bool:
        """Whether a close attempt now would be replaced by a wait."""
        p = self.plan
        return (
            self.phase is Phase.THINKING
            and self.thinking_tokens < p.min_thinking
            and (p.max_waits is None or self.waits_inserted < p.max_waits)
        )

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
        if self._queue or self.just_waited:
            return 0
        if self.phase is Phase.THINKING:
            p, left = self.plan, 1 << 62
            if self.guarding:
                left = p.min_thinking - self.thinking_tokens - 1
            if p.max_thinking is not None:
                left = min(left, p.max_thinking - self.thinking_tokens - 1)
            return max(left, 0)
        if self.phase is Phase.BEFORE:
            return 1 << 62 if len(self.plan.think_start) == 1 else 0
        return 1 << 62

    def accept_quiet(self) -> None:
        """`accept` for a token outside `plan.special` while `quiet()` allows it."""
        self.n_out += 1
        if self.phase is Phase.THINKING:
            self.thinking_tokens += 1

    @property
    def stats(self) -> ForcingStats:
        return ForcingStats(self.thinking_tokens, self.waits_inserted, self.forced_end)

    # -- transitions -----------------------------------------------------------------------
    def accept(self, token: int, replaced: bool = False) -> None:
        """Record the emitted ``token``; ``replaced`` marks a close attempt turned into a wait."""
        index = self.n_out
        self.n_out += 1
        if self._queue:
            expected = self._queue.popleft()
            if token != expected:
                raise ForcingError(f"expected forced token {expected}, got {token} at completion index {index}")
            if self.phase is Phase.THINKING:  # inside a wait string
                self.thinking_tokens += 1
                self.just_waited = not self._queue
                self._check_max()
            elif not self._queue:
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
            was_just, self.just_waited = self.just_waited, False
            if was_just and (token == self.plan.think_end[0] or token in self.plan.eos):
                raise ForcingError(f"a close attempt ({token}) right after a wait string")
            if replaced:
                wait = self.plan.waits[self.waits_inserted % len(self.plan.waits)]
                if token != wait[0]:
                    raise ForcingError(f"a replaced close must emit wait token {wait[0]}, got {token}")
                self.waits_inserted += 1
                self.thinking_tokens += 1
                self._queue.extend(wait[1:])
                self.just_waited = not self._queue
                self._check_max()
            elif token == self.plan.think_end[0] or token in self.plan.eos:
                self._close(index, self.plan.think_end[1:])
            else:
                self.thinking_tokens += 1
                self._check_max()

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
        self._check_max()

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
