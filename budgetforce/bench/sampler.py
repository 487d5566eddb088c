"""An async OpenAI-compatible chat sampler that speaks budgetforce's budget fields or vLLM's.

The `backend` switch exists so the same sweep can run against a stock `vllm serve` for
comparison: vLLM only enforces a maximum (its `thinking_token_budget` request field), so a
budget with a minimum, waits, wait strings or a strategy is refused up front rather than being
silently ignored by the server; so is a point that uses one of budgetforce's thinking modes
beyond s1 (banned strings, interventions, answer budgets, scheduled waits, answer probes).

Thinking tokens are taken from `usage.completion_tokens_details.reasoning_tokens` when the server
reports them (budgetforce always does; vLLM does when started with a reasoning parser, but 0.32
reports 0 when the chat template opens `<think>` in the prompt, so a zero beside non-empty
reasoning text is ignored), else from budgetforce's `choices[0].budget.thinking_tokens`, else by
re-tokenizing the reasoning text with `count_tokens` when given (within a token or two of the
generated count); otherwise they are left unknown (None).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from budgetforce.bench.types import (
    MODE_REPORT_KEYS,
    Backend,
    BenchError,
    BudgetSettings,
    MessageList,
    SamplerResponse,
)

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RequestRejected(BenchError):
    """The server refused a request as malformed (4xx): every sample would fail the same way."""


def budget_fields(budget: BudgetSettings, backend: Backend) -> dict[str, Any]:
    """The request fields that carry `budget` for `backend`; raises BenchError if it cannot."""
    if backend == "vllm":
        unsupported = [
            name
            for name in ("min_thinking_tokens", "max_waits", "wait_strings", "answer_prefix", "strategy")
            if getattr(budget, name) is not None
        ]
        if budget.votes:
            raise BenchError(
                f"backend `vllm` has no vote over choices; point {budget.label!r} sets `budget_aggregate`. "
                "Use --backend budgetforce against a budgetforce server."
            )
        if budget.modes:
            raise BenchError(
                f"backend `vllm` has none of budgetforce's thinking modes; point {budget.label!r} uses "
                f"{', '.join(budget.modes)} ({', '.join(budget.mode_fields)}). "
                "Use --backend budgetforce against a budgetforce server."
            )
        if unsupported:
            raise BenchError(
                f"backend `vllm` enforces only a maximum thinking budget; "
                f"point {budget.label!r} also sets {', '.join(unsupported)}. "
                "Use --backend budgetforce, or sweep --max only."
            )
        if budget.max_thinking_tokens is None:
            return {}
        return {"thinking_token_budget": budget.max_thinking_tokens}
    fields: dict[str, Any] = {
        "min_thinking_tokens": budget.min_thinking_tokens,
        "max_thinking_tokens": budget.max_thinking_tokens,
        "max_waits": budget.max_waits,
        "wait_strings": list(budget.wait_strings) if budget.wait_strings is not None else None,
        "answer_prefix": budget.answer_prefix,
        "budget_strategy": budget.strategy,
        "n": budget.n,
        "budget_aggregate": budget.budget_aggregate,
        "vote_grader": budget.vote_grader,
        "total_thinking_tokens": budget.total_thinking_tokens,
    }
    for name in budget.mode_fields:  # the modes' fields go out under their own names
        value = getattr(budget, name)
        fields[name] = list(value) if isinstance(value, tuple) else value
    return {key: value for key, value in fields.items() if value is not None}


def error_message(response: httpx.Response) -> str:
    """The server's `error.message` when it sent the OpenAI error shape, else the raw body."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body
    except (ValueError, KeyError, AttributeError):
        message = response.text[:500]
    return f"HTTP {response.status_code}: {message}"


