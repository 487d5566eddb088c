"""A programmatic teacher that writes R1-style reasoning traces, and the rejection sampler.

The teacher solves a `Problem` step by step in a compact form ("23 + 17 + 35 + 48 = 123").
Like a real teacher it sometimes slips: a step gets a near-miss value, and later steps build
on it. After its first "So the answer is N." it either closes the thinking, or says "Wait" and
re-checks every step in a careful form - sums added one number at a time ("23 + 17 = 40,
40 + 35 = 75, 75 + 48 = 123"), products split by tens and ones ("6*14 = 6*10 + 6*4 = 60 + 24
= 84") - marking each line "Correct." or ", not X." and re-stating the answer. Slips are usually caught by such a re-check; when they are not, the final
answer is wrong and rejection sampling (s1/R1 distillation's filter: keep only traces whose
answer matches the exact one) drops the trace.

What the student should learn from the kept traces: "Wait" starts a re-check in the careful
form, and the re-check's answer is the one to give. Forcing "Wait" past the student's natural
stop therefore buys a careful re-verification of its compact, error-prone main pass.

Trace format (the text the student generates after the prompt's ``<think>\\n``)::

    Leo starts with 74 candies.
    Together that is 23 + 17 + 35 + 48 = 133 candies.
    Now Leo has 74 + 133 = 207 candies.
    So the answer is 207.
    Wait, let me check each step again.
    23 + 17 = 40, 40 + 35 = 75, 75 + 48 = 123, not 133.
    74 + 123 = 197, not 207.
    So the answer is 197.
    </think>

    The answer is 197.<｜end▁of▁sentence｜>
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from budgetforce.student.task import Problem, apply

THINK_END = "</think>"
EOS = "<｜end▁of▁sentence｜>"
WAIT_LINE = "Wait, let me check each step again."
ANSWER_RE = re.compile(r"</think>\n\nThe answer is (-?\d+)\.$")
FINAL_RE = re.compile(r"The answer is (-?\d+)\.\s*$")


@dataclass(frozen=True)
class TeacherConfig:
    """How the teacher behaves; the defaults made the shipped student.

    Args:
        slip_rate: Probability that the main pass gets one step wrong.
        hard_slip_share: Of the slips, the share that hit a sum of several numbers (the rest
            hit any step).
        catch_rate: Probability that a slipped trace re-checks (and so fixes the slip).
        confirm_rate: Probability that a trace without a slip still re-checks, confirming.
        second_check_rate: Probability of a second, confirming re-check after the first.
        truncate_rate: Probability that a kept trace is cut at a word boundary and closed right
            there (``</think>`` glued to the cut, as a forced end looks), followed by the exact
            answer; teaches the answer format after a forced end. Training masks the loss on
            that ``</think>``, so the student never learns to close mid-line by itself.
    """

    slip_rate: float = 0.3
    hard_slip_share: float = 0.8
    catch_rate: float = 0.85
    confirm_rate: float = 0.2
    second_check_rate: float = 0.15
    truncate_rate: float = 0.05


@dataclass(frozen=True)
class Trace:
    """One teacher trace: the completion text and what happened in it."""

    problem: Problem
    text: str  # thinking + "\n</think>\n\nThe answer is N." (no EOS token)
    slipped: bool
    rechecks: int
    truncated: bool = False

    @property
    def answer(self) -> int | None:
        return parse_answer(self.text)


def parse_answer(completion: str) -> int | None:
    """The N of a well-formed completion "...\\n</think>\\n\\nThe answer is N.", else None."""
    if completion.count(THINK_END) != 1:
        return None
    m = ANSWER_RE.search(completion.removesuffix(EOS))
    return int(m.group(1)) if m else None


def parse_final_answer(answer_text: str) -> int | None:
    """The N of an answer section (text after ``</think>``) of the form "The answer is N."."""
    m = FINAL_RE.search(answer_text.strip())
    return int(m.group(1)) if m and answer_text.strip().startswith("The answer is") else None


def near_miss(value: int, rng: random.Random) -> int:
    """A plausible wrong value close to ``value`` (a dropped carry, an off-by-one digit)."""
    while True:
        wrong = value + rng.choice((-100, -20, -10, -2, -1, 1, 2, 10, 20, 100))
        if wrong > 0:
            return wrong


def careful(op: str, args: tuple[int, ...]) -> str:
    """A step in the re-check's careful form: one addition at a time, products split by tens."""
    if op == "+" and len(args) > 2:
        parts, acc = [], args[0]
        for x in args[1:]:
            parts.append(f"{acc} + {x} = {acc + x}")
            acc += x
        return ", ".join(parts)
    if op == "*" and args[1] >= 10 and args[1] % 10:
        a, b = args
        tens, ones = b - b % 10, b % 10
        return f"{a}*{b} = {a}*{tens} + {a}*{ones} = {a * tens} + {a * ones} = {a * b}"
    return compact(op, args, apply(op, args))


