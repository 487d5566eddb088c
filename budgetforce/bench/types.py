"""The few types every benchmark shares, in the spirit of openai/simple-evals `types.py`.

A sampler turns a conversation plus a thinking budget into a `SamplerResponse` that records the
exact request body sent and the exact JSON received, so a per-sample JSONL line can always be
replayed or audited. An eval turns data into `Example`s and grades answer text with a pure
function; the sweep runner owns concurrency, resumption and aggregation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

Message = dict[str, str]  # keys role, content
MessageList = list[Message]
Strategy = Literal["engine", "rounds"]
Backend = Literal["budgetforce", "vllm"]


class BenchError(Exception):
    """A mistake in the user's input or environment; the CLI prints it without a traceback."""


class BudgetSettings(BaseModel):
    """One point of a sweep: the per-request thinking budget, as the budgetforce server takes it.

    All fields None means "no budget" (the unconstrained baseline).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_thinking_tokens: int | None = Field(default=None, ge=0)
    max_thinking_tokens: int | None = Field(default=None, ge=0)
    max_waits: int | None = Field(default=None, ge=0)
    wait_strings: tuple[str, ...] | None = None
    answer_prefix: str | None = None
    strategy: Strategy | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> BudgetSettings:
        lo, hi = self.min_thinking_tokens, self.max_thinking_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"`min_thinking_tokens` ({lo}) exceeds `max_thinking_tokens` ({hi})")
        return self

    @property
    def is_baseline(self) -> bool:
        return self.min_thinking_tokens is None and self.max_thinking_tokens is None and self.max_waits is None

    @property
    def label(self) -> str:
        """A short, stable, human-readable key; also the resume key of the point."""
        parts: list[str] = []
        if self.min_thinking_tokens is not None:
            parts.append(f"min={self.min_thinking_tokens}")
        if self.max_thinking_tokens is not None:
            parts.append(f"max={self.max_thinking_tokens}")
        if self.max_waits is not None:
            parts.append(f"waits={self.max_waits}")
        if self.wait_strings is not None:
            parts.append("wait=" + "|".join(self.wait_strings))
        if self.answer_prefix is not None:
            parts.append(f"prefix={self.answer_prefix!r}")
        if self.strategy is not None:
            parts.append(f"strategy={self.strategy}")
        return ",".join(parts) or "baseline"

    def within(self, thinking_tokens: int) -> bool:
        """Whether a sample obeyed this budget (the s1 Control indicator)."""
        lo = self.min_thinking_tokens or 0
        hi = self.max_thinking_tokens
        return thinking_tokens >= lo and (hi is None or thinking_tokens <= hi)


@dataclass
class SamplerResponse:
    """What one chat completion produced, with the request and the response kept verbatim."""

    request: dict[str, Any]
    response: dict[str, Any] | None
    content: str = ""
    reasoning: str = ""
    thinking_tokens: int | None = None
    thinking_tokens_source: Literal["usage", "budget", "tokenizer"] | None = None
    completion_tokens: int | None = None
    waits_inserted: int | None = None
    forced_end: bool | None = None
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

    def __init__(self, examples: list[Example], num_examples: int | None = None, seed: int = 0) -> None:
        if num_examples is not None and num_examples < len(examples):
            examples = random.Random(seed).sample(examples, num_examples)
        self.examples = examples

    def messages(self, example: Example) -> MessageList:
        return [{"role": "user", "content": self.QUERY_TEMPLATE.format(question=example.question)}]

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        """Return (score in [0, 1], extracted answer) for the answer part of a response."""
        raise NotImplementedError