def split_reasoning(message: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer) from a chat message, whichever field name the server used.

    A server without a reasoning parser returns everything as `content`; then the text before
    the last `</think>` is the reasoning.
    """
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if not reasoning and "</think>" in content:
        reasoning, content = content.rsplit("</think>", 1)
        reasoning = reasoning.removeprefix("<think>")
    return reasoning, content


class ChatSampler:
    """POSTs chat completions to `{base_url}/chat/completions`, retrying transient failures.

    Args:
        base_url: the API root, e.g. "http://127.0.0.1:8000/v1".
        model: the served model id.
        backend: "budgetforce" (all budget fields) or "vllm" (max only).
        max_tokens: completion cap (thinking + answer), sent as `max_completion_tokens` to
            budgetforce and `max_tokens` to vLLM.
        temperature, top_p, seed: sampling settings (s1 uses greedy decoding: temperature 0).
        api_key: sent as a bearer token when given.
        timeout_s: per-request timeout.
        max_retries: retries on 408/409/429/5xx and connection errors, with jittered
            exponential backoff starting at `backoff_s`.
        count_tokens: optional text -> token count, used only when the server reports no
            thinking-token count.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        backend: Backend = "budgetforce",
        max_tokens: int = 4096,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        count_tokens: Callable[[str], int] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.backend = backend
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.count_tokens = count_tokens
        self._warned_uncounted = False
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def aclose(self) -> None:
        await self.client.aclose()

    def request_body(self, messages: MessageList, budget: BudgetSettings, seed: int | None = None) -> dict[str, Any]:
        """The request; ``seed`` (one per sample, from the harness) wins over the sampler's own."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if seed is not None or self.seed is not None:
            body["seed"] = seed if seed is not None else self.seed
        body["max_completion_tokens" if self.backend == "budgetforce" else "max_tokens"] = self.max_tokens
        body.update(budget_fields(budget, self.backend))
        return body

    async def __call__(self, messages: MessageList, budget: BudgetSettings, seed: int | None = None) -> SamplerResponse:
        body = self.request_body(messages, budget, seed)
        start = time.perf_counter()
        last_error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                response = await self.client.post(self.url, json=body)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    result = self.parse(body, response.json())
                    result.latency_s = time.perf_counter() - start
                    result.attempts = attempt
                    return result
                last_error = error_message(response)
                if response.status_code not in RETRY_STATUS:
                    raise RequestRejected(f"{self.url} rejected the request: {last_error}")
            if attempt <= self.max_retries:
                delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                logger.warning("attempt %d failed (%s); retrying in %.1fs", attempt, last_error, delay)
                await asyncio.sleep(delay)
        return SamplerResponse(
            request=body,
            response=None,
            latency_s=time.perf_counter() - start,
            attempts=self.max_retries + 1,
            error=last_error,
        )

    def parse(self, body: dict[str, Any], payload: dict[str, Any]) -> SamplerResponse:
        vote = payload.get("vote")
        # a vote is graded on the majority's answer: the first choice that gave it (choice 0 when none did)
        index = vote.get("index") if isinstance(vote, dict) else None
        choice = next((c for c in payload["choices"] if c.get("index") == index), payload["choices"][0])
        reasoning, content = split_reasoning(choice.get("message") or {})
        usage = payload.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        budget = choice.get("budget") or {}
        result = SamplerResponse(
            request=body,
            response=payload,
            content=content,
            reasoning=reasoning,
            completion_tokens=usage.get("completion_tokens"),
            waits_inserted=budget.get("waits_inserted"),
            forced_end=budget.get("forced_end"),
            finish_reason=choice.get("finish_reason"),
            vote=vote if isinstance(vote, dict) else None,
            **{key: budget.get(key) for key in MODE_REPORT_KEYS},
        )
        if result.vote is not None and result.vote.get("thinking_tokens") is not None:
            # all the choices' thinking: what the vote spent, the x axis it is compared on
            result.thinking_tokens, result.thinking_tokens_source = result.vote["thinking_tokens"], "vote"
            return result
        reported = details.get("reasoning_tokens")
        # vLLM 0.32 reports 0 when the chat template opens `<think>` in the prompt (R1 family),
        # so a zero next to non-empty reasoning text is not trusted.
        if reported is not None and (reported > 0 or not reasoning):
            result.thinking_tokens, result.thinking_tokens_source = reported, "usage"
        elif budget.get("thinking_tokens") is not None:
            result.thinking_tokens, result.thinking_tokens_source = budget["thinking_tokens"], "budget"
        elif self.count_tokens is not None:
            result.thinking_tokens, result.thinking_tokens_source = self.count_tokens(reasoning), "tokenizer"
        elif not self._warned_uncounted:
            self._warned_uncounted = True
            logger.warning("the server reports no usable reasoning-token count; pass --tokenizer to count locally")
        return result


async def served_model(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> tuple[str, str | None]:
    """(id, root) of the first model of `GET {base_url}/models`; a readable error if unreachable.

    vLLM lists the model's path or hub id as `root`, which lets the CLI find a tokenizer.
    """
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
            response = await client.get(url)
    except httpx.TransportError as exc:
        raise BenchError(f"cannot reach {url} ({type(exc).__name__}: {exc}); is the server running?") from exc
    if response.status_code != 200:
        raise BenchError(f"GET {url} failed: {error_message(response)}")
    models = response.json().get("data") or []
    if not models:
        raise BenchError(f"GET {url} lists no models; pass --model")
    return models[0]["id"], models[0].get("root")
