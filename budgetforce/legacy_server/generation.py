"""Running one API request on the engine: prompts in, per-choice events out.

Each choice is one `BudgetForcingEngine.stream` consumed by its own task, so `n` choices and
many requests share vLLM's continuous batch. Stopping a choice (a `stop` string, a client that
went away, an error elsewhere) cancels its task, and vLLM aborts the request at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from budgetforce.budget import Budget, BudgetError
from budgetforce.controller import ThinkingController, rfind
from budgetforce.engine import BudgetForcingEngine, BudgetStats, Delta
from budgetforce.stops import StopCutter as _StopCutter
from budgetforce.legacy_server.errors import APIError, vllm_client_errors
from budgetforce.legacy_server.metrics import Metrics
from budgetforce.legacy_server.protocol import BudgetReport, FinishReason, ResolvedBudget, SamplingFields, Usage
from budgetforce.legacy_server.settings import ServerSettings

log = logging.getLogger("budgetforce.server")
SEED_SPAN = 2**64


@dataclass(frozen=True)
class Job:
    """Everything the engine needs for one request, validated and fitted to the context."""

    request_id: str
    prompts: list[list[int]]
    n: int
    budget: Budget | None
    sampling: dict[str, Any]
    seed: int | None
    stops: list[str]
    hide_reasoning: bool

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    def seed_of(self, i: int) -> int | None:
        """Choice i's seed: seed + i, wrapped into int64."""
        if self.seed is None:
            return None
        return (self.seed + i - (-(2**63))) % SEED_SPAN + (-(2**63))


@dataclass(frozen=True)
class ChoiceEvent:
    """New text of one choice; the last event of a choice has `finish_reason` and `report`."""

    index: int
    reasoning: str = ""
    answer: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None
    report: BudgetReport | None = None


def prepare(
    engine: BudgetForcingEngine,
    settings: ServerSettings,
    request: SamplingFields,
    prompts: list[list[int]],
    prompt_param: str,
    cap_param: str,
    request_id: str,
) -> Job:
    """Resolve the budget and fit it to the context; every client mistake raises a 400 here."""
    resolved = request.resolve_budget(settings)
    cap = request.token_cap
    smallest_room = engine.max_model_len - max(len(p) for p in prompts)
    if smallest_room <= 0:
        raise APIError(
            400, f"the prompt has {max(len(p) for p in prompts)} tokens, which leaves no room within the model's "
            f"context of {engine.max_model_len} tokens; shorten it", param=prompt_param, code="context_length_exceeded",
        )  # fmt: skip
    if cap is not None and cap > smallest_room:
        raise APIError(
            400, f"`{cap_param}` ({cap}) exceeds the {smallest_room} tokens left in the model's context "
            f"({engine.max_model_len}) after the prompt; lower it", param=cap_param, code="context_length_exceeded",
        )  # fmt: skip
    budget = _fit(engine, resolved, cap if cap is not None else smallest_room, cap_param)
    sampling = request.sampling()
    _check_sampling({**sampling, "max_tokens": cap if cap is not None else smallest_room})
    return Job(
        request_id=request_id,
        prompts=prompts,
        n=request.n,  # type: ignore[attr-defined]
        budget=budget,
        sampling=sampling,
        seed=request.seed,  # type: ignore[attr-defined]
        stops=request.stop_strings,
        hide_reasoning=resolved.hide_reasoning,
    )


def _fit(engine: BudgetForcingEngine, resolved: ResolvedBudget, limit: int, cap_param: str) -> Budget | None:
    """Shrink a server-chosen budget to fit ``limit``; a client-chosen one that does not fit is a 400."""
    if resolved.budget is None:
        return None
    try:
        budget = resolved.fit(limit, engine.profile.plan(resolved.budget).forced_end_length, cap_param)
        engine.plan(budget, limit)
    except BudgetError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_budget") from None
    return budget


def _check_sampling(sampling: dict[str, Any]) -> None:
    """vLLM's own checks of the sampling parameters, at the edge rather than mid-request."""
    from vllm import SamplingParams

    try:
        SamplingParams(**sampling, detokenize=False)
    except (ValueError, TypeError, *vllm_client_errors()) as exc:
        param = getattr(exc, "parameter", None) or next((k for k in sampling if str(exc).startswith(k)), None)
        raise APIError(400, f"invalid sampling parameters: {exc}", param=param) from None


@dataclass
class _Choice:
    prompt_ids: list[int]
    cutter: _StopCutter | None
    ids: list[int] = field(default_factory=list)
    done: bool = False


def report(stats: BudgetStats, budget: Budget | None = None) -> BudgetReport:
    """A finished choice's report: s1's stats, and the keys of the modes ``budget`` uses."""
    keys = budget.report_keys if budget is not None else ()
    return BudgetReport(
        thinking_tokens=stats.thinking_tokens,
        waits_inserted=stats.waits_inserted,
        forced_end=stats.forced_end,
        strategy=stats.strategy,  # type: ignore[arg-type]
        **{k: getattr(stats, k) for k in keys},  # `BudgetStats` has a field of each report key
    )


