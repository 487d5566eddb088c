"""The few types every benchmark shares, in the spirit of openai/simple-evals `types.py`.

A sampler turns a conversation plus a thinking budget into a `SamplerResponse` that records the
exact request body sent and the exact JSON received, so a per-sample JSONL line can always be
replayed or audited. An eval turns data into `Example`s and grades answer text with a pure
function; the sweep runner owns concurrency, resumption and aggregation.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from budgetforce.core.budget import (
    MODES,
    REPORT_KEYS,
    Budget,
    BudgetRequest,
    check_min_max,
    check_vote_fields,
    optional_fields,
)
from budgetforce.core.vote import VoteGrader

Message = dict[str, str]  # keys role, content
MessageList = list[Message]
Backend = Literal["budgetforce", "vllm"]


class BenchError(Exception):
    """A mistake in the user's input or environment; the CLI prints it without a traceback."""


# The thinking modes beyond s1 that the budgetforce server takes as top-level request fields
# (README, "Thinking modes beyond s1"): per mode, the fields that belong to it, its switches first.
MODE_FIELDS: dict[str, tuple[str, ...]] = {mode: (*on, *qualifiers) for mode, (on, qualifiers) in MODES.items()}
MODE_FIELD_NAMES = tuple(name for names in MODE_FIELDS.values() for name in names)
# What the modes add to a choice's `budget` report; kept per sample and summarised per point.
# each key once: two modes may report the same key (`early_exit` by probes and by the logit margin)
MODE_REPORT_KEYS = tuple(dict.fromkeys(key for keys in REPORT_KEYS.values() for key in keys))

LABEL_TEXT_CHARS = 24  # longer free text (an intervention, a probe lead) is cut in labels, with a digest
LABEL_LIST_CHARS = 40  # likewise a long list of strings (banned strings, paragraph breaks)
_BARE_UNSAFE = set(" |,='\"…~@<>")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()


def label_text(text: str, limit: int = LABEL_TEXT_CHARS) -> str:
    """A quoted string for a label; past `limit` characters cut, with a digest of the whole so that
    texts sharing their start keep distinct labels.

    >>> print(label_text("I must answer in one sentence."))
    'I must answer in one sen…'~9a6866
    """
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit] + "…") + "~" + _digest(text)


def label_list(values: tuple[str, ...], limit: int = LABEL_LIST_CHARS) -> str:
    """Strings joined by "|", plain words bare and anything else quoted; a long list is cut."""
    words = [v if v and v.isprintable() and not _BARE_UNSAFE & set(v) else repr(v) for v in values]
    shown: list[str] = []
    for word in words:
        if shown and len("|".join([*shown, word])) > limit:
            return "|".join(shown) + f"|…+{len(words) - len(shown)}~" + _digest("\0".join(values))
        shown.append(word)
    return "|".join(shown)


def _part(name: str, fmt: Callable[[Any], str]) -> Callable[[Any], str | None]:
    """A label part: the field's value formatted, or None when the field is not set."""
    return lambda point: None if getattr(point, name) is None else fmt(getattr(point, name))


def _intervention_part(point: Any) -> str | None:
    at = "" if point.intervention_at is None else f"@{point.intervention_at}"
    if point.thinking_intervention is not None:
        return f"intervene{at}={label_text(point.thinking_intervention)}"
    return f"intervene{at}" if at else None


def _probe_part(point: Any) -> str | None:
    if point.probe_every is None and point.probe_agree is None:
        return None
    every = "?" if point.probe_every is None else str(point.probe_every)
    return f"probe={every}" + ("" if point.probe_agree is None else f"x{point.probe_agree}")


# A point's label, part by part in this order (the labels are resume keys: keep them as they are).
_S1_PARTS = (_part("min_thinking_tokens", "min={}".format), _part("max_thinking_tokens", "max={}".format),
             _part("max_waits", "waits={}".format))  # fmt: skip
