"""Any JSONL file of question/answer records, with a field mapping and a choice of grader.

For in-house sets: `--eval jsonl --data-path f.jsonl --question-field q --answer-field a
--grader integer|math|exact`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from budgetforce.core import graders
from budgetforce.bench.evals.files import read_jsonl
from budgetforce.bench.types import BenchError, Eval, Example

QUERY_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
GraderName = Literal["integer", "math", "exact"]


def grade_exact(reference: str, response_text: str) -> tuple[float, str | None]:
    """1.0 when the extracted answer equals the reference after light normalisation."""
    extracted = graders.extract_answer(graders.answer_part(response_text))
    if extracted is None:
        return 0.0, None
    return float(graders.normalize_latex(extracted) == graders.normalize_latex(reference)), extracted


GRADERS = {"integer": graders.grade_integer, "math": graders.grade_math, "exact": grade_exact}


class JsonlEval(Eval):
    def __init__(
        self,
        data_path: Path | None,
        question_field: str = "question",
        answer_field: str = "answer",
        id_field: str | None = None,
        grader: GraderName = "math",
        query_template: str = QUERY_TEMPLATE,
        num_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        if data_path is None:
            raise BenchError("--eval jsonl needs --data-path FILE.jsonl")
        if grader not in GRADERS:
            raise BenchError(f"unknown --grader {grader!r}; choose one of {', '.join(GRADERS)}")
        if "{question}" not in query_template:
            raise BenchError("--prompt-template must contain the placeholder {question}")
        self.name = f"jsonl:{Path(data_path).stem}"
        self.QUERY_TEMPLATE = query_template
        self._grade = GRADERS[grader]
        # the server reads a vote's answers as `grade` does: `exact` grades the extracted answer in
        # the math normal form, which is the server's `math` key
        self.vote_grader = "math" if grader == "exact" else grader
        rows = read_jsonl(data_path)
        examples = []
        for i, row in enumerate(rows):
            missing = [f for f in (question_field, answer_field, id_field) if f is not None and f not in row]
            if missing:
                raise BenchError(f"{data_path} line {i + 1}: no field {missing[0]!r} (fields: {', '.join(row)})")
            example_id = str(row[id_field]) if id_field else str(i)
            examples.append(Example(id=example_id, question=str(row[question_field]), answer=str(row[answer_field])))
        super().__init__(examples, num_examples, seed)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return self._grade(reference, response_text)
