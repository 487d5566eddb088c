"""Teacher traces with rejection sampling: k samples per problem from any OpenAI-compatible teacher.

Sampling reuses the harness: `ChatSampler` (retries with jittered backoff on 408/409/429/5xx and
connection errors, budget fields for a budgetforce teacher) and `run_sweep` (concurrency, a
progress bar, one JSONL line per finished sample, so a crash keeps every finished sample and a
rerun of the same command resumes). Rejection is a separate, cheap pass over those lines, so a
different validator never costs another teacher call.

A sample is kept when it finished (`finish_reason` "stop"), has reasoning, and passes the check:
the problem set's grader against the reference answer (the harness's graders), or a user function
named `module:function` (or `path/to/file.py:function`) called as
``fn(question=..., reference=..., reasoning=..., answer=...)`` and kept when it returns a truthy value.

Outputs in the run folder:
    samples.jsonl   every teacher sample, request and response verbatim (the harness's format)
    sft.jsonl       the kept traces, chat format, reasoning in a `<think>` block
    report.json     kept/total, rejections by reason, per-problem pass rates, mean trace length
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from budgetforce.bench import accuracy, store
from budgetforce.bench.sampler import split_reasoning
from budgetforce.bench.types import BenchError, BudgetSettings, SamplerBase
from budgetforce.distill.problems import ProblemSet, ProblemSpec

logger = logging.getLogger(__name__)

SFT_FILE = "sft.jsonl"
REPORT_FILE = "report.json"
SPEC_FILE = "problems.json"
Validator = Callable[..., Any]


def assistant_text(reasoning: str, answer: str) -> str:
    """The assistant turn of a distillation record: the reasoning in a `<think>` block, then the answer.

    >>> assistant_text("2 + 2 = 4.", "The answer is 4.")
    '<think>\\n2 + 2 = 4.\\n</think>\\n\\nThe answer is 4.'
    """
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"


def sft_record(example_id: str, messages: list[dict[str, str]], reasoning: str, answer: str, target: str,
               **extra: Any) -> dict[str, Any]:  # fmt: skip
    """One line of an SFT data set: the prompt turns plus the assistant turn, and where it came from."""
    return {
        "id": example_id,
        "target": target,
        "messages": [*messages, {"role": "assistant", "content": assistant_text(reasoning, answer)}],
        **extra,
    }


def load_validator(spec: str) -> Validator:
    """The function `module:function` or `path/to/file.py:function` names; BenchError if it cannot."""
    module_name, sep, function = spec.rpartition(":")
    if not sep or not module_name or not function:
        raise BenchError(f"`--validator` takes module:function or file.py:function; got {spec!r}")
    try:
        if module_name.endswith(".py"):
            location = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if location is None or location.loader is None or not Path(module_name).is_file():
                raise BenchError(f"`--validator`: no file {module_name}")
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchError(f"`--validator`: cannot import {module_name}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise BenchError(f"`--validator`: {module_name} has no function {function!r}")
    return fn


def judge(row: dict[str, Any], problems: ProblemSet, validator: Validator | None) -> tuple[str, str, str]:
    """(verdict, reasoning, answer) of one sample line; verdict is kept, wrong, incomplete or error."""
    if row.get("error") is not None or row.get("response") is None:
        return "error", "", ""
    message = row["response"]["choices"][0].get("message") or {}
    reasoning, answer = split_reasoning(message)
    if row.get("finish_reason") != "stop" or not reasoning.strip():
        return "incomplete", reasoning, answer
    if validator is None:
        ok = problems.grade(row["correct_answer"], answer) >= 1.0
    else:
        question = row["request"]["messages"][-1]["content"]
        ok = bool(validator(question=question, reference=row["correct_answer"], reasoning=reasoning, answer=answer))
    return ("kept" if ok else "wrong"), reasoning, answer


def reject(
    problems: ProblemSet,
    rows: list[dict[str, Any]],
    out_dir: Path,
    validator: Validator | None = None,
    max_per_problem: int | None = None,
) -> dict[str, Any]:
    """Write `sft.jsonl` (kept traces) and `report.json` from the sample lines; return the report."""
    examples = {ex.id: ex for ex in problems.examples}
    verdicts: dict[str, int] = {"kept": 0, "wrong": 0, "incomplete": 0, "error": 0}
    per_problem: dict[str, list[int]] = {ex_id: [0, 0] for ex_id in examples}  # [kept, samples]
    kept_tokens: list[int] = []
    all_tokens: list[int] = []
    kept_chars: list[int] = []
    records = []
    for row in sorted(rows, key=lambda r: (r["example_id"], r["repeat"])):
        verdict, reasoning, answer = judge(row, problems, validator)
        verdicts[verdict] += 1
        counts = per_problem.setdefault(row["example_id"], [0, 0])
        counts[1] += 1
        if row.get("thinking_tokens") is not None:
            all_tokens.append(row["thinking_tokens"])
        if verdict != "kept" or (max_per_problem is not None and counts[0] >= max_per_problem):
            continue
        counts[0] += 1
        if row.get("thinking_tokens") is not None:
            kept_tokens.append(row["thinking_tokens"])
        kept_chars.append(len(reasoning))
        example = examples[row["example_id"]]
        records.append(
            sft_record(example.id, problems.eval.messages(example), reasoning, answer, "teacher",
                       reference=example.answer, repeat=row["repeat"], thinking_tokens=row.get("thinking_tokens"))
        )  # fmt: skip
    with (out_dir / SFT_FILE).open("w", encoding="utf-8") as sink:
        for record in records:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    rates = {ex_id: (k / n if n else None) for ex_id, (k, n) in per_problem.items()}
    known = [r for r in rates.values() if r is not None]
    report = {
        "samples": sum(verdicts.values()),
        "kept": verdicts["kept"],
        "written": len(records),
        "rejected_wrong": verdicts["wrong"],
        "rejected_incomplete": verdicts["incomplete"],
        "errors": verdicts["error"],
        "keep_rate": verdicts["kept"] / max(1, sum(verdicts.values()) - verdicts["error"]),
        "problems": len(per_problem),
        "problems_with_a_kept_trace": sum(1 for k, _ in per_problem.values() if k),
        "mean_problem_pass_rate": statistics.fmean(known) if known else None,
        "mean_thinking_tokens_kept": statistics.fmean(kept_tokens) if kept_tokens else None,
        "mean_thinking_tokens_all": statistics.fmean(all_tokens) if all_tokens else None,
        "mean_reasoning_chars_kept": statistics.fmean(kept_chars) if kept_chars else None,
        "validator": "grader" if validator is None else getattr(validator, "__qualname__", str(validator)),
        "per_problem": {ex_id: {"kept": k, "samples": n, "pass_rate": rates[ex_id]} for ex_id, (k, n) in per_problem.items()},
    }  # fmt: skip
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


async def generate(
    problems: ProblemSet,
    spec: ProblemSpec,
    sampler: SamplerBase,
    config: store.RunConfig,
    out_dir: Path,
    samples_per_problem: int = 4,
    budget: BudgetSettings | None = None,
    concurrency: int = 8,
    validator: Validator | None = None,
    max_per_problem: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample the teacher (resuming `out_dir`), then rejection-sample; return the report."""
    budget = budget or BudgetSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    store.check_run_config(out_dir, config)
    spec_path = out_dir / SPEC_FILE
    if spec_path.exists() and json.loads(spec_path.read_text()) != asdict(spec):
        raise BenchError(f"{out_dir} holds samples of other problems; use another --out, or --overwrite")
    spec_path.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    rows = await accuracy.run_sweep(
        problems.eval, sampler, [budget], out_dir, concurrency, samples_per_problem, progress
    )
    report = reject(problems, rows, out_dir, validator, max_per_problem)
    report["teacher"] = config.model_dump()
    report["budget"] = budget.model_dump(exclude_none=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def read_spec(run_dir: Path) -> ProblemSpec:
    """The problem spec a `generate` run stored."""
    path = run_dir / SPEC_FILE
    if not path.is_file():
        raise BenchError(f"{run_dir} is not a `budgetforce distill generate` run (no {SPEC_FILE})")
    return ProblemSpec(**json.loads(path.read_text()))
