"""What an accuracy sweep runs: its points (s1's budgets, the modes beyond s1), parsed from the CLI's options."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from budgetforce.bench.types import BenchError, BudgetSettings
from budgetforce.core.budget import Strategy

def parse_int_list(spec: str | None, option: str, example: str = "512,1024") -> list[int]:
    """ "512,1024" -> [512, 1024]; a readable BenchError for anything else."""
    if not spec:
        return []
    values = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            raise BenchError(f"`{option}` expects comma-separated non-negative integers like {example}; got {spec!r}")
        values.append(int(part))
    return values


def parse_pairs(spec: str | None, option: str) -> list[tuple[int, int]]:
    """ "256:512,512:1024" -> [(256, 512), (512, 1024)]."""
    if not spec:
        return []
    pairs = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition(":")
        if not (sep and lo.isdigit() and hi.isdigit()):
            raise BenchError(f"`{option}` expects comma-separated MIN:MAX pairs like 256:512,512:1024; got {spec!r}")
        if int(lo) > int(hi):
            raise BenchError(f"`{option}`: minimum {lo} exceeds maximum {hi} in {part.strip()!r}")
        pairs.append((int(lo), int(hi)))
    return pairs


POINT_ALIASES = {"budget_strategy": "strategy"}  # the request's name for the strategy


def parse_point(spec: str, option: str = "--point") -> BudgetSettings:
    """One budget point from a JSON object of budget fields (s1's and the modes'); a readable
    BenchError for bad JSON, an unknown field or a bad value.

    >>> parse_point('{"probe_every": 16, "probe_agree": 2, "max_thinking_tokens": 256}').label
    'max=256,probe=16x2'
    """
    try:
        fields = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise BenchError(f"`{option}` is not JSON ({exc.msg} at character {exc.pos}): {spec!r}") from exc
    if not isinstance(fields, dict):
        raise BenchError(f"`{option}` must be a JSON object of budget fields, like '{{\"max_thinking_tokens\": 512}}'")
    known = list(BudgetSettings.model_fields)
    for alias, name in POINT_ALIASES.items():
        if alias in fields:
            if name in fields:
                raise BenchError(f"`{option}` sets both `{alias}` and `{name}`; give one")
            fields[name] = fields.pop(alias)
    unknown = [name for name in fields if name not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, [*known, *POINT_ALIASES], n=1)
            hints.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise BenchError(f"`{option}`: unknown field {', '.join(hints)}; known fields: {', '.join(known)}")
    try:
        return BudgetSettings(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].replace("a valid tuple", "a list (a JSON array)")
        raise BenchError(f"`{option}` {spec}: " + (f"`{where}`: " if where else "") + message) from exc


class SweepSpec(BaseModel):
    """Which budgets to run: each list adds points; strategies and wait strings multiply them.

    A "waits" point forbids ending the thinking before `waits_min` tokens (default: `waits_max`,
    else one below the completion cap) but inserts at most N waits, which is s1's "suppress the
    end of thinking N times" extrapolation. `extra` points (the CLI's `--point`) come last, as
    given: they are not crossed with wait strings, strategies or the answer prefix.
    """

    baseline: bool = False
    max_only: list[int] = Field(default_factory=list)
    min_only: list[int] = Field(default_factory=list)
    min_max: list[tuple[int, int]] = Field(default_factory=list)
    waits: list[int] = Field(default_factory=list)
    waits_min: int | None = Field(default=None, ge=1)
    waits_max: int | None = Field(default=None, ge=1)
    votes: list[int] = Field(default_factory=list)
    wait_strings: list[str] = Field(default_factory=list)
    strategies: list[Strategy] = Field(default_factory=list)
    answer_prefix: str | None = None
    extra: list[BudgetSettings] = Field(default_factory=list)

    def points(self, max_tokens: int) -> list[BudgetSettings]:
        """The sweep's budgets in a stable order (baseline, max, min, min:max, waits, votes, extra)."""
        plain: list[BudgetSettings] = [BudgetSettings(max_thinking_tokens=hi) for hi in self.max_only]
        forcing: list[dict[str, Any]] = [{"min_thinking_tokens": lo} for lo in self.min_only]
        forcing += [{"min_thinking_tokens": lo, "max_thinking_tokens": hi} for lo, hi in self.min_max]
        waits_min = self.waits_min or self.waits_max or max(max_tokens - 1, 1)  # servers want min < cap
        forcing += [
            {"min_thinking_tokens": waits_min, "max_thinking_tokens": self.waits_max, "max_waits": n}
            for n in self.waits
        ]
        variants = [(s,) for s in self.wait_strings] or [None]
        points = [BudgetSettings()] if self.baseline else []
        try:
            points += plain
            points += [BudgetSettings(**fields, wait_strings=w) for fields in forcing for w in variants]
        except ValidationError as exc:
            raise BenchError(f"invalid sweep point: {exc.errors()[0]['msg']}") from exc
        if self.answer_prefix is not None or self.strategies:
            points = [
                p if p.is_baseline else p.model_copy(update={"answer_prefix": self.answer_prefix, "strategy": s})
                for p in points
                for s in (self.strategies or [None])
            ]
        try:  # votes: n plain thinkings each, graded on their majority; not crossed with the rest
            points += [BudgetSettings(n=n, budget_aggregate="vote") for n in self.votes]
        except ValidationError as exc:
            raise BenchError(f"invalid --votes point: {exc.errors()[0]['msg']}") from exc
        unique = list(dict.fromkeys([*points, *self.extra]))
        if not unique:
            raise BenchError(
                "empty sweep: give at least one of --max, --min, --min-max, --waits, --votes, --point or --baseline"
            )
        check_labels(unique)
        return unique


def check_labels(points: Sequence[BudgetSettings]) -> None:
    """Labels are resume keys: two different points must never share one."""
    seen: dict[str, BudgetSettings] = {}
    for point in points:
        other = seen.setdefault(point.label, point)
        if other != point:
            raise BenchError(
                f"two different points share the label {point.label!r}: "
                f"{other.model_dump(exclude_none=True)} and {point.model_dump(exclude_none=True)}"
            )
