"""Graders and answer extraction, checked on the real GSM8K and MATH-500 reference answers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetforce.core import graders
from budgetforce.bench.evals import load_eval
from budgetforce.bench.evals.files import bundled_path
from budgetforce.bench.types import BenchError


def jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in bundled_path(name).open(encoding="utf-8")]


GSM8K = jsonl("gsm8k_test.jsonl")
MATH500 = jsonl("math500.jsonl")


def test_every_gsm8k_reference_is_an_integer_and_grades_itself() -> None:
    for row in GSM8K:
        reference = graders.gsm8k_reference(row["answer"])
        assert graders.parse_integer(reference) is not None, reference
        assert graders.grade_integer(reference, row["answer"])[0] == 1.0  # the "#### N" form
        assert graders.grade_integer(reference, f"<think>hmm 7</think>The answer is {reference}.")[0] == 1.0


def test_gsm8k_reference_strips_commas() -> None:
    references = [graders.gsm8k_reference(r["answer"]) for r in GSM8K]
    assert all("," not in ref for ref in references)
    assert any(ref.startswith("-") for ref in references)  # the README's few negative answers


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("So she makes \\boxed{18} dollars.", 1.0),
        ("The answer is $18.", 1.0),
        ("The answer is \\$18.00.", 1.0),
        ("Answer: 18", 1.0),
        ("\\boxed{\\$18}", 1.0),
        ("\\boxed{18 \\text{ dollars}}", 1.0),
        ("She makes 9 * 2 = 18 dollars", 1.0),  # last-number fallback
        ("\\boxed{17}", 0.0),
        ("\\boxed{18.5}", 0.0),
        ("", 0.0),
        ("<think>The answer is 18.</think>The answer is 16.", 0.0),  # only the answer part counts
    ],
)
def test_integer_grader_forms(response: str, score: float) -> None:
    assert graders.grade_integer("18", response)[0] == score


def test_aime_reference_with_leading_zeros() -> None:
    assert graders.grade_integer("025", "\\boxed{25}")[0] == 1.0
    assert graders.grade_integer("025", "\\boxed{250}")[0] == 0.0


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_integer_grader_accepts_any_integer_and_thousands_separators(n: int) -> None:
    assert graders.grade_integer(str(n), f"\\boxed{{{n:,}}}") == (1.0, f"{n:,}")
    assert graders.grade_integer(str(n), f"\\boxed{{{n + 1}}}")[0] == 0.0


def test_every_math500_reference_grades_itself_and_not_its_neighbour() -> None:
    for row, other in itertools.pairwise(MATH500):
        answer = row["answer"]
        assert graders.grade_math(answer, f"<think>x</think>So $\\boxed{{{answer}}}$.")[0] == 1.0, answer
        different = graders.normalize_latex(other["answer"]) != graders.normalize_latex(answer)
        if different and "=" not in other["answer"]:  # math-verify rightly accepts "x=5" for "5"
            assert graders.grade_math(answer, f"\\boxed{{{other['answer']}}}")[0] == 0.0, (answer, other["answer"])


@pytest.mark.parametrize(
    ("reference", "response"),
    [
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("\\frac{1}{2}", "The answer is $1/2$."),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}"),
        ("\\dfrac{14}{3}", "\\boxed{\\frac{14}{3}}"),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
        ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}"),
    ],
)
def test_math_grader_equivalences(reference: str, response: str) -> None:
    assert graders.grade_math(reference, response)[0] == 1.0


def test_math_grader_without_an_answer_scores_zero() -> None:
    assert graders.grade_math("5", "I could not solve it") == (0.0, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x \\boxed{\\frac{a}{b}} y", "\\frac{a}{b}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("so \\boxed 5$", "5"),
        ("\\boxed{unbalanced", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert graders.extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 3.5.", "3.5"),
        ("Thus the final answer is: 42", "42"),
        ("#### 1,000", "1,000"),
        ("The answer is 7. Done.", "7"),
        ("nothing here", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert graders.extract_answer(text) == expected


def test_answer_part_ignores_thinking() -> None:
    assert graders.answer_part("<think>\\boxed{1}</think>\\boxed{2}") == "\\boxed{2}"
    assert graders.answer_part("plain answer") == "plain answer"


def test_eval_subsampling_is_seeded() -> None:
    first = [e.id for e in load_eval("math500", num_examples=5, seed=3).examples]
    again = [e.id for e in load_eval("math500", num_examples=5, seed=3).examples]
    other = [e.id for e in load_eval("math500", num_examples=5, seed=4).examples]
    assert first == again and first != other and len(set(first)) == 5


def test_student_eval_grades_the_students_answer_form() -> None:
    eval_ = load_eval("student", num_examples=3)
    example = eval_.examples[0]
    assert eval_.messages(example)[0]["content"] == example.question
    assert eval_.grade(example.answer, f"\n\nThe answer is {example.answer}.")[0] == 1.0


AIME_FILES = [
    Path("/work/shared/datasets") / name for name in ("aime2024.jsonl", "aime2024_matharena.jsonl", "aime2025.jsonl")
]


@pytest.mark.parametrize("path", AIME_FILES, ids=lambda p: p.name)
def test_aime_reads_both_layouts_from_a_path(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not present (AIME is not shipped)")
    eval_ = load_eval("aime2024", data_path=path)
    assert len(eval_.examples) == 30
    for example in eval_.examples:
        assert 0 <= int(example.answer) <= 999
        assert eval_.grade(example.answer, f"\\boxed{{{int(example.answer)}}}")[0] == 1.0


def test_jsonl_eval_names_the_missing_field(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "1+1?", "a": "2"}\n')
    with pytest.raises(BenchError, match="no field 'question'"):
        load_eval("jsonl", data_path=data)
    eval_ = load_eval("jsonl", data_path=data, question_field="q", answer_field="a", grader="exact")
    assert eval_.grade("2", "The answer is 2.")[0] == 1.0