_MODE_PARTS = (
    _part("banned_thinking_strings", lambda v: "nowait=" + label_list(v)), _intervention_part,
    _part("max_answer_tokens", "answer<={}".format), _part("alpha", lambda v: f"alpha={v!r}"),
    _part("alpha_moment_tokens", "alpha@{}".format), _part("wait_probability", lambda v: f"p={v!r}"),
    _part("wait_decay", str), _part("paragraph_breaks", lambda v: "breaks=" + label_list(v)), _probe_part,
    _part("probe_lead", lambda v: f"lead={label_text(v)}"), _part("probe_max_tokens", "probe_max={}".format),
    _part("exit_margin", lambda v: f"margin={v!r}"), _part("exit_breaks", lambda v: "exit_breaks=" + label_list(v)),
)  # fmt: skip


def _vote_part(point: Any) -> str | None:
    if point.budget_aggregate is None:
        return None
    return f"vote{'?' if point.n is None else point.n}" + ("" if point.vote_grader is None else f"={point.vote_grader}")


_TAIL_PARTS = (_part("wait_strings", lambda v: "wait=" + "|".join(v)), _part("answer_prefix", lambda v: f"prefix={v!r}"),
               _part("strategy", "strategy={}".format), _vote_part,
               _part("total_thinking_tokens", "total={}".format))  # fmt: skip


class _SettingsBase(BaseModel):
    """One point of a sweep: the per-request thinking budget, as the budgetforce server takes it.

    s1's fields (minimum, maximum, waits, wait strings, answer prefix, strategy) and the fields of
    the thinking modes beyond s1 (`MODE_FIELDS`: banned strings, an intervention, an answer
    budget, AlphaOne's scheduled waits, early exit by answer probes). The fields are
    `budgetforce.core.budget.Budget`'s, derived from it (optional: None = not sent, with its
    ranges); the server validates their combinations. All fields None means "no budget" (the
    unconstrained baseline).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Parallel thinking with a vote (request-level fields, the server's own; `n` is OpenAI's).
    # A voting sample is graded on the majority's answer and counts the thinking of all its choices.
    n: int | None = Field(None, ge=2, description="Choices per request; only with `budget_aggregate: \"vote\"`.")
    budget_aggregate: Literal["vote"] | None = BudgetRequest.model_fields["budget_aggregate"]
    vote_grader: VoteGrader | None = Field(
        None, description="How the server reads an answer for the vote; default: the eval's own grader."
    )
    total_thinking_tokens: int | None = BudgetRequest.model_fields["total_thinking_tokens"]

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Any:
        check_min_max(self.min_thinking_tokens, self.max_thinking_tokens)  # type: ignore[attr-defined]
        check_vote_fields(self.budget_aggregate, self.vote_grader, self.total_thinking_tokens,
                          self.max_thinking_tokens)  # type: ignore[attr-defined]  # fmt: skip
        # the harness grades one answer per sample: several choices only as a vote's
        if self.n is not None and self.budget_aggregate is None:
            raise ValueError('`n` goes with `budget_aggregate: "vote"` (a sample is graded on one answer)')
        if self.budget_aggregate is not None and self.n is None:
            raise ValueError('`budget_aggregate: "vote"` needs `n`, the number of choices that vote (2 or more)')
        return self

    @property
    def votes(self) -> bool:
        """A voting point: `n` choices, graded on their majority."""
        return self.budget_aggregate == "vote"

    @property
    def is_baseline(self) -> bool:
        """No field set at all: the request goes out without any budget field."""
        return all(getattr(self, name) is None for name in type(self).model_fields)

    @property
    def has_s1_budget(self) -> bool:
        """A minimum, a maximum or a wait count: the points s1's Control is measured on."""
        return not self.votes and (
            self.min_thinking_tokens is not None or self.max_thinking_tokens is not None or self.max_waits is not None
        )

    @property
    def modes(self) -> tuple[str, ...]:
        """The thinking modes beyond s1 this point touches (any of a mode's fields set), in `MODE_FIELDS` order."""
        return tuple(m for m, names in MODE_FIELDS.items() if any(getattr(self, n) is not None for n in names))

    @property
    def mode_fields(self) -> tuple[str, ...]:
        """The mode fields this point sets."""
        return tuple(name for name in MODE_FIELD_NAMES if getattr(self, name) is not None)

    @property
    def label(self) -> str:
        """A short, stable, human-readable key; also the resume key of the point.

        s1's parts come as they always have (so earlier runs still resume), the modes' parts
        between the wait count and the wait strings:

        >>> BudgetSettings(max_thinking_tokens=256, probe_every=16, probe_agree=2).label
        'max=256,probe=16x2'
        >>> print(BudgetSettings(alpha_moment_tokens=120, wait_probability=0.5, paragraph_breaks=["\\n"]).label)
        alpha@120,p=0.5,breaks='\\n'
        """
        parts = (part(self) for part in (*_S1_PARTS, *_MODE_PARTS, *_TAIL_PARTS))
        return ",".join(p for p in parts if p is not None) or "baseline"

    def within(self, thinking_tokens: int) -> bool:
        """Whether a sample obeyed this budget (the s1 Control indicator)."""
        lo = self.min_thinking_tokens or 0
        hi = self.max_thinking_tokens
        return thinking_tokens >= lo and (hi is None or thinking_tokens <= hi)


