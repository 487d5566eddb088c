"""Accuracy vs thinking budget: the s1 sweep, resumable, against any OpenAI-compatible endpoint.

Here the run (`run_sweep`, grading each sample as it finishes); `sweep.py` parses the points,
`store.py` keeps the samples, `reporting.py` reports. Every finished sample is appended to
`samples.jsonl` at once (request and response verbatim), so
a crash loses only the samples in flight; a rerun with the same `--out` skips every key
(point, example, repeat) that already has an error-free line and retries the rest.

The summary reports, per sweep point, accuracy and the thinking-token distribution, and per
series (points sharing strategy and wait strings) the three metrics of s1 (Muennighoff et al.,
https://arxiv.org/abs/2501.19393, section 3.2):

- Control: the fraction of budgeted samples whose thinking tokens lie within [min, max].
- Scaling: the mean pairwise slope of accuracy vs mean thinking tokens over the series' points,
  here in accuracy points (%) per 1000 thinking tokens, so it reads "what a thousand tokens buy".
- Performance: the best accuracy over the series' points.

Points of the thinking modes beyond s1 (given with `--point`: banned strings, interventions,
answer budgets, scheduled waits, answer probes) form series of their own, named by their modes;
the "all" row of the s1 metrics is over s1's points only. Where the server reports the modes'
keys (`scheduled_waits`, `early_exit`, `probes`, ...), the per-point table gains their means.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from budgetforce.bench.store import SAMPLES_FILE, latest_by_key, read_samples, sample_key, sample_seed
from budgetforce.bench.types import (
    MODE_REPORT_KEYS,
    BenchError,
    BudgetSettings,
    Eval,
    Example,
    SamplerBase,
    SamplerResponse,
    SingleEvalResult,
)

logger = logging.getLogger(__name__)


def grade_sample(eval_: Eval, example: Example, response: SamplerResponse) -> SingleEvalResult:
    """Score one response; a transport failure scores None so it is retried, not counted wrong."""
    messages = eval_.messages(example)
    if response.error is not None:
        return SingleEvalResult(score=None, convo=messages)
    try:
        score, extracted = eval_.grade(example.answer, response.content)
    except ValueError as exc:  # a reference the grader cannot read: the data or --grader is wrong
        raise BenchError(f"cannot grade example {example.id!r} of {eval_.name}: {exc}") from exc
    metrics = {"latency_s": response.latency_s}
    if response.thinking_tokens is not None:
        metrics["thinking_tokens"] = response.thinking_tokens
    if response.waits_inserted is not None:
        metrics["waits_inserted"] = response.waits_inserted
    if response.forced_end is not None:
        metrics["forced_end"] = float(response.forced_end)
    for key in MODE_REPORT_KEYS:
        value = getattr(response, key)
        if value is not None:
            metrics[key] = float(value)
    convo = messages + [{"role": "assistant", "content": response.content, "reasoning": response.reasoning}]
    return SingleEvalResult(score=score, metrics=metrics, extracted_answer=extracted, convo=convo)


def sample_row(
    key: str, eval_: Eval, point: BudgetSettings, example: Example, repeat: int, response: SamplerResponse
) -> dict[str, Any]:
    result = grade_sample(eval_, example, response)
    within = (
        None if not point.has_s1_budget or response.thinking_tokens is None else point.within(response.thinking_tokens)
    )
    return {
        "key": key,
        "eval": eval_.name,
        "point": point.label,
        "budget": point.model_dump(exclude_none=True),
        "example_id": example.id,
        "repeat": repeat,
        "score": result.score,
        "correct_answer": example.answer,
        "extracted_answer": result.extracted_answer,
        "thinking_tokens": response.thinking_tokens,
        "thinking_tokens_source": response.thinking_tokens_source,
        "completion_tokens": response.completion_tokens,
        "waits_inserted": response.waits_inserted,
        "forced_end": response.forced_end,
        **{key: getattr(response, key) for key in MODE_REPORT_KEYS},
        "vote_share": None if response.vote is None else response.vote.get("share"),
        "vote": response.vote,
        "within_budget": within,
        "finish_reason": response.finish_reason,
        "latency_s": round(response.latency_s, 4),
        "attempts": response.attempts,
        "error": response.error,
        "request": response.request,
        "response": response.response,
    }


def request_point(point: BudgetSettings, eval_: Eval) -> BudgetSettings:
    """The point as sent: a vote that names no grader is read by the eval's own (its label, the
    resume key, stays the point's)."""
    if point.votes and point.vote_grader is None:
        return point.model_copy(update={"vote_grader": eval_.vote_grader})
    return point


async def run_sweep(
    eval_: Eval,
    sampler: SamplerBase,
    points: Sequence[BudgetSettings],
    out_dir: Path,
    concurrency: int = 8,
    repeats: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (point, example, repeat) not yet done in `out_dir`; return all latest rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path = out_dir / SAMPLES_FILE
    done = {k for k, row in latest_by_key(read_samples(samples_path)).items() if row.get("error") is None}
    jobs = [
        (sample_key(point, example, r), point, example, r)
        for point, example, r in itertools.product(points, eval_.examples, range(repeats))
    ]
    pending = [job for job in jobs if job[0] not in done]
    logger.info(
        "%d samples in the sweep, %d already done, %d to run", len(jobs), len(jobs) - len(pending), len(pending)
    )
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), disable=not progress, desc=eval_.name, unit="sample")

    with samples_path.open("a", encoding="utf-8") as sink:
        if sink.tell() and not samples_path.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line cut off by a crash so the next sample starts cleanly

        async def one(key: str, point: BudgetSettings, example: Example, repeat: int) -> None:
            async with semaphore:
                response = await sampler(eval_.messages(example), request_point(point, eval_), seed=sample_seed(key))
            row = sample_row(key, eval_, point, example, repeat, response)
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update()
            if row["error"]:
                bar.write(f"sample {key} failed after {response.attempts} attempts: {row['error']}")

        tasks = [asyncio.create_task(one(*job)) for job in pending]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a rejected request, a grader error, ^C: stop, keep what finished
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
    wanted = {job[0] for job in jobs}
    return [row for key, row in latest_by_key(read_samples(samples_path)).items() if key in wanted]
