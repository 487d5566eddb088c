"""A programmatic teacher that writes R1-style reasoning traces, and the rejection sampler.

The teacher solves a `Problem` step by step in a compact form ("23*17 = 391"). Like a real
teacher it sometimes slips: a step gets a near-miss value, and later steps build on it. After
its first "So the answer is N." it either closes the thinking, or says "Wait" and re-checks
every step in a careful form - products split by the tens and ones of the second factor
("23*17 = 23*10 + 23*7 = 230 + 161 = 391") - marking each line "Correct." or ", not X." and
re-stating the answer. Slips are usually caught by such a re-check; when they are not, the final
answer is wrong and rejection sampling (s1/R1 distillation's filter: keep only traces whose
answer matches the exact one) drops the trace.

What the student should learn from the kept traces: "Wait" starts a re-check in the careful
form, and the re-check's answer is the one to give. Forcing "Wait" past the student's natural
stop therefore buys a careful re-verification of its compact, error-prone main pass.

Trace format (the text the student generates after the prompt's ``<think>\\n``)::

    Leo starts with 74 candies.
    The bags hold 23*17 = 381 candies.
    Now Leo has 74 + 381 = 455 candies.
    So the answer is 455.
    Wait, let me check each step again.
    23*17 = 23*10 + 23*7 = 230 + 161 = 391, not 381.
    74 + 391 = 465, not 455.
    So the answer is 465.
    </think>

    The answer is 465.<｜end▁of▁sentence｜>
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from budgetforce.student.task import Problem, Step, apply

THINK_END = "</think>"
EOS = "<｜end▁of▁sentence｜>"
WAIT_LINE = "Wait, let me check each step again."
ANSWER_RE = re.compile(r"\n</think>\n\nThe answer is (-?\d+)\.$")
FINAL_RE = re.compile(r"The answer is (-?\d+)\.\s*$")


@dataclass(frozen=True)
class TeacherConfig:
    """How the teacher behaves; the defaults made the shipped student.

    Args:
        slip_rate: Probability that the main pass gets one step wrong.
        product_slip_share: Of the slips, the share that hit a product (the rest hit + or -).
        catch_rate: Probability that a slipped trace re-checks (and so fixes the slip).
        confirm_rate: Probability that a trace without a slip still re-checks, confirming.
        second_check_rate: Probability of a second, confirming re-check after the first.
    """

    slip_rate: float = 0.3
    product_slip_share: float = 0.8
    catch_rate: float = 0.85
    confirm_rate: float = 0.2
    second_check_rate: float = 0.15


@dataclass(frozen=True)
class Trace:
    """One teacher trace: the completion text and what happened in it."""

    problem: Problem
    text: str  # thinking + "\n</think>\n\nThe answer is N." (no EOS token)
    slipped: bool
    rechecks: int

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


def careful(a: int, op: str, b: int) -> str:
    """A step written in the re-check's careful form (products split by the second factor)."""
    if op == "*" and b >= 10 and b % 10:
        tens, ones = b - b % 10, b % 10
        return f"{a}*{b} = {a}*{tens} + {a}*{ones} = {a * tens} + {a * ones} = {a * b}"
    return f"{a} {op} {b} = {apply(a, op, b)}" if op != "*" else f"{a}*{b} = {a * b}"


def compact(a: int, op: str, b: int, value: int) -> str:
    return f"{a}*{b} = {value}" if op == "*" else f"{a} {op} {b} = {value}"


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
            products = [i for i, s in enumerate(problem.steps) if s.op == "*"]
            others = [i for i, s in enumerate(problem.steps) if s.op != "*"]
            pool = products if (rng.random() < cfg.product_slip_share or not others) else others
            slip_at = rng.choice(pool)
        # Main pass: compact steps; a slip propagates to the later steps that use its value.
        written: list[tuple[int, str, int, int]] = []
        for i, step in enumerate(problem.steps):
            a = step.a if step.a_from is None else written[step.a_from][3]
            b = step.b if step.b_from is None else written[step.b_from][3]
            value = apply(a, step.op, b)
            if i == slip_at:
                value = near_miss(value, rng)
            written.append((a, step.op, b, value))
            lines.append(step.say.format(expr=compact(a, step.op, b, value)))
        main_answer = written[-1][3]
        lines.append(f"So the answer is {main_answer}.")
        slipped = main_answer != problem.answer or any(w[3] != s.value for w, s in zip(written, problem.steps))
        recheck = rng.random() < (cfg.catch_rate if slipped else cfg.confirm_rate)
        rechecks = 0
        final = main_answer
        if recheck:
            rechecks = 1 + (rng.random() < cfg.second_check_rate)
            previous = written
            for _ in range(rechecks):
                lines.append(WAIT_LINE)
                for (pa, op, pb, pv), step in zip(previous, problem.steps):
                    line = careful(step.a, op, step.b)
                    same = (pa, pb, pv) == (step.a, step.b, step.value)
                    lines.append(f"{line}. Correct." if same else f"{line}, not {pv}.")
                lines.append(f"So the answer is {problem.answer}.")
                previous = [(s.a, s.op, s.b, s.value) for s in problem.steps]
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
