"""What a request asks of its thinking: the budget, validated at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["engine", "rounds"]


class BudgetError(ValueError):
    """A budget that cannot be honoured; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Budget(BaseModel):
    """Minimum and maximum thinking tokens for one request (s1's budget forcing).

    Below ``min_thinking_tokens`` an attempt to close the thinking is replaced by a wait
    string, at most ``max_waits`` times; at ``max_thinking_tokens`` the end-of-thinking
    delimiter is forced. ``None`` fields fall back to the model profile's defaults.

    Example:
        >>> Budget(min_thinking_tokens=2000, max_thinking_tokens=8000).is_active
        True
        >>> Budget().is_active   # no budget: the request is left untouched
        False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_thinking_tokens: int = Field(0, ge=0, description="Thinking tokens before a close is allowed.")
    max_thinking_tokens: int | None = Field(
        None, ge=0, description="Thinking tokens at which the end of thinking is forced; 0 = no thinking."
    )
    max_waits: int | None = Field(
        None, ge=0, description="How many closes below the minimum may be replaced (s1's NUM_IGNORE); None = no limit."
    )
    wait_strings: tuple[str, ...] | None = Field(
        None, min_length=1, description="Continuations that replace an early close, used in rotation."
    )
    answer_prefix: str | None = Field(None, description="Text forced after a forced end of thinking.")
    strategy: Strategy = Field("engine", description="`engine` (logits processor) or `rounds` (s1's loop).")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Budget:
        if self.max_thinking_tokens is not None and self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"`min_thinking_tokens` ({self.min_thinking_tokens}) exceeds `max_thinking_tokens` "
                f"({self.max_thinking_tokens}); lower the minimum or raise the maximum"
            )
        if self.wait_strings is not None and any(not w for w in self.wait_strings):
            raise ValueError("`wait_strings` must not contain empty strings")
        return self

    @property
    def is_active(self) -> bool:
        """Whether the budget changes anything at all."""
        return self.min_thinking_tokens > 0 or self.max_thinking_tokens is not None

    def check_room(self, max_tokens: int | None, reserved: int = 0) -> None:
        """Reject budgets that leave no room for an answer within ``max_tokens``.

        ``reserved`` counts the tokens forced after the thinking (delimiter, answer prefix).
        """
        if max_tokens is None:
            return
        if self.max_thinking_tokens is not None and self.max_thinking_tokens + reserved >= max_tokens:
            raise BudgetError(
                f"`max_thinking_tokens` ({self.max_thinking_tokens}) plus the {reserved} forced end tokens "
                f"leaves no room for an answer within `max_tokens` ({max_tokens}); raise `max_tokens` "
                "or lower the budget",
                param="max_thinking_tokens",
            )
        if self.min_thinking_tokens >= max_tokens:
            raise BudgetError(
                f"`min_thinking_tokens` ({self.min_thinking_tokens}) is not below `max_tokens` ({max_tokens}); "
                "raise `max_tokens` or lower the minimum",
                param="min_thinking_tokens",
            )
