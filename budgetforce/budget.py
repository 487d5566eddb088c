"""What a request asks of its thinking: the budget, validated at the edge."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


# -- a request's budget fields, and the one precedence order ---------------------------------------
# Everything below is shared by every HTTP layer (`budgetforce.serving`, the vLLM app's middleware,
# and the legacy server): which fields a request may carry, how they map onto one `Budget`, and the
# operator's defaults. It knows nothing of vLLM or HTTP.

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]  # OpenAI's levels, and vLLM's `max`

# The budget fields a misspelled unknown field is compared with, and the other APIs' token caps,
# which resemble them but are not misspellings (e.g. `max_completion_tokens` on /v1/completions).
BUDGET_FIELD_NAMES = (
    "min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait_strings", "answer_prefix", "budget_strategy",
    "thinking_token_budget",
)  # fmt: skip
NOT_BUDGET_FIELDS = frozenset({"max_completion_tokens", "max_tokens", "min_tokens", "max_new_tokens", "min_new_tokens"})


class FieldError(ValueError):
    """A request rule broken; `param` names the field the 400 points at."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def misspelled_budget_field(unknown: Iterable[str]) -> FieldError | None:
    """The first unknown field name that resembles a budget field (a typo, not a field to ignore).

    Example:
        >>> str(misspelled_budget_field(["metadata", "max_thinking_token"]))
        'unknown field `max_thinking_token`; did you mean `max_thinking_tokens`?'
    """
    for name in unknown:
        close = [] if name in NOT_BUDGET_FIELDS else difflib.get_close_matches(name, BUDGET_FIELD_NAMES, 1, 0.7)
        if close:
            return FieldError(name, f"unknown field `{name}`; did you mean `{close[0]}`?")
    return None


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


class BudgetDefaults(BaseSettings):
    """The operator's budget settings: defaults, a limit and the effort table (`BUDGETFORCE_*` variables).

    Example:
        BUDGETFORCE_DEFAULT_MAX_THINKING_TOKENS=4096 BUDGETFORCE_REASONING_EFFORT_BUDGETS='{"low": {"max_thinking_tokens": 512}}'
    """

    model_config = SettingsConfigDict(
        env_prefix="BUDGETFORCE_", extra="ignore", validate_default=True, env_ignore_empty=True
    )

    default_min_thinking_tokens: int = Field(0, ge=0, description="Minimum for requests that set none.")
    default_max_thinking_tokens: int | None = Field(None, ge=0, description="Maximum for requests that set none.")
    default_max_waits: int | None = Field(None, ge=0)
    default_budget_strategy: Strategy = "engine"
    max_thinking_tokens_limit: int | None = Field(
        None, ge=0, description="Largest budget a request may ask for; also the maximum of requests without one."
    )
    reasoning_effort_budgets: dict[Effort, EffortBudget] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS),
        description="Thinking budget per `reasoning_effort` level (JSON in the environment).",
    )

    @model_validator(mode="after")
    def _defaults_within_limit(self) -> BudgetDefaults:
        mx, limit = self.default_max_thinking_tokens, self.max_thinking_tokens_limit
        if mx is not None and self.default_min_thinking_tokens > mx:
            raise ValueError("`default_min_thinking_tokens` exceeds `default_max_thinking_tokens`")
        if limit is not None and (self.default_min_thinking_tokens > limit or (mx is not None and mx > limit)):
            raise ValueError("the default budget exceeds `max_thinking_tokens_limit`")
        for level, budget in DEFAULT_EFFORT_BUDGETS.items():
            self.reasoning_effort_budgets.setdefault(level, budget)
        return self


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
    """A request's budget after precedence, and where its minimum and maximum came from.

    `max_source`/`min_source` name the request field that set them, or None when the server
    chose them (defaults, effort table, limit); only those may be shrunk to fit the token cap.
    """

    budget: Budget | None
    max_source: str | None
    min_source: str | None
    hide_reasoning: bool

    def fit(self, limit: int, reserved: int, cap_param: str = "max_tokens") -> Budget | None:
        """The budget fitted to ``limit`` completion tokens, ``reserved`` of them forced after a maximum.

        A server-chosen minimum or maximum is shrunk to fit; a client-chosen one that does not
        fit raises `BudgetError` naming the request field it came from (or ``cap_param``).
        """
        budget = self.budget
        if budget is None:
            return None
        hi, lo = budget.max_thinking_tokens, budget.min_thinking_tokens
        if hi is not None and hi + reserved >= limit and self.max_source is None:
            hi = max(limit - reserved - 1, 0)
        if hi is not None:
            lo = min(lo, hi)
        if lo >= limit and self.min_source is None:
            lo = max(limit - 1, 0)
        budget = budget.model_copy(update={"min_thinking_tokens": lo, "max_thinking_tokens": hi})
        try:
            budget.check_room(limit, reserved=reserved)
        except BudgetError as exc:
            source = {"max_thinking_tokens": self.max_source, "min_thinking_tokens": self.min_source}
            param = source.get(exc.param or "") or cap_param
            message = str(exc).replace("`max_tokens`", f"`{cap_param}`")
            if exc.param is not None and param not in (exc.param, cap_param):
                message = message.replace(f"`{exc.param}`", f"`{param}`")
            raise BudgetError(message, param=param) from None
        return budget


