"""GSM8K: grade-school math word problems with integer answers.

Cobbe et al., "Training Verifiers to Solve Math Word Problems", https://arxiv.org/abs/2110.14168.
Data: openai/grade-school-math test split (1319 problems), bundled under MIT (budgetforce/bench/data/NOTICE).
"""

from __future__ import annotations

from budgetforce.core import graders
from budgetforce.bench.evals.files import bundled_path, read_jsonl
from budgetforce.bench.types import Eval, Example

QUERY_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
DATA_FILES = {"test": "gsm8k_test.jsonl", "train": "gsm8k_train.jsonl"}


class GSM8KEval(Eval):
    name = "gsm8k"
    vote_grader = "integer"
    QUERY_TEMPLATE = QUERY_TEMPLATE

    def __init__(self, num_examples: int | None = None, seed: int = 0, split: str = "test") -> None:
        rows = read_jsonl(bundled_path(DATA_FILES[split]))
        examples = [
            Example(id=f"{split}-{i}", question=row["question"], answer=graders.gsm8k_reference(row["answer"]))
            for i, row in enumerate(rows)
        ]
        super().__init__(examples, num_examples, seed)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return graders.grade_integer(reference, response_text)
