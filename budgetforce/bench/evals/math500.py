"""MATH-500: the 500-problem test subset of MATH used by "Let's Verify Step by Step".

Hendrycks et al., "Measuring Mathematical Problem Solving With the MATH Dataset",
https://arxiv.org/abs/2103.03874; subset from Lightman et al., https://arxiv.org/abs/2305.20050.
Answers are LaTeX, so grading uses math-verify's equivalence check (s1 reports MATH500 92.6 -> 93.0
for s1-32B with budget forcing). Bundled under MIT (budgetforce/bench/data/NOTICE).
"""

from __future__ import annotations

from budgetforce.core import graders
from budgetforce.bench.evals.files import bundled_path, read_jsonl
from budgetforce.bench.types import Eval, Example

QUERY_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


class Math500Eval(Eval):
    name = "math500"
    vote_grader = "math"
    QUERY_TEMPLATE = QUERY_TEMPLATE

    def __init__(self, num_examples: int | None = None, seed: int = 0) -> None:
        rows = read_jsonl(bundled_path("math500.jsonl"))
        examples = [Example(id=row["unique_id"], question=row["problem"], answer=row["answer"]) for row in rows]
        super().__init__(examples, num_examples, seed)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return graders.grade_math(reference, response_text)
