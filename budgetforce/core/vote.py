"""Parallel thinking with a vote: the majority answer over a request's choices (self-consistency;
arXiv 2506.04210: at the same total thinking budget, a majority over independent thinkings beats
extending one thinking with "Wait").

Each choice's answer text is reduced to a key by the grader the harness uses for the task
(`integer`: the stated integer; `math`: the final answer in a light LaTeX normal form), or, with
no grader named, by exact match after normalising case and white space. The majority is the most
common key among the choices that state one; a tie goes to the key whose first choice came first.

Example:
    >>> v = majority(["The answer is 12.", "\\\\boxed{12}", "It is 7."], grader="integer")
    >>> (v.answer, v.votes, v.share, v.index)
    ('12', 2, 0.6667, 0)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from budgetforce.core import graders

VoteGrader = Literal["integer", "math", "exact"]


@dataclass(frozen=True, slots=True)
class Vote:
    answer: str | None  # the majority's key (None: no choice stated an answer)
    votes: int  # choices that gave it
    share: float  # votes / choices, rounded to 4 places
    choices: int  # choices counted
    index: int | None  # the first choice that gave it (its text is the majority's answer in full)
    keys: tuple[str | None, ...]  # each choice's key, in index order


def answer_key(text: str, grader: VoteGrader | None = None) -> str | None:
    """The key a choice's answer text votes for; None when it states none."""
    answer = graders.answer_part(text)
    if grader == "integer":
        extracted = graders.extract_answer(answer)
        if extracted is None:
            numbers = graders.NUMBER_PATTERN.findall(answer.replace(",", ""))
            extracted = numbers[-1] if numbers else None
        value = graders.parse_integer(extracted)
        return None if value is None else str(value)
    if grader == "math":
        extracted = graders.extract_answer(answer)
        return None if extracted is None else graders.normalize_latex(extracted) or None
    normal = re.sub(r"\s+", " ", answer).strip().lower()
    return normal or None


def majority(texts: Sequence[str], grader: VoteGrader | None = None) -> Vote:
    """The majority over the choices' answer texts (in index order)."""
    keys = tuple(answer_key(t, grader) for t in texts)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return Vote(None, 0, 0.0, len(keys), None, keys)
    top = max(counts.values())
    index = next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)
    return Vote(keys[index], top, round(top / len(keys), 4), len(keys), index, keys)
