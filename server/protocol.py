"""The whole wire format: OpenAI's request and response models plus budgetforce's budget fields.

OpenAI's fields follow the API reference's order; our extensions sit in `BudgetFields`, one
block, each documented so the OpenAPI page shows it. A request turns itself into engine
parameters (`BudgetFields.resolve_budget`, `sampling`), which keeps the route handlers thin.

Budget precedence, per field (min and max separately): the explicit budget fields >
`thinking_token_budget` (vLLM) > `reasoning` (OpenRouter: `enabled`/`max_tokens`) >
`thinking` (Anthropic) > `reasoning.effort` > `reasoning_effort` > the server's defaults.
When a minimum and a maximum from different levels conflict, the lower-precedence one gives
way; when they come from the same level the request is rejected.
"""

from __future__ import annotations

import difflib
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from budgetforce.budget import Budget, BudgetError, Strategy
from server.settings import Effort, ServerSettings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FinishReason = Literal["stop", "length"]
# The budget fields a misspelled unknown field is compared with, and the other APIs' token caps,
# which resemble them but are not misspellings (e.g. `max_completion_tokens` on /v1/completions).
BUDGET_FIELD_NAMES = (
    "min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait_strings", "answer_prefix", "budget_strategy",
    "thinking_token_budget",
)  # fmt: skip
NOT_BUDGET_FIELDS = frozenset({"max_completion_tokens", "max_tokens", "min_tokens", "max_new_tokens", "min_new_tokens"})


