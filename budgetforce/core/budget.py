"""What a request asks of its thinking: the budget, validated at the edge."""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import reduce
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from budgetforce.core.limits import LIMITS
from budgetforce.core.vote import VoteGrader

Strategy = Literal["engine", "rounds"]
WaitDecay = Literal["linear", "constant"]
Mode = Literal["nowait", "intervention", "answer_budget", "scheduled_waits", "early_exit", "margin_exit"]

# Limits in strings and characters. The token-level ones are the processor's table sizes
# (`budgetforce.core.limits.LIMITS`), checked where the strings become tokens (`ResolvedProfile.plan`).
MAX_BANNED_STRINGS = 32
MAX_INTERVENTION_CHARS = 4096
MAX_BREAK_STRINGS = 8
DEFAULT_PARAGRAPH_BREAKS = ("\n\n",)
MAX_EXIT_MARGIN = 64.0  # nats: a wider margin exits at the first break whatever the model thinks

NonEmptyStr = Annotated[str, Field(min_length=1)]
InterventionText = Annotated[str, Field(min_length=1, max_length=MAX_INTERVENTION_CHARS)]
Alpha = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
ProbeTokens = Annotated[int, Field(ge=1, le=256)]
ProbeLead = Annotated[str, Field(max_length=MAX_INTERVENTION_CHARS)]
ExitMargin = Annotated[float, Field(ge=0, le=MAX_EXIT_MARGIN, allow_inf_nan=False)]

# The modes beyond s1: the fields that turn each on (any one set), and the fields that only
# qualify it (setting one while the mode is off is an error, not a silently ignored field).
MODES: dict[Mode, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nowait": (("banned_thinking_strings",), ()),
    "intervention": (("thinking_intervention",), ("intervention_at",)),
    "answer_budget": (("max_answer_tokens",), ()),
    "scheduled_waits": (("alpha_moment_tokens", "alpha"), ("wait_probability", "wait_decay", "paragraph_breaks")),
    "early_exit": (("probe_every",), ("probe_agree", "probe_lead", "probe_max_tokens")),
    "margin_exit": (("exit_margin",), ("exit_breaks",)),
}
NEW_FIELDS = tuple(f for switches, qualifiers in MODES.values() for f in (*switches, *qualifiers))
PROBE_FIELDS = (*MODES["early_exit"][0], *MODES["early_exit"][1])
# What each mode adds to a choice's `budget` report (both HTTP layers).
REPORT_KEYS: dict[Mode, tuple[str, ...]] = {
    "answer_budget": ("answer_tokens", "answer_truncated"),
    "intervention": ("intervened",),
    "scheduled_waits": ("scheduled_waits",),
    "early_exit": ("early_exit", "probes", "probe_tokens"),
    "margin_exit": ("early_exit", "exit_tokens_saved"),
}
EARLY_EXIT_MESSAGE = (
    "early exit by answer probes (`{param}`) needs a frontend that probes: budgetforce's budget layer "
    "(`budgetforce serve`, or `vllm serve --middleware budgetforce.server.BudgetMiddleware`) or its Python "
    "engine (`budgetforce.BudgetForcingEngine`); the logits processor alone cannot. Drop the `probe_*` "
    "fields, or add the budget layer"
)


class BudgetError(ValueError):
    """A budget that cannot be honoured; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FieldError(ValueError):
    """A request rule broken; `param` names the field the 400 points at."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def check_min_max(lo: int | None, hi: int | None) -> None:
    """The one rule between a minimum and a maximum: the minimum is not above it."""
    if lo is not None and hi is not None and lo > hi:
        raise FieldError(
            "min_thinking_tokens",
            f"`min_thinking_tokens` ({lo}) exceeds `max_thinking_tokens` ({hi}); lower the minimum or raise the maximum",
        )


