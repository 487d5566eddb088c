"""Seeded multi-step arithmetic word problems with exact integer answers.

GSM8K-flavoured: a person starts with some items, collects several batches of them (a sum of
3-5 two-digit numbers), buys packs (a small product), receives or gives items away. Every problem
needs 2-4 operations of ``+ - *``; about 98% contain a sum of several numbers, the step a tiny
model gets wrong when it does it in one go, and gets right when it adds the numbers one at a time.

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
    """One operation over ``args`` (``+`` may have several) and the sentence that explains it."""

    args: tuple[int, ...]
    op: Op
    value: int
    say: str  # e.g. "The bags hold {expr} apples." with {expr} standing for "6*14 = 84"
    args_from: tuple[int | None, ...] = ()  # per arg: index of the earlier step it comes from

    def source(self, i: int) -> int | None:
        return self.args_from[i] if i < len(self.args_from) else None


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


def apply(op: Op, args: tuple[int, ...] | list[int]) -> int:
    """The exact value of ``args[0] op args[1] op ...``."""
    if op == "+":
        return sum(args)
    if op == "-":
        return args[0] - sum(args[1:])
    out = 1
    for a in args:
        out *= a
    return out


COUNT_WORDS = {3: "three", 4: "four", 5: "five"}
COLLECT = (
    "{pronoun} picks {nums} {item} on {count} days.",
    "{pronoun} collects {nums} {item} from {count} friends.",
    "{pronoun} finds {nums} {item} in {count} rooms.",
)


def _listing(nums: list[int]) -> str:
    return ", ".join(map(str, nums[:-1])) + f" and {nums[-1]}"


def make_problem(rng: random.Random) -> Problem:
    """One problem drawn from ``rng``: 2-4 operations, usually one of them a sum of 3-5 numbers."""
    name = rng.choice(NAMES)
    item, pack = rng.choice(ITEMS)
    pronoun = "He" if name in NAMES[0::2] else "She"
    recipient = rng.choice(RECIPIENTS)
    sentences: list[str] = []
    steps: list[Step] = []
    total: int | None = None
    start: int | None = None
    total_from: int | None = None  # the step whose value is the running total (None: the start)
    opening = rng.choice(("start", "start", "collect", "buy"))
    kinds = [opening] + [rng.choice(("collect", "buy", "give", "get")) for _ in range(rng.randint(1, 2))]
    if "collect" not in kinds:
        kinds[rng.randrange(len(kinds))] = "collect"
        if kinds[0] in ("give", "get"):
            kinds[0] = "start"
    # at most 4 operations: "collect"/"buy" after the opening cost two (the group, then the addition)
    while sum(2 if (k in ("collect", "buy") and i > 0) else 1 for i, k in enumerate(kinds) if k != "start") > 4:
        kinds.pop()
    for i, kind in enumerate(kinds):
        if kind == "give" and (total is None or total < 25):
            kind = "get"
        if kind == "start":
            total = start = rng.randint(11, 99)
            sentences.append(f"{name} has {total} {item}.")
            continue
        text = ""
        group: Step | None = None
        if kind == "collect":
            nums = [rng.randint(11, 99) for _ in range(rng.randint(3, 5))]
            text = rng.choice(COLLECT).format(
                pronoun=pronoun, nums=_listing(nums), item=item, count=COUNT_WORDS[len(nums)]
            )
            group = Step(tuple(nums), "+", sum(nums), f"Together that is {{expr}} {item}.")
        elif kind == "buy":
            n, m = rng.randint(2, 9), rng.randint(11, 29)
            text = f"{pronoun} buys {n} {pack} of {item} with {m} in each."
            group = Step((n, m), "*", n * m, f"The {pack} hold {{expr}} {item}.")
        elif kind == "give":
            assert total is not None
            k = rng.randint(11, min(99, total - 1))
            text = f"{pronoun} gives {k} {item} to {recipient}."
            steps.append(
                Step(
                    (total, k),
                    "-",
                    total - k,
                    f"After giving {k} away, {name} has {{expr}} {item}.",
                    (total_from, None),
                )
            )
            total -= k
        else:
            k = rng.randint(11, 99)
            text = f"{pronoun} {rng.choice(GET_VERBS)} {k} more {item}."
            if total is None:
                total, start = k, None
                sentences.append(f"{name} {rng.choice(GET_VERBS)} {k} {item}.")
                continue
            steps.append(
                Step(
                    (total, k),
                    "+",
                    total + k,
                    f"After getting {k} more, {name} has {{expr}} {item}.",
                    (total_from, None),
                )
            )
            total += k
        if group is not None:
            steps.append(group)
            if total is None:
                total = group.value
            else:
                steps.append(
                    Step((total, group.value), "+", total + group.value, f"Now {name} has {{expr}} {item}.",
                         (total_from, len(steps) - 1))
                )  # fmt: skip
                total += group.value
        total_from = len(steps) - 1
        if not sentences:
            sentences.append(text.replace(pronoun, name, 1))
        elif len(sentences) == 1 and start is not None:
            sentences.append(text)
        else:
            sentences.append(f"Then {text[0].lower()}{text[1:]}")
    sentences.append(f"How many {item} does {name} have now?")
    assert total is not None
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