class FieldError(ValueError):
    """A cross-field rule broken; `param` names the field the 400 points at."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class OpenAIModel(BaseModel):
    """Requests ignore unknown fields (clients send many); the route logs which ones."""

    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


# -- errors --------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- request pieces ------------------------------------------------------------------------------
class WireModel(BaseModel):
    """Strict types: `"5"` is not a number and `"yes"` is not a boolean, as in OpenAI's API."""

    model_config = ConfigDict(strict=True)


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(WireModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ResponseFormat(WireModel):
    type: Literal["text"] = Field(description="Only plain text; JSON modes are not supported.")


class ThinkingConfig(BaseModel):
    """Anthropic's `thinking` parameter."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(None, ge=0, description="Maximum thinking tokens.")


class ReasoningConfig(BaseModel):
    """OpenRouter's `reasoning` parameter."""

    model_config = ConfigDict(extra="forbid", strict=True)

    effort: Effort | None = None
    max_tokens: int | None = Field(None, ge=0, description="Maximum thinking tokens.")
    exclude: bool = Field(False, description="Think as usual but leave the reasoning text out of the response.")
    enabled: bool | None = Field(None, description="False turns the thinking off.")

    @model_validator(mode="after")
    def _disabled_has_no_budget(self) -> ReasoningConfig:
        if self.enabled is False and (self.max_tokens or self.effort not in (None, "none")):
            raise FieldError(
                "enabled",
                "`reasoning.enabled` is false but `reasoning.max_tokens` or `reasoning.effort` asks for thinking",
            )
        return self


@dataclass(frozen=True)
class ResolvedBudget:
    """A request's budget after precedence, and where its maximum came from.

    `max_source` names the request field that set the maximum, or None when it came from the
    server (defaults, effort table, limit); only those may be shrunk to fit the token cap.
    """

    budget: Budget | None
    max_source: str | None
    min_source: str | None
    hide_reasoning: bool


# -- the budget block ----------------------------------------------------------------------------
class BudgetFields(OpenAIModel):
    """budgetforce's extensions: top-level fields, so the openai SDK's `extra_body` carries them."""

    min_thinking_tokens: int | None = Field(
        None,
        ge=0,
        description="Thinking tokens before the model may close its thinking; an earlier close "
        "is replaced by a wait string (s1 budget forcing).",
    )
    max_thinking_tokens: int | None = Field(
        None,
        ge=0,
        description="Thinking tokens at which the end of thinking is forced; 0 = no thinking. "
        "Must leave room for an answer within `max_completion_tokens`.",
    )
    max_waits: int | None = Field(
        None, ge=0, description="How many early closes may be replaced by a wait string; null = no limit."
    )
    wait_strings: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="Continuations that replace an early close, in rotation "
        '(default: the model profile\'s, e.g. "Wait").',
    )
    answer_prefix: str | None = Field(
        None, max_length=4096, description="Text forced after a forced end of thinking (default: the profile's)."
    )
    budget_strategy: Strategy | None = Field(
        None, description="`engine`: a logits processor inside vLLM's batch; `rounds`: s1's stop-and-resubmit loop."
    )
    # Compatibility with other servers' budget fields, mapped onto the same budget.
    thinking_token_budget: int | None = Field(None, ge=-1, description="vLLM's maximum thinking tokens; -1 = unset.")
    reasoning_effort: Effort | None = Field(
        None, description="OpenAI's effort level, mapped to a budget by the server's table; `none` = no thinking."
    )
    thinking: ThinkingConfig | None = Field(None, description="Anthropic-style `{type, budget_tokens}`.")
    reasoning: ReasoningConfig | None = Field(
        None, description="OpenRouter-style `{effort, max_tokens, exclude, enabled}`."
    )
    include_reasoning: bool = Field(True, description="vLLM's switch; false leaves the reasoning text out.")

    @model_validator(mode="after")
    def _no_misspelled_budget_field(self) -> BudgetFields:
        """An unknown field that resembles a budget field is a typo, not a field to ignore."""
        for name in self.ignored_fields:
            close = [] if name in NOT_BUDGET_FIELDS else difflib.get_close_matches(name, BUDGET_FIELD_NAMES, 1, 0.7)
            if close:
                raise FieldError(name, f"unknown field `{name}`; did you mean `{close[0]}`?")
        return self

    @model_validator(mode="after")
    def _min_not_above_max(self) -> BudgetFields:
        lo, hi = self.min_thinking_tokens, self.max_thinking_tokens
        if lo is not None and hi is not None and lo > hi:
            raise FieldError(
                "min_thinking_tokens",
                f"`min_thinking_tokens` ({lo}) exceeds `max_thinking_tokens` ({hi}); lower the minimum or raise the maximum",
            )
        return self

    def resolve_budget(self, settings: ServerSettings) -> ResolvedBudget:
        """Apply the precedence order and the server's limit; raises `BudgetError` for the client's mistakes."""
        levels = self._levels(settings)
        lo, lo_at, lo_src = _first(levels, 0)
        hi, hi_at, hi_src = _first(levels, 1)
        if lo is not None and hi is not None and lo > hi:  # different levels: the lower-precedence one yields
            if lo_at < hi_at:
                hi = lo
            else:
                lo = hi
        limit = settings.max_thinking_tokens_limit
        if limit is not None:
            for value, src, name in ((lo, lo_src, "minimum"), (hi, hi_src, "maximum")):
                if value is not None and value > limit and src is not None:
                    raise BudgetError(
                        f"`{src}` asks for a thinking {name} of {value} tokens; this server allows at most {limit}",
                        param=src,
                    )
            hi = limit if hi is None else min(hi, limit)
            lo = min(lo or 0, hi)
        strategy = self.budget_strategy or settings.default_budget_strategy
        max_waits = self.max_waits if self.max_waits is not None else settings.default_max_waits
        try:
            budget = Budget(
                min_thinking_tokens=lo or 0,
                max_thinking_tokens=hi,
                max_waits=max_waits,
                wait_strings=tuple(self.wait_strings) if self.wait_strings else None,
                answer_prefix=self.answer_prefix,
                strategy=strategy,
            )
        except ValueError as exc:  # pragma: no cover - the validators above keep this unreachable
            raise BudgetError(str(exc), param="min_thinking_tokens") from None
        hide = not self.include_reasoning or bool(self.reasoning and self.reasoning.exclude)
        return ResolvedBudget(budget if budget.is_active else None, hi_src, lo_src, hide)

    def _levels(self, settings: ServerSettings) -> list[tuple[int | None, int | None, str | None]]:
        """(min, max, request field) per precedence level, highest first; field None = server default."""
        table = settings.reasoning_effort_budgets
        levels: list[tuple[int | None, int | None, str | None]] = [
            (self.min_thinking_tokens, None, "min_thinking_tokens"),
            (None, self.max_thinking_tokens, "max_thinking_tokens"),  # same level: the validator orders them
        ]
        if self.thinking_token_budget is not None and self.thinking_token_budget >= 0:
            levels.append((None, self.thinking_token_budget, "thinking_token_budget"))
        r = self.reasoning
        if r is not None and r.enabled is False:
            levels.append((None, 0, "reasoning.enabled"))
        elif r is not None and r.max_tokens is not None:
            levels.append((None, r.max_tokens, "reasoning.max_tokens"))
        if self.thinking is not None and self.thinking.type == "disabled":
            levels.append((None, 0, "thinking.type"))
        elif self.thinking is not None and self.thinking.budget_tokens is not None:
            levels.append((None, self.thinking.budget_tokens, "thinking.budget_tokens"))
        for effort in (r.effort if r else None, self.reasoning_effort):
            if effort is not None:  # the operator's table: it may be shrunk to fit, so no request field is named
                levels.append((table[effort].min_thinking_tokens, table[effort].max_thinking_tokens, None))
        levels.append((settings.default_min_thinking_tokens, settings.default_max_thinking_tokens, None))
        return levels


