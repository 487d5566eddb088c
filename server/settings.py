"""Server-wide settings: flags and `BUDGETFORCE_*` environment variables, validated once.

Example:
    BUDGETFORCE_API_KEY=sk-local BUDGETFORCE_DEFAULT_MAX_THINKING_TOKENS=4096 budgetforce serve
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]  # OpenAI's levels, and vLLM's `max`


class EffortBudget(BaseModel):
    """The thinking budget one `reasoning_effort` level stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_thinking_tokens: int = Field(0, ge=0)
    max_thinking_tokens: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> EffortBudget:
        if self.max_thinking_tokens is not None and self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError("`min_thinking_tokens` exceeds `max_thinking_tokens`")
        return self


# What OpenAI-style effort levels mean in thinking tokens; `none` turns the thinking off.
DEFAULT_EFFORT_BUDGETS: dict[Effort, EffortBudget] = {
    "none": EffortBudget(max_thinking_tokens=0),
    "minimal": EffortBudget(max_thinking_tokens=256),
    "low": EffortBudget(max_thinking_tokens=1024),
    "medium": EffortBudget(max_thinking_tokens=4096),
    "high": EffortBudget(min_thinking_tokens=1024, max_thinking_tokens=16384),
    "xhigh": EffortBudget(min_thinking_tokens=2048, max_thinking_tokens=32768),
    "max": EffortBudget(min_thinking_tokens=4096, max_thinking_tokens=65536),
}


class ServerSettings(BaseSettings):
    """Everything `budgetforce serve` can be told, besides vLLM's own engine arguments.

    Budget precedence for a request: its explicit budget fields (`min_thinking_tokens`, ...) >
    the compatibility fields (`thinking_token_budget` > `reasoning.max_tokens` >
    `thinking.budget_tokens` > `reasoning.effort` > `reasoning_effort`) > these defaults.
    `max_thinking_tokens_limit` caps every request's maximum, whatever its source.
    """

    model_config = SettingsConfigDict(env_prefix="BUDGETFORCE_", extra="ignore", validate_default=True, env_ignore_empty=True)

    # -- the model ---------------------------------------------------------------------------
    model: str | None = Field(None, description="Model path or Hugging Face id; None: the bundled student.")
    served_model_name: str | None = Field(None, description="The model id clients send; default: `model`.")
    profile: str | None = Field(None, description="Thinking-delimiter preset; None: detected from the tokenizer.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Passed through to vLLM's AsyncEngineArgs.")

    # -- HTTP --------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="Required as `Authorization: Bearer` on /v1 routes.")
    max_body_bytes: int = Field(2 << 20, ge=1024, description="Larger request bodies get 413.")
    log_requests: bool = Field(True, description="One log line per request with its budget stats.")

    # -- budgets -----------------------------------------------------------------------------
    default_min_thinking_tokens: int = Field(0, ge=0, description="Minimum for requests that set none.")
    default_max_thinking_tokens: int | None = Field(None, ge=0, description="Maximum for requests that set none.")
    default_max_waits: int | None = Field(None, ge=0)
    default_budget_strategy: Literal["engine", "rounds"] = "engine"
    max_thinking_tokens_limit: int | None = Field(
        None, ge=0, description="Largest budget a request may ask for; also the maximum of requests without one."
    )
    reasoning_effort_budgets: dict[Effort, EffortBudget] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS),
        description="Thinking budget per `reasoning_effort` level (JSON in the environment).",
    )

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> ServerSettings:
        mx, limit = self.default_max_thinking_tokens, self.max_thinking_tokens_limit
        if mx is not None and self.default_min_thinking_tokens > mx:
            raise ValueError("`default_min_thinking_tokens` exceeds `default_max_thinking_tokens`")
        if limit is not None and (self.default_min_thinking_tokens > limit or (mx is not None and mx > limit)):
            raise ValueError("the default budget exceeds `max_thinking_tokens_limit`")
        for level, budget in DEFAULT_EFFORT_BUDGETS.items():
            self.reasoning_effort_budgets.setdefault(level, budget)
        return self

    @property
    def model_id(self) -> str:
        """The id `/v1/models` lists and requests must name."""
        return self.served_model_name or self.model or "budgetforce"
