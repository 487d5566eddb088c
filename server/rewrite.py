"""The request side of the budget layer: a chat or text completion body in, vLLM's body out.

`prepare` reads the budget fields of a request (budgetforce's own, vLLM's `thinking_token_budget`,
`reasoning_effort`, Anthropic's `thinking`, OpenRouter's `reasoning`, and budget keys already in
`vllm_xargs`), resolves them with the one precedence order (`budgetforce.core.budget.BudgetRequest`),
fits the result to the request's token cap, and writes it into `vllm_xargs`, where
`budgetforce.vllm:BudgetForcing` reads it. Every mistake is a `RequestError` (HTTP 400 naming the
field) before anything runs. Nothing here tokenizes a prompt or touches the engine.

`budget_strategy: rounds` and early exit (`probe_*`) are not written into `vllm_xargs`: their
budget stays on the `Prepared` request (`orchestrated`), whose engine requests the budget layer
issues itself (`budgetforce.server.orchestrate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from budgetforce.core.budget import (
    BUDGET_REQUEST_FIELDS,
    XARG_FIELDS,
    Budget,
    BudgetDefaults,
    BudgetError,
    BudgetRequest,
    misspelled_budget_field,
    xarg_budget_fields,
)
from budgetforce.vllm.engine import plan_for
from budgetforce.core.profile import ProfileError

# The keys only budgetforce itself may set in `vllm_xargs` (its own engine's plan, and a stats
# board's row); the processor's per-request budget keys are `budgetforce.core.budget.XARG_FIELDS`.
RESERVED_XARGS = ("budgetforce", "budgetforce_board", "budgetforce_key", "budgetforce_nonce")
ORCHESTRATED_PROMPTS_MESSAGE = (
    "`budget_strategy: rounds` and early exit (`probe_*`) take one prompt per text completion; send {count} requests"
)
N_MESSAGE = (
    "`{param}` asks for {count} choices with a thinking budget; this server forces budgets on one choice "
    "per request (its processor does not keep one budget state per choice). "
    "Send {count} requests instead (with seeds seed, seed+1, ... to reproduce `n`)"
)


class RequestError(Exception):
    """A client mistake: HTTP `status` in OpenAI's error shape, `param` naming the field."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_budget", status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def body(self) -> bytes:
        error = {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


@dataclass(frozen=True)
class ServedModel:
    """What the budget layer needs to know of the served model (see `BudgetMiddleware`)."""

    profile: Any  # budgetforce.core.profile.ResolvedProfile
    tokenizer: Any
    max_model_len: int
    chat_fields: frozenset[str]  # vLLM's request fields: anything else unknown may be a misspelling
    completion_fields: frozenset[str]
    reasoning_parser: bool  # vLLM splits reasoning from content in chat responses
    child_safe: bool = False  # the processor keeps one budget state per choice when n > 1
    # The server was started with vLLM's `--reasoning-effort-map` (vLLM >= 0.33): see `forwarded`.
    effort_map: bool = False
    completion_max_tokens: int | None = 16  # vLLM's (and OpenAI's) default cap of a text completion


@dataclass
class Prepared:
    """A rewritten request and what its response needs to be annotated."""

    body: dict[str, Any]
    endpoint: str  # "chat" or "completions"
    budget: Budget | None
    stops: list[str]
    include_stop: bool
    hide_reasoning: bool
    wants_token_ids: bool  # the client asked for `token_ids`/`prompt_token_ids` itself
    wants_logprobs: bool
    choices: int  # n, times the prompts of a text completion
    stream: bool
    include_usage: bool
    echo: bool
    split_text: bool  # budgetforce splits the text into reasoning and answer (no vLLM parser for it)
    n: int = 1
    annotate: bool = True  # False: only the budget fields were stripped; the response is vLLM's own
    orchestrated: bool = False  # rounds or early exit: the budget layer issues the engine requests itself
    vote: bool = False  # `budget_aggregate: "vote"`: the response adds the majority over the choices
    vote_grader: str | None = None


# Fields vLLM's own request validators read as objects before checking their type (an
# AttributeError, so a 500, for `"structured_outputs": true`): refused here with a 400.
OBJECT_FIELDS = ("structured_outputs",)


def prepare(body: dict[str, Any], endpoint: str, model: ServedModel, defaults: BudgetDefaults) -> Prepared | None:
    """The request for vLLM, or None when it has nothing for the budget layer (left untouched).

    Raises:
        RequestError: an invalid, impossible or misspelled budget (before anything runs).
    """
    for name in OBJECT_FIELDS:  # vLLM 0.32 answers these with a 500 when they are not objects
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise RequestError(f"`{name}` must be an object", name, code="invalid_type")
    known = model.chat_fields if endpoint == "chat" else model.completion_fields
    typo = misspelled_budget_field(k for k in body if k not in known and k not in BUDGET_REQUEST_FIELDS)
    if typo is not None:
        raise RequestError(str(typo), typo.param, code="invalid_value")
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return None  # vLLM's own validation answers
    xargs = dict(xargs or {})
    for key in RESERVED_XARGS:
        if key in xargs:
            raise RequestError(f"`vllm_xargs.{key}` is reserved for budgetforce itself", f"vllm_xargs.{key}", "invalid_value")
    fields = xarg_budget_fields(xargs)  # the processor's keys, as explicit fields
    for k in fields:
        del xargs[k]
    fields.update({k: body[k] for k in BUDGET_REQUEST_FIELDS if k in body and body[k] is not None})
    if "include_reasoning" in body and body["include_reasoning"] is None:
        fields.pop("include_reasoning", None)
    try:
        request = BudgetRequest.model_validate(fields)
    except ValidationError as exc:
        param, message = validation_message(exc)
        raise RequestError(message, param, code="invalid_value") from None
    n = max(_int(body.get("n"), 1), 1)
    choices = _choices(body, endpoint)  # n, times the prompts of a text completion
    try:
        resolved = request.resolve(defaults, n)
    except BudgetError as exc:
        raise RequestError(str(exc), exc.param) from None
    vote = request.budget_aggregate == "vote"
    if vote and n < 2:
        raise RequestError(f'`budget_aggregate: "vote"` needs choices to vote: set `n` to 2 or more (got {n})', "n")
    if vote and choices > n:
        raise RequestError('`budget_aggregate: "vote"` takes one prompt (its `n` choices vote)', "prompt",
                           code="unsupported_value")  # fmt: skip
    kept = forwarded(endpoint, model)
    echo = endpoint == "completions" and body.get("echo") is True
    stops = [] if echo else _stops(body.get("stop"))  # an echoed text holds the prompt: vLLM's stop rules
    own_split = endpoint == "chat" and not model.reasoning_parser  # vLLM would not split the thinking out
    if resolved.budget is None and not stops and not resolved.hide_reasoning and not own_split and not vote:
        # No budget, no stop strings: what `vllm serve` does, minus the budget fields (vLLM would
        # apply `thinking_token_budget` and `reasoning_effort` its own way).
        ours = [k for k in body if k in BUDGET_REQUEST_FIELDS and k != "include_reasoning" and k not in kept]
        if not ours and not fields:
            return None
        out = {k: v for k, v in body.items() if k not in ours}
        if xargs:
            out["vllm_xargs"] = xargs
        else:
            out.pop("vllm_xargs", None)
        return Prepared(body=out, endpoint=endpoint, budget=None, stops=[], include_stop=False, hide_reasoning=False,
                        wants_token_ids=False, wants_logprobs=False, choices=1, stream=False, include_usage=False,
                        echo=False, split_text=False, annotate=False)  # fmt: skip
    out = {k: v for k, v in body.items() if k not in BUDGET_REQUEST_FIELDS or k in kept}
    cap_param, cap = _cap(body, endpoint, model.completion_max_tokens)
    budget = resolved.budget
    orchestrated = budget is not None and (budget.strategy == "rounds" or budget.probe_every is not None)
    if budget is not None:
        if orchestrated:
            _check_orchestrated(body, endpoint, budget, choices)
        if choices > 1 and not model.child_safe and not orchestrated:  # orchestrated: a source per choice
            param = "n" if _int(body.get("n"), 1) > 1 else "prompt"
            raise RequestError(N_MESSAGE.format(param=param, count=choices), param, code="unsupported_value")
        limit = cap if cap is not None else model.max_model_len - 1
        try:
            reserved = model.profile.plan(budget).forced_end_length
            budget = resolved.fit(limit, reserved, cap_param)
        except ProfileError as exc:  # a `PlanError` names its field; a plain one is about the profile's strings
            param = getattr(exc, "param", None) or ("wait_strings" if budget.wait_strings else "answer_prefix")
            raise RequestError(str(exc), param) from None
        except BudgetError as exc:
            raise RequestError(str(exc), exc.param) from None
        if orchestrated:
            try:  # what the orchestrated strategies refuse (rounds with probes), before anything runs
                plan_for(model.profile, budget, limit)
            except BudgetError as exc:
                raise RequestError(str(exc), exc.param) from None
        else:
            xargs.update(budget_xargs(budget))
    if xargs:
        out["vllm_xargs"] = xargs
    else:
        out.pop("vllm_xargs", None)
    wants_ids = bool(body.get("return_token_ids"))
    out["return_token_ids"] = True  # the thinking is counted on token ids
    if stops:
        out.pop("stop", None)  # cut in the answer only, by the budget layer
    if endpoint == "chat":
        out["include_reasoning"] = True  # hidden by the budget layer, so the thinking still runs and is counted
    stream = body.get("stream") is True
    options = body.get("stream_options")
    return Prepared(
        body=out,
        endpoint=endpoint,
        budget=budget,
        stops=stops,
        include_stop=body.get("include_stop_str_in_output") is True,
        hide_reasoning=resolved.hide_reasoning,
        wants_token_ids=wants_ids,
        wants_logprobs=bool(body.get("logprobs")) or body.get("top_logprobs") not in (None, 0),
        choices=choices,
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        echo=echo,
        split_text=endpoint == "completions" or not model.reasoning_parser,
        n=n,
        orchestrated=orchestrated,
        vote=vote,
        vote_grader=request.vote_grader,
    )


def _check_orchestrated(body: dict[str, Any], endpoint: str, budget: Budget, choices: int) -> None:
    """What the orchestrated strategies cannot carry: a 400 naming the field."""
    n = max(_int(body.get("n"), 1), 1)
    if endpoint == "completions" and choices > n:
        raise RequestError(ORCHESTRATED_PROMPTS_MESSAGE.format(count=choices // n), "prompt", code="unsupported_value")
    if budget.strategy != "rounds":
        return
    if body.get("logprobs") or body.get("top_logprobs") not in (None, 0):
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise RequestError(
            f"`{param}` with `budget_strategy: rounds`: the ids the loop forces have no log-probabilities; "
            "use the `engine` strategy (the same tokens under greedy decoding)", param, code="unsupported_value",
        )  # fmt: skip
    structured = next((k for k in ("structured_outputs", "guided_json", "guided_regex", "guided_choice",
                                   "guided_grammar") if body.get(k) is not None), None)  # fmt: skip
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        structured = "response_format"
    if structured is not None:
        raise RequestError(
            f"`{structured}` with `budget_strategy: rounds`: each round would restart the grammar; "
            "use the `engine` strategy", structured, code="unsupported_value",
        )  # fmt: skip


def forwarded(endpoint: str, model: ServedModel) -> frozenset[str]:
    """Budget fields that also reach vLLM unchanged (the others are budgetforce's alone and removed).

    `reasoning_effort` of a chat request, when the operator gave vLLM `--reasoning-effort-map`:
    that map says the chat template knows effort levels, so vLLM renders the template with the
    request's effort (rewritten by the map), while the thinking budget still comes from
    budgetforce's effort table, keyed by the effort the client sent. Without a map vLLM never sees
    it (budgetforce's table alone decides; vLLM would switch the template's thinking off at `none`).
    """
    return frozenset({"reasoning_effort"}) if model.effort_map and endpoint == "chat" else frozenset()


def budget_xargs(budget: Budget) -> dict[str, Any]:
    """A budget as the processor's `vllm_xargs` (`budgetforce.vllm.wire.budget_from_xargs` reads them back):
    the minimum, and every other field the budget was given (the processor knows the defaults)."""
    out: dict[str, Any] = {}
    for name in XARG_FIELDS:
        value = getattr(budget, name)
        if value is not None and (name == "min_thinking_tokens" or name in budget.model_fields_set):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _stops(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    return []


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _choices(body: dict[str, Any], endpoint: str) -> int:
    n = max(_int(body.get("n"), 1), 1)
    prompt = body.get("prompt")
    if endpoint == "completions" and isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return n * len(prompt)
    return n


def _cap(body: dict[str, Any], endpoint: str, completion_default: int | None) -> tuple[str, int | None]:
    """The request field that caps thinking plus answer, and its value (None: the rest of the context).

    A text completion without `max_tokens` gets vLLM's default (16, as in OpenAI's API).
    """
    if endpoint == "chat" and body.get("max_completion_tokens") is not None:
        name = "max_completion_tokens"
    else:
        name = "max_tokens"
    value = body.get(name)
    if value is None and endpoint == "completions":
        value = completion_default
    return name, value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def validation_message(exc: ValidationError) -> tuple[str | None, str]:
    """The first problem of a budget block as (param, message), the param as `a.b[0]`."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    cut = next((i for i, p in enumerate(loc) if isinstance(p, str) and (not p.isidentifier() or p in TYPE_LABELS)), None)
    parts = [str(p) for p in (loc if cut is None else loc[:cut])]
    param = ""
    for p in parts:
        param += f"[{p}]" if p.isdigit() else (f".{p}" if param else p)
    cause = (err.get("ctx") or {}).get("error")
    if getattr(cause, "param", None):  # a cross-field rule names its own field
        param = f"{param}.{cause.param}" if param else cause.param
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not param:
        return None, msg
    if getattr(cause, "param", None):
        return param, msg
    shown = json.dumps(err.get("input"), default=str)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return param, f"`{param}`: {msg} (got {shown})"
