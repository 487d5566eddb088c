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

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from budgetforce.budget import (  # noqa: F401 - the budget block lives in the core, re-exported here
    BUDGET_FIELD_NAMES,
    NOT_BUDGET_FIELDS,
    REPORT_KEYS,
    BudgetRequest,
    FieldError,
    ReasoningConfig,
    ResolvedBudget,
    Strategy,
    ThinkingConfig,
    misspelled_budget_field,
)
from budgetforce.legacy_server.settings import ServerSettings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FinishReason = Literal["stop", "length"]


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


# -- the budget block ----------------------------------------------------------------------------
class BudgetFields(OpenAIModel, BudgetRequest):
    """budgetforce's extensions (`budgetforce.budget.BudgetRequest`): top-level fields, so `extra_body` carries them."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _no_misspelled_budget_field(self) -> BudgetFields:
        """An unknown field that resembles a budget field is a typo, not a field to ignore."""
        error = misspelled_budget_field(self.ignored_fields)
        if error is not None:
            raise error
        return self

    def resolve_budget(self, settings: ServerSettings) -> ResolvedBudget:
        """Apply the precedence order and the server's limit; raises `BudgetError` for the client's mistakes."""
        return self.resolve(settings)


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
    """What the budget did to one choice.

    The modes beyond s1 add their keys only to requests that use them (`Budget.report_keys`):
    a key left unset at construction is left out of the response, while null means unknown.
    """

    thinking_tokens: int = Field(description="Tokens inside the thinking, waits and forced tokens included.")
    waits_inserted: int | None = Field(description="Early closes replaced by a wait string (null: cut by `stop`).")
    forced_end: bool = Field(description="Whether the end of thinking was forced at the maximum.")
    strategy: Strategy | None = Field(description="How the budget was enforced; null: no budget.")
    answer_tokens: int | None = Field(
        None, description="With `max_answer_tokens`: answer tokens after the close (a forced answer prefix "
        "included, the end of sequence excluded).",
    )  # fmt: skip
    answer_truncated: bool | None = Field(
        None, description="With `max_answer_tokens`: the answer reached it and its end was forced."
    )
    intervened: bool | None = Field(None, description="With `thinking_intervention`: whether it was forced in.")
    scheduled_waits: int | None = Field(
        None, description="With a wait schedule (`alpha`, `alpha_moment_tokens`): waits it inserted (null: unknown)."
    )
    early_exit: bool | None = Field(None, description="With `probe_every`: whether agreeing probes ended the thinking.")
    probes: int | None = Field(None, description="With `probe_every`: answer probes run.")
    probe_tokens: int | None = Field(None, description="With `probe_every`: tokens the probes generated.")

    @model_serializer(mode="wrap")
    def _only_modes_used(self, handler: SerializerFunctionWrapHandler):  # unannotated: the schema stays the model's
        data = handler(self)
        for key in REPORT_MODE_KEYS - self.model_fields_set:
            data.pop(key, None)
        return data


REPORT_MODE_KEYS = frozenset(k for keys in REPORT_KEYS.values() for k in keys)


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
