"""Problem sets for distillation: prompts, reference answers and, where the data has one, a human rationale.

A problem set wraps one of the harness's `Eval`s (same prompts, same grader) and adds a
`rationale` per example id (GSM8K's worked solution; the student task's reference steps), which
`build` turns into the "human CoT" target. Names:

- ``gsm8k`` / ``gsm8k-train``: GSM8K's train split (7473 problems; distil on this, evaluate on test).
- ``gsm8k-test``: GSM8K's test split (the harness's ``gsm8k``).
- ``student``: the bundled student's task, train split (`budgetforce.student.task`); evaluate
  on its held-out split with the harness's ``student`` eval.
- ``jsonl``: any JSONL file (``--data-path``) with question, answer and optional rationale fields.
- any other harness eval name (``math500``, ...): prompts and answers, no rationale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetforce.core import graders
from budgetforce.bench.evals import load_eval
from budgetforce.bench.evals.files import bundled_path, read_jsonl
from budgetforce.bench.types import BenchError, Eval, Example

PROBLEM_SETS = ("gsm8k", "gsm8k-train", "gsm8k-test", "student", "jsonl", "math500", "aime2024", "aime2025")
CALCULATOR_PATTERN = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"
STUDENT_SEED = 1234  # the student task's train-split seed used for distillation problems


@dataclass(frozen=True)
class ProblemSpec:
    """Which problems: a set name plus the options that pick and read them (stored with each run)."""

    name: str = "gsm8k"
    num_examples: int | None = None
    seed: int = 0
    data_path: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"
    rationale_field: str | None = None
    grader: str = "integer"
    prompt_template: str | None = None


@dataclass
class ProblemSet:
    """An eval (examples, prompt, grader) plus the human rationale per example id, where known."""

    eval: Eval
    rationales: dict[str, str] = field(default_factory=dict)
    answer_template: str = "The answer is {answer}."

    @property
    def examples(self) -> list[Example]:
        return self.eval.examples

    def grade(self, reference: str, answer_text: str) -> float:
        return self.eval.grade(reference, answer_text)[0]


def gsm8k_rationale(solution: str) -> str:
    """GSM8K's worked solution without the calculator annotations and the final "#### N" line.

    >>> gsm8k_rationale("She sold 48/2 = <<48/2=24>>24 clips.\\n#### 24")
    'She sold 48/2 = 24 clips.'
    """
    return CALCULATOR_PATTERN.sub("", solution.rsplit("####", 1)[0]).strip()


def student_rationale(problem: Any) -> str:
    """The student task's reference solution: each step in the teacher's compact form, then the answer."""
    from budgetforce.student.teacher import compact

    lines = [f"{problem.name} starts with {problem.start} {problem.item}."] if problem.start is not None else []
    lines += [step.say.format(expr=compact(step.op, step.args, step.value)) for step in problem.steps]
    lines.append(f"So the answer is {problem.answer}.")
    return "\n".join(lines)


class StudentTrainEval(Eval):
    """The student task's train split as an eval: distinct questions from a seeded stream."""

    name = "student-train"

    def __init__(self, num_examples: int | None, seed: int) -> None:
        from budgetforce.bench.evals.student import StudentTaskEval, load_task

        task = load_task()
        self.QUERY_TEMPLATE = getattr(task, "PROMPT_TEMPLATE", StudentTaskEval.QUERY_TEMPLATE)
        seen: set[str] = set()
        self.problems = []
        for p in task.problems(seed, "train"):
            if p.question not in seen:
                seen.add(p.question)
                self.problems.append(p)
                if len(self.problems) == (num_examples or 200):
                    break
        examples = [
            Example(id=f"train-{seed}-{i}", question=p.question, answer=str(p.answer))
            for i, p in enumerate(self.problems)
        ]
        super().__init__(examples)

    def grade(self, reference: str, response_text: str) -> tuple[float, str | None]:
        return graders.grade_integer(reference, response_text)


def load_problems(spec: ProblemSpec) -> ProblemSet:
    """The problem set `spec` names; BenchError for unknown names or unreadable files."""
    name = spec.name
    if name in ("gsm8k", "gsm8k-train", "gsm8k-test"):
        split = "test" if name == "gsm8k-test" else "train"
        eval_ = load_eval("gsm8k" if split == "test" else "gsm8k-train", spec.num_examples, spec.seed)
        rows = read_jsonl(bundled_path(f"gsm8k_{split}.jsonl"))
        rationales = {ex.id: gsm8k_rationale(rows[int(ex.id.split("-")[1])]["answer"]) for ex in eval_.examples}
        return ProblemSet(eval_, rationales, "The answer is $\\boxed{{{answer}}}$.")
    if name == "student":
        student = StudentTrainEval(spec.num_examples, spec.seed or STUDENT_SEED)
        rationales = {ex.id: student_rationale(p) for ex, p in zip(student.examples, student.problems)}
        return ProblemSet(student, rationales)
    eval_ = load_eval(
        name, spec.num_examples, spec.seed, Path(spec.data_path) if spec.data_path else None,
        spec.question_field, spec.answer_field, None, spec.grader, spec.prompt_template,
    )  # fmt: skip
    rationales: dict[str, str] = {}
    if name == "jsonl" and spec.rationale_field:
        assert spec.data_path is not None  # load_eval refused a jsonl set without one
        rows = read_jsonl(spec.data_path)
        by_id = {str(i): row for i, row in enumerate(rows)}
        missing = [ex.id for ex in eval_.examples if spec.rationale_field not in by_id[ex.id]]
        if missing:
            raise BenchError(f"{spec.data_path} line {int(missing[0]) + 1}: no field {spec.rationale_field!r}")
        rationales = {ex.id: str(by_id[ex.id][spec.rationale_field]) for ex in eval_.examples}
    answer_template = (
        "The answer is $\\boxed{{{answer}}}$." if "boxed" in eval_.QUERY_TEMPLATE else "The answer is {answer}."
    )
    return ProblemSet(eval_, rationales, answer_template)