def check_vote_fields(aggregate: str | None, grader: str | None, total: int | None, hi: int | None) -> None:
    """The vote's request-level rules: a total thinking maximum or a per-choice one, not both; a
    grader only with the vote."""
    if total is not None and hi is not None:
        raise FieldError(
            "total_thinking_tokens",
            "set one of `total_thinking_tokens` (all choices together) or `max_thinking_tokens` (per choice)",
        )
    if grader is not None and aggregate is None:
        raise FieldError("vote_grader", "`vote_grader` qualifies `budget_aggregate: \"vote\"`; set it too, or drop it")


def optional_fields(model: type[BaseModel], lists: bool = False, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``model``'s fields as optional ones, for `pydantic.create_model`: default None (the field unset),
    the same constraints and descriptions; with ``lists``, tuples become lists (a strict model
    takes JSON arrays as lists only). How the request schema and the bench's settings derive
    from `Budget` instead of copying it.
    """
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = _as_list(field.annotation) if lists else field.annotation
        out[(rename or {}).get(name, name)] = (annotation | None, FieldInfo.merge_field_infos(field, default=None))
    return out


def _as_list(annotation: Any) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return list[args[0]]  # type: ignore[valid-type]
    if origin in (Union, UnionType):
        return reduce(operator.or_, [_as_list(a) for a in args])
    return annotation


class Budget(BaseModel):
    """What one request asks of its thinking: s1's minimum and maximum, and the modes beyond s1.

    Below ``min_thinking_tokens`` an attempt to close the thinking is replaced by a wait
    string, at most ``max_waits`` times; at ``max_thinking_tokens`` the end-of-thinking
    delimiter is forced. ``None`` fields fall back to the model profile's defaults. The other
    modes (NoWait's banned strings, a thinking intervention, an answer budget, AlphaOne's
    scheduled waits, early exit by answer probes) are off unless their fields are set.

    Example:
        >>> Budget(min_thinking_tokens=2000, max_thinking_tokens=8000).is_active
        True
        >>> Budget(banned_thinking_strings=("Wait",)).modes
        frozenset({'nowait'})
        >>> Budget().is_active   # no budget: the request is left untouched
        False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_thinking_tokens: int = Field(
        0, ge=0, description="Thinking tokens before the model may close its thinking; an earlier close is replaced "
        "by a wait string (s1 budget forcing).",
    )  # fmt: skip
    max_thinking_tokens: int | None = Field(
        None, ge=0, description="Thinking tokens at which the end of thinking is forced; 0 = no thinking. Must leave "
        "room for an answer within `max_completion_tokens`.",
    )  # fmt: skip
    max_waits: int | None = Field(
        None, ge=0, description="How many early closes may be replaced by a wait string (s1's NUM_IGNORE); null = no limit."
    )
    wait_strings: tuple[NonEmptyStr, ...] | None = Field(
        None, min_length=1, max_length=LIMITS.wait_strings,
        description="Continuations that replace an early close, in rotation (default: the model profile's, e.g. "
        f'"Wait"; at most {LIMITS.wait_strings}, each at most {LIMITS.forced_tokens} tokens).',
    )  # fmt: skip
    answer_prefix: str | None = Field(
        None, max_length=MAX_INTERVENTION_CHARS,
        description="Text forced after a forced end of thinking (default: the profile's; with the close at most "
        f"{LIMITS.forced_tokens} tokens).",
    )  # fmt: skip
    strategy: Strategy = Field(
        "engine", description="`engine`: a logits processor inside vLLM's batch; `rounds`: s1's stop-and-resubmit loop."
    )
    # NoWait (arXiv 2506.08343)
    banned_thinking_strings: tuple[NonEmptyStr, ...] | None = Field(
        None, min_length=1, max_length=MAX_BANNED_STRINGS,
        description="NoWait: strings never written while thinking (their first tokens are banned, with and without "
        'a leading space, capitalised and lower-case; at most 16 tokens in all), e.g. ["Wait", "Hmm"].',
    )  # fmt: skip
    # Thinking Intervention (arXiv 2503.24370)
    thinking_intervention: InterventionText | None = Field(
        None, description="Thinking Intervention: text forced into the thinking (at most 64 tokens)."
    )
    intervention_at: int = Field(
        0, ge=0, description="Thinking tokens before `thinking_intervention` is forced (default 0: at once)."
    )
    # Elastic Reasoning (arXiv 2505.05315)
    max_answer_tokens: int | None = Field(
        None, ge=0, description="Elastic Reasoning: answer tokens after the close (a forced answer prefix included), "
        "then the end of sequence is forced; without a maximum thinking, the thinking gets what the answer leaves "
        "of the token cap.",
    )  # fmt: skip
    # AlphaOne (arXiv 2505.24863)
    alpha_moment_tokens: int | None = Field(
        None, ge=1, description="AlphaOne: waits are scheduled after paragraph breaks before this many thinking "
        "tokens (the alpha moment); past it a wait the model starts becomes the close.",
    )  # fmt: skip
    alpha: Alpha | None = Field(
        None, description="AlphaOne: the alpha moment as a fraction of `max_thinking_tokens` (instead of "
        "`alpha_moment_tokens`).",
    )  # fmt: skip
    wait_probability: Probability = Field(0.3, description="Chance of a scheduled wait after a paragraph break.")
    wait_decay: WaitDecay = Field(
        "linear", description="`linear`: the chance falls to 0 at the alpha moment; `constant`: it stays."
    )
    paragraph_breaks: tuple[NonEmptyStr, ...] | None = Field(
        None, min_length=1, max_length=MAX_BREAK_STRINGS,
        description='Texts that end a paragraph for scheduled waits (default ["\\n\\n"]).',
    )  # fmt: skip
    # Early exit by answer probes (Dynasor-CoT, DEER): run by the budget layer and the Python engine
    probe_every: int | None = Field(
        None, ge=1, description="Early exit: thinking tokens between answer probes (the budget layer and the "
        "Python engine; not the processor alone).",
    )  # fmt: skip
    probe_agree: int = Field(2, ge=1, description="Agreeing probes in a row that end thinking.")
    probe_lead: ProbeLead | None = Field(
        None, description="Answer lead-in a probe writes after the close (default: the engine's)."
    )
    probe_max_tokens: ProbeTokens = Field(16, description="Tokens one probe may generate.")
    # Early exit from the logits (ThinkBrake, arXiv 2510.00546): on the device, no side requests
    exit_margin: ExitMargin | None = Field(
        None, description="Early exit from the logits (ThinkBrake): at a paragraph break after the minimum, the "
        "thinking is closed (and the answer prefix forced) when log p(top token) - log p(close) is at most this "
        f"margin, in nats (0 to {MAX_EXIT_MARGIN:g}; the model's raw log-probabilities). Works in the processor "
        "alone, with the engine strategy.",
    )  # fmt: skip
    exit_breaks: tuple[NonEmptyStr, ...] | None = Field(
        None, min_length=1, max_length=MAX_BREAK_STRINGS,
        description='Texts after which `exit_margin` is checked (tokens ending with one; default the profile\'s, ["\\n\\n"]).',
    )  # fmt: skip

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Budget:
        check_min_max(self.min_thinking_tokens, self.max_thinking_tokens)
        return self

    @model_validator(mode="after")
    def _modes_are_whole(self) -> Budget:
        """A qualifying field needs its mode on; the schedule's alpha needs a maximum to be a fraction of."""
        modes = self.modes
        for mode, (switches, qualifiers) in MODES.items():
            for name in qualifiers:
                if name in self.model_fields_set and mode not in modes:
                    on = " or ".join(f"`{s}`" for s in switches)
                    raise FieldError(name, f"`{name}` qualifies a mode that is off; set {on} too, or drop it")
        if self.alpha is not None and self.alpha_moment_tokens is not None:
            raise FieldError("alpha", "set one of `alpha` (a fraction of the maximum) or `alpha_moment_tokens`")
        if self.alpha is not None and self.max_thinking_tokens is None:
            raise FieldError(
                "alpha", "`alpha` is a fraction of `max_thinking_tokens`, which is not set; set it, or give "
                "`alpha_moment_tokens` in tokens instead",
            )  # fmt: skip
        if self.exit_margin is not None and self.strategy == "rounds":
            raise FieldError(
                "exit_margin", "the logit-margin exit (`exit_margin`) runs on the device, with the engine strategy; "
                "drop `budget_strategy: rounds`",
            )  # fmt: skip
        if "scheduled_waits" in self.modes and self.min_thinking_tokens > 0:
            switch = "alpha" if self.alpha is not None else "alpha_moment_tokens"
            raise FieldError(
                switch,
                f"scheduled waits (`{switch}`) replace s1's minimum (`min_thinking_tokens` "
                f"{self.min_thinking_tokens}); use one or the other",
            )
        return self

    @property
    def modes(self) -> frozenset[Mode]:
        """The modes beyond s1 this budget turns on."""
        return frozenset(m for m, (switches, _) in MODES.items() if any(getattr(self, f) is not None for f in switches))

    @property
    def is_budgeted(self) -> bool:
        """s1's budget: a minimum or a maximum of thinking tokens."""
        return self.min_thinking_tokens > 0 or self.max_thinking_tokens is not None

    @property
    def is_active(self) -> bool:
        """Whether the budget changes anything at all (s1's minimum or maximum, or any other mode)."""
        return self.is_budgeted or bool(self.modes)

    @property
    def alpha_moment(self) -> int:
        """Thinking tokens before which waits are scheduled (AlphaOne's alpha moment); 0 = no schedule.

        Example:
            >>> Budget(alpha=0.5, max_thinking_tokens=1000).alpha_moment
            500
        """
        if self.alpha_moment_tokens is not None:
            return self.alpha_moment_tokens
        if self.alpha is not None and self.max_thinking_tokens is not None:
            return max(1, round(self.alpha * self.max_thinking_tokens))
        return 0

    @property
    def report_keys(self) -> tuple[str, ...]:
        """The keys this budget's modes add to a choice's `budget` report."""
        return tuple(dict.fromkeys(k for mode, keys in REPORT_KEYS.items() if mode in self.modes for k in keys))

    def with_answer_room(
        self, max_tokens: int | None, reserved: int, cap_param: str = "max_tokens", server_max: bool = False
    ) -> Budget:
        """The budget with its maximum thinking derived from an answer budget and the completion cap.

        With `max_answer_tokens` set, a cap known and no maximum asked for, the thinking may take
        what the answer leaves: ``max_tokens - reserved - max_answer_tokens - 1`` (``reserved``: the
        forced close and answer prefix; the 1 is the end-of-sequence forced after the answer, which
        the cap counts too). A maximum the server chose (``server_max``: defaults, the effort
        table) is lowered to that as well; a client's is kept. Raises `BudgetError` naming
        `max_answer_tokens` when nothing is left for the thinking.

        Example:
            >>> Budget(max_answer_tokens=100).with_answer_room(1000, reserved=1).max_thinking_tokens
            898
        """
        if self.max_answer_tokens is None or max_tokens is None:
            return self
        if self.max_thinking_tokens is not None and not server_max:
            return self
        hi = max_tokens - reserved - self.max_answer_tokens - 1
        if hi < 0:
            raise BudgetError(
                f"`max_answer_tokens` ({self.max_answer_tokens}) plus the {reserved} forced end tokens and the "
                f"end of sequence leave no room for thinking within `{cap_param}` ({max_tokens}); raise "
                f"`{cap_param}` or lower `max_answer_tokens`",
                param="max_answer_tokens",
            )
        if self.max_thinking_tokens is not None:
            hi = min(hi, self.max_thinking_tokens)
        lo = min(self.min_thinking_tokens, hi)
        return self.model_copy(update={"max_thinking_tokens": hi, "min_thinking_tokens": lo})

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


LIST_FIELDS = tuple(n for n, f in Budget.model_fields.items() if _as_list(f.annotation) != f.annotation)
# The request's name of a `Budget` field where it differs, and the fields `resolve` computes itself.
REQUEST_NAMES = {"strategy": "budget_strategy"}
RESOLVED = ("min_thinking_tokens", "max_thinking_tokens", "max_waits", "strategy")
XARG_FIELDS = tuple(name for name in Budget.model_fields if name != "strategy")  # `vllm_xargs` carries no strategy


def xarg_budget_fields(xargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The budget fields of a request's `vllm_xargs` (flat strings, numbers and lists).

    A single string where a list belongs (`wait_strings`, ...) is a one-element list.

    Example:
        >>> xarg_budget_fields({"banned_thinking_strings": "Wait", "note": 1})
        {'banned_thinking_strings': ['Wait']}
    """
    fields = {k: xargs[k] for k in XARG_FIELDS if k in xargs} if xargs else {}
    for name in LIST_FIELDS:
        if isinstance(fields.get(name), str):
            fields[name] = [fields[name]]
    return fields


def budget_error(exc: ValidationError) -> BudgetError:
    """A `Budget`'s validation error as a `BudgetError` naming the field (the first problem)."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    loc = err.get("loc") or ()
    param = getattr(cause, "param", None) or (str(loc[0]) if loc else None)
    message = str(err.get("msg", "invalid budget")).removeprefix("Value error, ")
    if not getattr(cause, "param", None) and param:
        message = f"`{param}`: {message}"
    return BudgetError(message, param=param)


# -- a request's budget fields, and the one precedence order ---------------------------------------
# Everything below is what the HTTP layer (`budgetforce.server`) and the benchmarks share: which
# fields a request may carry, how they map onto one `Budget`, and the operator's defaults. It knows
# nothing of vLLM or HTTP.

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]  # OpenAI's levels, and vLLM's `max`

# The budget fields a misspelled unknown field is compared with, and the other APIs' token caps,
# which resemble them but are not misspellings (e.g. `max_completion_tokens` on /v1/completions).
BUDGET_FIELD_NAMES = (
    *(REQUEST_NAMES.get(n, n) for n in Budget.model_fields), "thinking_token_budget", "budget_aggregate", "vote_grader",
    "total_thinking_tokens",
)  # fmt: skip
NOT_BUDGET_FIELDS = frozenset({"max_completion_tokens", "max_tokens", "min_tokens", "max_new_tokens", "min_new_tokens"})


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
        fit raises `BudgetError` naming the request field it came from (or ``cap_param``). An
        answer budget without a maximum makes the maximum what the answer leaves of ``limit``
        (`Budget.with_answer_room`).
        """
        budget = self.budget
        if budget is None:
            return None
        # a derived maximum fits by construction, and is the server's (it may be shrunk, not refused)
        budget = budget.with_answer_room(limit, reserved, cap_param, server_max=self.max_source is None)
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


class _RequestBase(BaseModel):
    """A request's budget fields: budgetforce's own and the other APIs' (top-level, so `extra_body` carries them).

    budgetforce's own are `Budget`'s fields, derived from it (optional, the same constraints and
    descriptions; `strategy` is `budget_strategy` here); the other APIs' are declared below.

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
    # Parallel thinking with a vote: request-level, over the `n` choices (`budgetforce.core.vote`).
    budget_aggregate: Literal["vote"] | None = Field(
        None, description="`vote`: the response adds the majority answer over the `n` choices (n >= 2), its "
        "share of the votes and the thinking tokens spent in all.",
    )  # fmt: skip
    vote_grader: VoteGrader | None = Field(
        None, description="How an answer is read for the vote: `integer`, `math` (the harness's graders) or "
        "`exact` (the default: exact match after normalising case and white space).",
    )  # fmt: skip
    total_thinking_tokens: int | None = Field(
        None, ge=1, description="A thinking maximum for all the choices together, split evenly across the `n` "
        "choices (instead of `max_thinking_tokens`, which is per choice).",
    )  # fmt: skip
    @model_validator(mode="after")
    def _min_not_above_max(self) -> Any:
        check_min_max(self.min_thinking_tokens, self.max_thinking_tokens)  # type: ignore[attr-defined]
        check_vote_fields(self.budget_aggregate, self.vote_grader, self.total_thinking_tokens,
                          self.max_thinking_tokens)  # type: ignore[attr-defined]  # fmt: skip
        return self

    def resolve(self, defaults: BudgetDefaults, choices: int = 1) -> ResolvedBudget:
        """Apply the precedence order and the operator's limit; raises `BudgetError` for the client's mistakes.
        ``choices``: the request's `n`, which `total_thinking_tokens` is split across."""
        if self.total_thinking_tokens is not None and self.total_thinking_tokens < choices:
            raise BudgetError(
                f"`total_thinking_tokens` ({self.total_thinking_tokens}) is less than one token for each of the "
                f"{choices} choices; raise it or lower `n`",
                param="total_thinking_tokens",
            )
        share = None if self.total_thinking_tokens is None else self.total_thinking_tokens // max(choices, 1)
        if share is not None and self.min_thinking_tokens is not None and self.min_thinking_tokens > share:
            raise BudgetError(
                f"`min_thinking_tokens` ({self.min_thinking_tokens}) exceeds each choice's share of "
                f"`total_thinking_tokens` ({share} = {self.total_thinking_tokens} / {choices}); lower the minimum",
                param="min_thinking_tokens",
            )
        levels = self._levels(defaults, share)
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
        # the rest passes as given; set ones only, so a mode's qualifier without the mode is refused (see Budget)
        given = {name: getattr(self, REQUEST_NAMES.get(name, name)) for name in Budget.model_fields if name not in RESOLVED}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
        if lo_src is None and (self.alpha is not None or self.alpha_moment_tokens is not None):
            lo = 0  # scheduled waits replace s1's minimum: the server's minimum gives way, a client's is refused
        try:
            budget = Budget(
                min_thinking_tokens=lo or 0, max_thinking_tokens=hi, max_waits=max_waits, strategy=strategy, **given
            )
        except ValidationError as exc:
            raise budget_error(exc) from None
        hide = not self.include_reasoning or bool(self.reasoning and self.reasoning.exclude)
        return ResolvedBudget(budget if budget.is_active else None, hi_src, lo_src, hide)

    def _levels(self, defaults: BudgetDefaults, share: int | None) -> list[tuple[int | None, int | None, str | None]]:
        """(min, max, request field) per precedence level, highest first; field None = server default.
        ``share``: each choice's part of `total_thinking_tokens`, if set."""
        table = defaults.reasoning_effort_budgets
        levels: list[tuple[int | None, int | None, str | None]] = [
            (self.min_thinking_tokens, None, "min_thinking_tokens"),
            (None, self.max_thinking_tokens, "max_thinking_tokens"),  # same level: the validator orders them
            (None, share, "total_thinking_tokens"),
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


BudgetRequest = create_model(  # the schema of a request's budget fields: `Budget`'s, plus the other APIs'
    "BudgetRequest", __base__=_RequestBase, __module__=__name__, __doc__=_RequestBase.__doc__,
    **optional_fields(Budget, lists=True, rename=REQUEST_NAMES),
)  # fmt: skip
BUDGET_REQUEST_FIELDS = frozenset(BudgetRequest.model_fields)


def _first(levels: list[tuple[int | None, int | None, str | None]], i: int) -> tuple[int | None, int, str | None]:
    """The first level that sets field ``i`` (0 min, 1 max): (value, level index, source)."""
    for at, level in enumerate(levels):
        if level[i] is not None:
            return level[i], at, level[2]
    return None, len(levels), None