def _first(levels: list[tuple[int | None, int | None, str | None]], i: int) -> tuple[int | None, int, str | None]:
    """The first level that sets field ``i`` (0 min, 1 max): (value, level index, source)."""
    for at, level in enumerate(levels):
        if level[i] is not None:
            return level[i], at, level[2]
    return None, len(levels), None


# -- requests ------------------------------------------------------------------------------------
class SamplingFields(BudgetFields):
    """What chat and text completions share, besides the prompt."""

    # vLLM's sampling extensions (OpenAI's own sampling fields sit in each request, in its order).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None

    def sampling(self) -> dict[str, Any]:
        """vLLM `SamplingParams` fields of one choice (n, seed offsets and stop strings are the server's)."""
        out: dict[str, Any] = {"max_tokens": self.token_cap}
        for name in ("frequency_penalty", "presence_penalty", "temperature", "top_p", "top_k", "min_p",
                     "repetition_penalty", "min_tokens", "ignore_eos"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @property
    def token_cap(self) -> int | None:
        raise NotImplementedError

    @property
    def stop_strings(self) -> list[str]:
        stop = getattr(self, "stop", None)
        return [stop] if isinstance(stop, str) else list(stop or [])

    @property
    def include_usage(self) -> bool:
        options = getattr(self, "stream_options", None)
        return bool(options and options.include_usage)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if getattr(self, "stream_options", None) is not None and not getattr(self, "stream", False):
            raise FieldError("stream_options", "`stream_options` is only allowed when `stream` is true")
        return self

    @model_validator(mode="after")
    def _min_tokens_within_cap(self) -> SamplingFields:
        cap = self.token_cap
        if cap is not None and self.min_tokens is not None and self.min_tokens > cap:
            raise FieldError("min_tokens", f"`min_tokens` ({self.min_tokens}) exceeds the token cap ({cap})")
        return self


Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None
Temperature = Annotated[float | None, Field(None, ge=0, le=2)]
TopP = Annotated[float | None, Field(None, gt=0, le=1)]
Penalty = Annotated[float | None, Field(None, ge=-2, le=2)]
Seed = Annotated[int | None, Field(None, ge=INT64_MIN, le=INT64_MAX)]
STOP_DOC = "Up to 16 strings that end the answer (never matched in the thinking, nor in the whitespace opening it)."


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`. `max_completion_tokens` caps thinking plus answer, as OpenAI defines it."""

    # OpenAI's fields, in the reference's order.
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(None, description="The served model's id; omitted: the served model.")
    frequency_penalty: Penalty = None
    logprobs: bool | None = Field(False, description="Not supported; must be false.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Not supported.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Cap on thinking plus answer tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Deprecated alias of `max_completion_tokens`.")
    n: int = Field(1, ge=1, le=64)
    presence_penalty: Penalty = None
    response_format: ResponseFormat | None = None
    seed: Seed = Field(None, description="Choice i samples with seed + i.")
    stop: Stop = Field(None, description=STOP_DOC)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = None
    top_p: TopP = None
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported; must be empty.")
    user: str | None = None

    @model_validator(mode="after")
    def _one_token_cap(self) -> ChatCompletionRequest:
        a, b = self.max_completion_tokens, self.max_tokens
        if a is not None and b is not None and a != b:
            raise FieldError(
                "max_tokens", f"`max_completion_tokens` ({a}) and its alias `max_tokens` ({b}) differ; set one"
            )
        return self

    @model_validator(mode="after")
    def _unsupported(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs:
            raise FieldError("logprobs", "`logprobs` and `top_logprobs` are not supported by this server")
        if self.tools:
            raise FieldError("tools", "`tools` are not supported by this server")
        return self

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """The messages as the chat template takes them (`developer` is a system message)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(SamplingFields):
    """`POST /v1/completions`: a raw prompt (text or token ids); the thinking opens after it if the profile says so."""

    model: str | None = Field(None, description="The served model's id; omitted: the served model.")
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1, max_length=64)
        ]
    )
    echo: bool = Field(False, description="Not supported; must be false.")
    frequency_penalty: Penalty = None
    logprobs: int | None = Field(None, ge=0, le=5, description="Not supported.")
    max_tokens: int | None = Field(
        None, ge=1, description="Cap on thinking plus answer tokens; omitted: the rest of the context (not 16)."
    )
    n: int = Field(1, ge=1, le=64)
    presence_penalty: Penalty = None
    seed: Seed = Field(None, description="Choice i samples with seed + i.")
    stop: Stop = Field(None, description=STOP_DOC)
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Not supported.")
    temperature: Temperature = None
    top_p: TopP = None
    user: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo or self.logprobs or self.suffix:
            raise FieldError(
                "echo" if self.echo else "logprobs" if self.logprobs else "suffix",
                "`echo`, `logprobs` and `suffix` are not supported by this server",
            )
        if isinstance(self.prompt, list) and len(self.prompt) * self.n > 64:
            raise FieldError("n", f"{len(self.prompt)} prompts x `n` {self.n} exceeds 64 choices")
        return self

    @property
    def token_cap(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# -- responses -----------------------------------------------------------------------------------
class BudgetReport(BaseModel):
    """What the budget did to one choice."""

    thinking_tokens: int = Field(description="Tokens inside the thinking, waits and forced tokens included.")
    waits_inserted: int | None = Field(description="Early closes replaced by a wait string (null: cut by `stop`).")
    forced_end: bool = Field(description="Whether the end of thinking was forced at the maximum.")
    strategy: Strategy | None = Field(description="How the budget was enforced; null: no budget.")


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = Field(None, description="The thinking (DeepSeek/SGLang/LiteLLM name).")
    reasoning: str | None = Field(None, description="The same thinking (vLLM/OpenRouter/Ollama name).")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason
    budget: BudgetReport


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None
    budget: BudgetReport | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    reasoning_content: str | None = None
    reasoning: str | None = None
    logprobs: None = None
    finish_reason: FinishReason | None
    budget: BudgetReport | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "budgetforce"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
