"""Server-wide settings: flags and `BUDGETFORCE_*` environment variables, validated once.

Example:
    BUDGETFORCE_API_KEY=sk-local BUDGETFORCE_DEFAULT_MAX_THINKING_TOKENS=4096 budgetforce serve
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from budgetforce.budget import DEFAULT_EFFORT_BUDGETS, BudgetDefaults, Effort, EffortBudget  # noqa: F401 - re-exported


class ServerSettings(BudgetDefaults):
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

    @property
    def model_id(self) -> str:
        """The id `/v1/models` lists and requests must name."""
        return self.served_model_name or self.model or "budgetforce"
