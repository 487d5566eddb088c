"""The bundled student's own task: seeded multi-step arithmetic word problems (integer answers).

The generator lives in `budgetforce.student.task` (the student engineer's module) and is
imported lazily, so the harness works without it. We evaluate on its held-out split
(`heldout_problems(n, seed)`), which training never sees. The student was trained on the bare
question and answers "The answer is N." after `</think>`, so the prompt is the question alone
unless the task module publishes a `PROMPT_TEMPLATE` with a `{question}` placeholder.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from budgetforce.core import graders
from budgetforce.bench.types import BenchError, Eval, Example

TASK_MODULE = "budgetforce.student.task"
QUERY_TEMPLATE = "{question}"
DEFAULT_NUM_EXAMPLES = 200


def load_task() -> ModuleType:
    try:
        task = importlib.import_module(TASK_MODULE)
    except ImportError as exc:
        raise BenchError(f"the student task needs {TASK_MODULE}, which cannot be imported: {exc}") from exc
    if not hasattr(task, "heldout_problems"):
        raise BenchError(f"{TASK_MODULE} has no `heldout_problems(n, seed)`; the harness cannot generate problems")
    return task


class StudentTaskEval(Eval):
    name = "student"
    vote_grader = "integer"

    def __init__(self, num_examples: int | None = None, seed: int | None = None) -> None:
        task = load_task()
        self.QUERY_TEMPLATE = getattr(task, "PROMPT_TEMPLATE", QUERY_TEMPLATE)
        seed = getattr(task, "EVAL_SEED", 0) if seed is None else seed
        problems = task.heldout_problems(num_examples or DEFAULT_NUM_EXAMPLES, seed=seed)
        examples = [
            Example(id=f"{seed}-{i}", question=p.question, answer=str(p.answer)) for i, p in enumerate(problems)
        ]
        super().__init__(examples)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return graders.grade_integer(reference, response_text)
