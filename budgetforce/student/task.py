"""Seeded multi-step arithmetic word problems with exact integer answers.

GSM8K-flavoured: a person starts with some items, buys packs (a two-digit by two-digit
product), receives or gives away items. Every problem needs 2-4 operations of ``+ - *`` and
contains at least one product, the step a tiny model gets wrong when it does it in one go.

Held-out split: a problem belongs to the held-out split when the SHA-256 of its question text
falls in the first ``HELDOUT_PERCENT`` buckets. Training data skips those questions, whatever
seed it is generated from, so the evaluation set is disjoint from training by construction.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

HELDOUT_PERCENT = 5
EVAL_SEED = 20_261_122  # the seed of the published held-out evaluation set

Op = Literal["+", "-", "*"]

NAMES = (
    "Tom", "Mia", "Sam", "Ana", "Leo", "Ivy", "Ben", "Zoe", "Max", "Eva",
    "Jack", "Lily", "Noah", "Emma", "Owen", "Ruby", "Liam", "Nora", "Finn", "Sara",
)  # fmt: skip
ITEMS = (
    ("apples", "bags"), ("pencils", "boxes"), ("stickers", "packs"), ("cards", "decks"),
    ("marbles", "jars"), ("cookies", "trays"), ("eggs", "cartons"), ("beads", "strings"),
    ("stamps", "books"), ("candies", "bags"), ("shells", "buckets"), ("coins", "purses"),
)  # fmt: skip
RECIPIENTS = ("a friend", "a neighbor", "the class", "a cousin", "the teacher")
GET_VERBS = ("finds", "gets", "wins", "is given")


@dataclass(frozen=True)
class Step:
    """One arithmetic operation ``a op b = value`` and the sentence that explains it."""

    a: int
    op: Op
    b: int
    value: int
    say: str  # e.g. "The packs hold {expr} stickers." with {expr} standing for "a*b = value"
    a_from: int | None = None  # index of the earlier step whose value is ``a`` (None: from the text)
    b_from: int | None = None


@dataclass(frozen=True)
class Problem:
    """A word problem, its exact answer and the reference solution steps."""

    question: str
    answer: int
    steps: tuple[Step, ...]
    name: str
    item: str
    start: int | None = None  # the starting amount, when the question opens with one

    @property
    def heldout(self) -> bool:
        return is_heldout(self.question)


def is_heldout(question: str) -> bool:
    """Whether ``question`` belongs to the held-out split (a hash bucket, never trained on)."""
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def apply(a: int, op: Op, b: int) -> int:
    """The exact value of ``a op b``."""
    return a + b if op == "+" else a - b if op == "-" else a * b


def _two_digit_factor(rng: random.Random) -> int:
    """A two-digit factor 11..99 whose ones digit is not zero (so the check can split it)."""
    while True:
        n = rng.randint(11, 99)
        if n % 10:
            return n


def make_problem(rng: random.Random) -> Problem:
    """One problem drawn from ``rng``: 2-4 operations, at least one two-digit product."""
    name = rng.choice(NAMES)
    item, pack = rng.choice(ITEMS)
    pronoun = "He" if name in NAMES[0::2] else "She"
    recipient = rng.choice(RECIPIENTS)
    sentences: list[str] = []
    steps: list[Step] = []
    # Opening: either a starting amount, or the first purchase of packs.
    if rng.random() < 0.6:
        total = start = rng.randint(11, 99)
        sentences.append(f"{name} has {total} {item}.")
        first_packs = False
        total_from: int | None = None
    else:
        n, m = rng.randint(11, 99), _two_digit_factor(rng)
        total, start, total_from = n * m, None, 0
        sentences.append(f"{name} buys {n} {pack} of {item} with {m} {item} in each.")
        steps.append(Step(n, "*", m, total, f"The {pack} hold {{expr}} {item}."))
        first_packs = True
    n_events = rng.randint(1, 2)
    bought = first_packs
    for i in range(n_events):
        last = i == n_events - 1
        kind = "buy" if (last and not bought) else rng.choice(("buy", "give", "get"))
        if kind == "buy" and len(steps) + 2 > 4:
            kind = "get"
        if kind == "give" and total < 25:
            kind = "get"
        if kind == "buy":
            n, m = rng.randint(11, 99), _two_digit_factor(rng)
            prod = n * m
            text = f"{pronoun} buys {n} {pack} with {m} {item} in each."
            steps.append(Step(n, "*", m, prod, f"The {pack} hold {{expr}} {item}."))
            steps.append(
                Step(total, "+", prod, total + prod, f"Now {name} has {{expr}} {item}.", total_from, len(steps) - 1)
            )
            total += prod
            bought = True
        elif kind == "give":
            k = rng.randint(11, min(99, total - 1))
            text = f"{pronoun} gives {k} {item} to {recipient}."
            steps.append(Step(total, "-", k, total - k, f"After giving {k} away, {name} has {{expr}} {item}.", total_from))
            total -= k
        else:
            k = rng.randint(11, 99)
            text = f"{pronoun} {rng.choice(GET_VERBS)} {k} more {item}."
            steps.append(Step(total, "+", k, total + k, f"After getting {k} more, {name} has {{expr}} {item}.", total_from))
            total += k
        total_from = len(steps) - 1
        sentences.append(f"Then {text[0].lower()}{text[1:]}" if i > 0 else text)
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), total, tuple(steps), name, item, start)


def problems(seed: int, split: Literal["train", "heldout"]) -> Iterator[Problem]:
    """An endless, seeded stream of problems of one split (held-out questions are never in train)."""
    rng = random.Random(seed)
    want_heldout = split == "heldout"
    while True:
        p = make_problem(rng)
        if p.heldout == want_heldout:
            yield p


def heldout_problems(n: int, seed: int = EVAL_SEED) -> list[Problem]:
    """The first ``n`` held-out problems from ``seed``, distinct questions."""
    out: list[Problem] = []
    seen: set[str] = set()
    for p in problems(seed, "heldout"):
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")