BudgetSettings = create_model(
    "BudgetSettings", __base__=_SettingsBase, __module__=__name__, __doc__=_SettingsBase.__doc__,
    **optional_fields(Budget),
)  # fmt: skip


@dataclass
class SamplerResponse:
    """What one chat completion produced, with the request and the response kept verbatim."""

    request: dict[str, Any]
    response: dict[str, Any] | None
    content: str = ""
    reasoning: str = ""
    thinking_tokens: int | None = None
    thinking_tokens_source: Literal["usage", "budget", "tokenizer", "vote"] | None = None
    completion_tokens: int | None = None
    waits_inserted: int | None = None
    forced_end: bool | None = None
    # the modes' report keys (`MODE_REPORT_KEYS`), None when the response lacks them
    scheduled_waits: int | None = None
    answer_tokens: int | None = None
    answer_truncated: bool | None = None
    intervened: bool | None = None
    early_exit: bool | None = None
    probes: int | None = None
    probe_tokens: int | None = None
    exit_tokens_saved: int | None = None
    vote: dict[str, Any] | None = None  # the response's `vote` object (a voting point), verbatim
    finish_reason: str | None = None
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None


class SamplerBase(Protocol):
    """Anything that can answer a conversation under a thinking budget."""

    async def __call__(
        self, messages: MessageList, budget: BudgetSettings, seed: int | None = None
    ) -> SamplerResponse: ...


@dataclass(frozen=True)
class Example:
    """One problem: a stable id (the resume key), the prompt text and the reference answer."""

    id: str
    question: str
    answer: str


@dataclass
class SingleEvalResult:
    """Result of grading one sample; per-sample extras (tokens, waits, latency) go in `metrics`."""

    score: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    extracted_answer: str | None = None
    convo: MessageList | None = None


@dataclass
class EvalResult:
    """Aggregate over many samples: the top-line score and the reduced metrics."""

    score: float | None
    metrics: dict[str, float | None]


class Eval:
    """A data set plus its prompt and grader; subclasses set `name`, `QUERY_TEMPLATE`, `grade`."""

    name: str = "eval"
    QUERY_TEMPLATE: str = "{question}"
    vote_grader: VoteGrader = "exact"  # how the server reads answers for a vote: as `grade` does

    def __init__(self, examples: list[Example], num_examples: int | None = None, seed: int = 0) -> None:
        if num_examples is not None and num_examples < len(examples):
            examples = random.Random(seed).sample(examples, num_examples)
        self.examples = examples

    def messages(self, example: Example) -> MessageList:
        return [{"role": "user", "content": self.QUERY_TEMPLATE.format(question=example.question)}]

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        """Return (score in [0, 1], extracted answer) for the answer part of a response."""
        raise NotImplementedError