def _report_when_cut(engine: BudgetForcingEngine, job: Job, choice: _Choice) -> BudgetReport:
    """Stats of a choice ended by a stop string, counted on its ids; what only the engine knows
    (waits, scheduled waits, probes) is null."""
    ctl = ThinkingController(engine.profile.plan(Budget()), choice.prompt_ids)
    for t in choice.ids:
        ctl.accept(t)
    budget = job.budget
    hi = budget.max_thinking_tokens if budget is not None else None
    modes: dict[str, Any] = {k: None for k in (budget.report_keys if budget is not None else ())}
    if budget is not None and budget.max_answer_tokens is not None:
        modes["answer_tokens"] = ctl.answer_tokens
        modes["answer_truncated"] = ctl.answer_tokens >= budget.max_answer_tokens
    if budget is not None and budget.thinking_intervention is not None:
        forced = engine.profile.encode(budget.thinking_intervention)
        modes["intervened"] = rfind(ctl.split(choice.ids)[0], tuple(forced)) >= 0
    return BudgetReport(
        thinking_tokens=ctl.thinking_tokens,
        waits_inserted=None,
        forced_end=hi is not None and ctl.thinking_tokens >= hi,
        strategy=budget.strategy if budget is not None else None,
        **modes,
    )


async def run(engine: BudgetForcingEngine, job: Job) -> AsyncIterator[ChoiceEvent]:
    """Every choice's events as they come; cancels what is left when the consumer stops early."""
    queue: asyncio.Queue[tuple[int, Delta | BaseException]] = asyncio.Queue()

    async def produce(index: int, prompt_ids: list[int]) -> None:
        sampling = dict(job.sampling)
        seed = job.seed_of(index % job.n)
        if seed is not None:
            sampling["seed"] = seed
        try:
            async for delta in engine.stream(
                prompt_ids, job.budget, request_id=f"{job.request_id}-{index}", **sampling
            ):
                queue.put_nowait((index, delta))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            queue.put_nowait((index, exc))

    choices: dict[int, _Choice] = {}
    tasks: list[asyncio.Task[None]] = []
    for p, prompt_ids in enumerate(job.prompts):
        for i in range(job.n):
            index = p * job.n + i
            choices[index] = _Choice(prompt_ids, _StopCutter(job.stops) if job.stops else None)
            tasks.append(asyncio.create_task(produce(index, prompt_ids), name=f"{job.request_id}-{index}"))
    left = len(choices)
    try:
        while left:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            choice = choices[index]
            if choice.done:
                continue
            choice.ids.extend(item.token_ids)
            answer, cut = choice.cutter.push(item.answer) if choice.cutter else (item.answer, False)
            if cut:
                tasks[index].cancel()  # vLLM aborts the request
                choice.done, left = True, left - 1
                yield ChoiceEvent(
                    index, item.reasoning, answer, len(item.token_ids), "stop", _report_when_cut(engine, job, choice)
                )
            elif item.finish_reason is not None:
                assert item.stats is not None
                answer += choice.cutter.flush() if choice.cutter else ""
                choice.done, left = True, left - 1
                final = report(item.stats, job.budget)
                yield ChoiceEvent(index, item.reasoning, answer, len(item.token_ids), item.finish_reason, final)
            elif item.reasoning or answer or item.token_ids:
                yield ChoiceEvent(index, item.reasoning, answer, len(item.token_ids))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()


@dataclass
class Tally:
    """Per-choice totals of a request, for usage, metrics and the log line."""

    prompt_tokens: int
    tokens: dict[int, int] = field(default_factory=dict)
    reports: dict[int, BudgetReport] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    first_text_s: float | None = None

    def add(self, event: ChoiceEvent) -> None:
        self.tokens[event.index] = self.tokens.get(event.index, 0) + event.tokens
        if self.first_text_s is None and (event.reasoning or event.answer):
            self.first_text_s = time.perf_counter() - self.started
        if event.report is not None:
            self.reports[event.index] = event.report
            self.finish[event.index] = event.finish_reason or "stop"

    def usage(self) -> Usage:
        from budgetforce.legacy_server.protocol import CompletionTokensDetails

        completion = sum(self.tokens.values())
        reasoning = sum(r.thinking_tokens for r in self.reports.values())
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
        )


def record(metrics: Metrics, settings: ServerSettings, endpoint: str, job: Job, tally: Tally, outcome: str) -> None:
    """Metrics and the one log line of a finished (or abandoned) request."""
    metrics.prompt_tokens.inc(tally.prompt_tokens)
    if tally.first_text_s is not None:
        metrics.ttft.labels(endpoint).observe(tally.first_text_s)
    for index, tokens in tally.tokens.items():
        metrics.choice_done(tokens, tally.reports.get(index))
    if outcome == "aborted":
        metrics.aborted.labels(endpoint).inc()
    if not settings.log_requests:
        return
    reports = [tally.reports[i] for i in sorted(tally.reports)]
    log.info(
        "%s %s %s choices=%d prompt=%d completion=%d thinking=%s waits=%s forced_end=%s strategy=%s finish=%s "
        "budget=%s latency=%.2fs",
        endpoint, job.request_id, outcome, job.choices, tally.prompt_tokens, sum(tally.tokens.values()),
        ",".join(str(r.thinking_tokens) for r in reports) or "-",
        ",".join(str(r.waits_inserted) for r in reports) or "-",
        ",".join(str(r.forced_end).lower() for r in reports) or "-",
        job.budget.strategy if job.budget else "none",
        ",".join(tally.finish[i] for i in sorted(tally.finish)) or "-",
        f"{job.budget.min_thinking_tokens}..{job.budget.max_thinking_tokens}" if job.budget else "none",
        time.perf_counter() - tally.started,
    )  # fmt: skip