def compact(op: str, args: tuple[int, ...], value: int) -> str:
    """A step in the main pass's compact form: "a + b + c = v", "a - b = v", "a*b = v"."""
    sep = "*" if op == "*" else f" {op} "
    return f"{sep.join(map(str, args))} = {value}"


class Teacher:
    """Writes traces for problems; see the module docstring for the format."""

    def __init__(self, config: TeacherConfig = TeacherConfig()) -> None:
        self.config = config

    def trace(self, problem: Problem, rng: random.Random) -> Trace:
        cfg = self.config
        lines: list[str] = []
        if problem.start is not None:
            lines.append(f"{problem.name} starts with {problem.start} {problem.item}.")
        slip_at = -1
        if rng.random() < cfg.slip_rate:
            hard = [i for i, s in enumerate(problem.steps) if len(s.args) > 2]
            pool = hard if (hard and rng.random() < cfg.hard_slip_share) else list(range(len(problem.steps)))
            slip_at = rng.choice(pool)
        # Main pass: compact steps; a slip propagates to the later steps that use its value.
        written: list[tuple[tuple[int, ...], int]] = []
        for i, step in enumerate(problem.steps):
            args = tuple(a if step.source(j) is None else written[step.source(j)][1] for j, a in enumerate(step.args))
            value = apply(step.op, args)
            if i == slip_at:
                value = near_miss(value, rng)
            written.append((args, value))
            lines.append(step.say.format(expr=compact(step.op, args, value)))
        main_answer = written[-1][1]
        lines.append(f"So the answer is {main_answer}.")
        slipped = any(w != (s.args, s.value) for w, s in zip(written, problem.steps))
        recheck = rng.random() < (cfg.catch_rate if slipped else cfg.confirm_rate)
        rechecks = 0
        final = main_answer
        if recheck:
            rechecks = 1 + (rng.random() < cfg.second_check_rate)
            previous = written
            for _ in range(rechecks):
                lines.append(WAIT_LINE)
                for (p_args, p_value), step in zip(previous, problem.steps):
                    line = careful(step.op, step.args)
                    same = (p_args, p_value) == (step.args, step.value)
                    lines.append(f"{line}. Correct." if same else f"{line}, not {p_value}.")
                lines.append(f"So the answer is {problem.answer}.")
                previous = [(s.args, s.value) for s in problem.steps]
            final = problem.answer
        text = "\n".join(lines) + f"\n{THINK_END}\n\nThe answer is {final}."
        return Trace(problem, text, slipped, rechecks)


@dataclass
class RejectionStats:
    generated: int = 0
    kept: int = 0
    rejected_wrong: int = 0
    rejected_malformed: int = 0


def rejection_sample(traces: Iterable[Trace], stats: RejectionStats | None = None) -> Iterator[Trace]:
    """Keep the traces that are well-formed and whose answer equals the problem's exact answer."""
    stats = stats if stats is not None else RejectionStats()
    for t in traces:
        stats.generated += 1
        got = t.answer
        if got is None:
            stats.rejected_malformed += 1
        elif got != t.problem.answer:
            stats.rejected_wrong += 1
        else:
            stats.kept += 1
            yield t


def truncate(trace: Trace, rng: random.Random) -> Trace:
    """``trace`` with its thinking cut at a random word boundary and closed there."""
    thinking = trace.text[: trace.text.index(THINK_END)]
    cuts = [i for i, ch in enumerate(thinking) if ch in " \n" and i > 0]
    cut = rng.choice(cuts)
    text = f"{thinking[:cut]}{THINK_END}\n\nThe answer is {trace.problem.answer}."
    return Trace(trace.problem, text, trace.slipped, trace.text[:cut].count(WAIT_LINE), truncated=True)