class BudgetRequest(BaseModel):
    """A request's budget fields: budgetforce's own and the other APIs' (top-level, so `extra_body` carries them).

    Precedence, per field (minimum and maximum separately): the explicit fields
    (`min_thinking_tokens`, `max_thinking_tokens`) > `thinking_token_budget` (vLLM) >
    `reasoning` (OpenRouter: `enabled`/`max_tokens`) > `thinking` (Anthropic) >
    `reasoning.effort` > `reasoning_effort` > the operator's defaults. When a minimum and a
    maximum from different levels conflict, the lower-precedence one gives way; when they come
    from the same level the request is rejected.

    Example:
        >>> r = BudgetRequest(thinking_token_budget=50, reasoning_effort="high").resolve(BudgetDefaults())
        >>> (r.budget.min_thinking_tokens, r.budget.max_thinking_tokens, r.max_source)
        (50, 50, 'thinking_token_budget')
    """

    model_config = ConfigDict(strict=True)

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
    def _min_not_above_max(self) -> BudgetRequest:
        lo, hi = self.min_thinking_tokens, self.max_thinking_tokens
        if lo is not None and hi is not None and lo > hi:
            raise FieldError(
                "min_thinking_tokens",
                f"`min_thinking_tokens` ({lo}) exceeds `max_thinking_tokens` ({hi}); lower the minimum or raise the maximum",
            )
        return self

    def resolve(self, defaults: BudgetDefaults) -> ResolvedBudget:
        """Apply the precedence order and the operator's limit; raises `BudgetError` for the client's mistakes."""
        levels = self._levels(defaults)
        lo, lo_at, lo_src = _first(levels, 0)
        hi, hi_at, hi_src = _first(levels, 1)
        if lo is not None and hi is not None and lo > hi:  # different levels: the lower-precedence one yields
            if lo_at < hi_at:
                hi = lo
            else:
                lo = hi
        limit = defaults.max_thinking_tokens_limit
        if limit is not None:
            for value, src, name in ((lo, lo_src, "minimum"), (hi, hi_src, "maximum")):
                if value is not None and value > limit and src is not None:
                    raise BudgetError(
                        f"`{src}` asks for a thinking {name} of {value} tokens; this server allows at most {limit}",
                        param=src,
                    )
            hi = limit if hi is None else min(hi, limit)
            lo = min(lo or 0, hi)
        strategy = self.budget_strategy or defaults.default_budget_strategy
        max_waits = self.max_waits if self.max_waits is not None else defaults.default_max_waits
        budget = Budget(
            min_thinking_tokens=lo or 0,
            max_thinking_tokens=hi,
            max_waits=max_waits,
            wait_strings=tuple(self.wait_strings) if self.wait_strings else None,
            answer_prefix=self.answer_prefix,
            strategy=strategy,
        )
        hide = not self.include_reasoning or bool(self.reasoning and self.reasoning.exclude)
        return ResolvedBudget(budget if budget.is_active else None, hi_src, lo_src, hide)

    def _levels(self, defaults: BudgetDefaults) -> list[tuple[int | None, int | None, str | None]]:
        """(min, max, request field) per precedence level, highest first; field None = server default."""
        table = defaults.reasoning_effort_budgets
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
        levels.append((defaults.default_min_thinking_tokens, defaults.default_max_thinking_tokens, None))
        return levels


BUDGET_REQUEST_FIELDS = frozenset(BudgetRequest.model_fields)


def _first(levels: list[tuple[int | None, int | None, str | None]], i: int) -> tuple[int | None, int, str | None]:
    """The first level that sets field ``i`` (0 min, 1 max): (value, level index, source)."""
    for at, level in enumerate(levels):
        if level[i] is not None:
            return level[i], at, level[2]
    return None, len(levels), None
