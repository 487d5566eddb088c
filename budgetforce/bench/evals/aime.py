"""AIME 2024 / 2025: 30 competition problems a year, each answer an integer 0-999.

s1 (Muennighoff et al., https://arxiv.org/abs/2501.19393) reports AIME24 50.0 -> 56.7 for
s1-32B with budget forcing. The problem statements are (c) MAA and are NOT shipped: the eval
reads a JSONL file the user gives (the Qwen2.5-Math and eth-sri/matharena layouts both work:
fields `problem` and `answer`, optional `id`).
"""

from __future__ import annotations

from pathlib import Path

from budgetforce.core import graders
from budgetforce.bench.evals.files import read_jsonl
from budgetforce.bench.types import BenchError, Eval, Example

QUERY_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


class AIMEEval(Eval):
    QUERY_TEMPLATE = QUERY_TEMPLATE

    def __init__(self, year: int, data_path: Path | None, num_examples: int | None = None, seed: int = 0) -> None:
        self.name = f"aime{year}"
        self.vote_grader = "integer"
        if data_path is None:
            raise BenchError(
                f"AIME {year} problems are not shipped with budgetforce (they are (c) MAA); "
                f"pass --data-path /path/to/aime{year}.jsonl (fields `problem`, `answer`)"
            )
        rows = read_jsonl(data_path)
        try:
            examples = [
                Example(id=str(row.get("id", i)), question=row["problem"], answer=str(row["answer"]))
                for i, row in enumerate(rows)
            ]
        except KeyError as exc:
            raise BenchError(f"{data_path}: AIME records need fields `problem` and `answer`; missing {exc}") from exc
        super().__init__(examples, num_examples, seed)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return graders.grade_integer(reference, response_text)
