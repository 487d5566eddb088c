"""The data sets `budgetforce bench accuracy --eval NAME` knows, built by `load_eval`."""

from __future__ import annotations

from pathlib import Path

from budgetforce.bench.types import BenchError, Eval

EVAL_NAMES = ("gsm8k", "gsm8k-train", "math500", "aime2024", "aime2025", "jsonl", "student")


def load_eval(
    name: str,
    num_examples: int | None = None,
    seed: int = 0,
    data_path: Path | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    grader: str = "math",
    query_template: str | None = None,
) -> Eval:
    """Build the eval `name`; raises BenchError with the accepted names for anything else."""
    if name in ("gsm8k", "gsm8k-train"):
        from budgetforce.bench.evals.gsm8k import GSM8KEval

        return GSM8KEval(num_examples, seed, split="train" if name == "gsm8k-train" else "test")
    if name == "math500":
        from budgetforce.bench.evals.math500 import Math500Eval

        return Math500Eval(num_examples, seed)
    if name in ("aime2024", "aime2025"):
        from budgetforce.bench.evals.aime import AIMEEval

        return AIMEEval(int(name[4:]), data_path, num_examples, seed)
    if name == "jsonl":
        from budgetforce.bench.evals.jsonl import QUERY_TEMPLATE, JsonlEval

        return JsonlEval(
            data_path, question_field, answer_field, id_field, grader,  # type: ignore[arg-type]
            query_template or QUERY_TEMPLATE, num_examples, seed,
        )  # fmt: skip
    if name == "student":
        from budgetforce.bench.evals.student import StudentTaskEval

        return StudentTaskEval(num_examples)
    raise BenchError(f"unknown eval {name!r}; choose one of {', '.join(EVAL_NAMES)}")
