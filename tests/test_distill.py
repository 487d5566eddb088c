"""`budgetforce distill`: the distillation workflow end to end on the CPU, at toy scale.

The bundled student, served by `budgetforce serve`, is the teacher for its own task; a fresh
random-weight student with the bundled tokenizer is LoRA-trained for a few steps on the kept
traces, merged, served the same way, and evaluated through the harness. Fast checks of the pure
parts (records, rationales, masking, validators) need no server.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from budgetforce.bench.types import BenchError
from budgetforce.cli import app
from budgetforce.distill.generate import assistant_text, load_validator
from budgetforce.distill.problems import ProblemSpec, gsm8k_rationale, load_problems
from budgetforce.distill.train import encode

STUDENT_SEED = 1234
NUM_PROBLEMS = 16
SAMPLES = 2


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, ["distill", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- no server --------------------------------------------------------------------------------


def test_assistant_text_puts_reasoning_in_a_think_block() -> None:
    assert assistant_text(" a\n", "The answer is 3.") == "<think>\na\n</think>\n\nThe answer is 3."


def test_gsm8k_problems_carry_the_human_rationale() -> None:
    problems = load_problems(ProblemSpec(name="gsm8k", num_examples=3, seed=0))
    assert len(problems.examples) == 3 and all(ex.id.startswith("train-") for ex in problems.examples)
    for ex in problems.examples:
        rationale = problems.rationales[ex.id]
        assert rationale and "<<" not in rationale and "####" not in rationale
    assert "boxed" in problems.answer_template
    assert gsm8k_rationale("2+2 = <<2+2=4>>4 apples.\n#### 4") == "2+2 = 4 apples."


def test_build_without_a_run_gives_direct_and_human(tmp_path: Path) -> None:
    invoke("build", "--dataset", "gsm8k", "-n", "4", "--out", str(tmp_path))
    human, direct = read_jsonl(tmp_path / "human.jsonl"), read_jsonl(tmp_path / "direct.jsonl")
    assert [r["id"] for r in human] == [r["id"] for r in direct] and len(human) == 4
    assert all(r["messages"][-1]["content"].startswith("<think>\n\n</think>\n\n") for r in direct)
    assert not (tmp_path / "teacher.jsonl").exists()


def test_encode_masks_the_prompt_and_ends_with_eos() -> None:
    from transformers import AutoTokenizer

    from budgetforce.student import STUDENT_PATH

    tok = AutoTokenizer.from_pretrained(STUDENT_PATH)
    messages = [{"role": "user", "content": "Tom has 12 apples."}, {"role": "assistant", "content": assistant_text("12.", "The answer is 12.")}]  # fmt: skip
    ids, labels = encode(tok, messages, 1024)
    prompt_len = labels.count(-100)
    assert tok.decode(ids[:prompt_len]).endswith("<｜Assistant｜><think>\n")
    assert (
        tok.decode(ids[prompt_len:], skip_special_tokens=False)
        == "12.\n</think>\n\nThe answer is 12.<｜end▁of▁sentence｜>"
    )
    assert labels[prompt_len:] == ids[prompt_len:]


def test_validator_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "check.py").write_text("def ok(**kw):\n    return True\n")
    assert load_validator(f"{tmp_path / 'check.py'}:ok")(question="", reference="", reasoning="", answer="")
    for bad in ("nocolon", "no_such_module_xyz:f", f"{tmp_path / 'check.py'}:missing"):
        with pytest.raises(BenchError):
            load_validator(bad)


# -- end to end ---------------------------------------------------------------------------------


def known_answers() -> dict[str, int]:
    """The student task's exact answers for the problems `generate --dataset student` draws."""
    from budgetforce.student.task import problems

    seen: dict[str, int] = {}
    for p in problems(STUDENT_SEED, "train"):
        if p.question not in seen:
            seen[p.question] = p.answer
        if len(seen) == NUM_PROBLEMS:
            break
    return {
        f"train-{STUDENT_SEED}-{i}": answer for i, answer in enumerate(itertools.islice(seen.values(), NUM_PROBLEMS))
    }


@pytest.mark.server
def test_distill_end_to_end(tmp_path: Path) -> None:
    from budgetforce.distill.evaluate import serve_model
    from budgetforce.student import STUDENT_PATH
    from budgetforce.student.teacher import parse_final_answer

    gen, targets, student, trained, evals = (tmp_path / n for n in ("gen", "targets", "fresh", "trained", "eval"))
    generate = ["generate", "--dataset", "student", "-n", str(NUM_PROBLEMS), "-k", str(SAMPLES), "--max-tokens", "384",
                "--max-thinking-tokens", "300", "--out", str(gen), "--no-progress"]  # fmt: skip
    (tmp_path / "keep_all.py").write_text("def keep(*, question, reference, reasoning, answer):\n    return True\n")
    with serve_model(STUDENT_PATH, "teacher", log_path=tmp_path / "teacher.log") as url:
        invoke(*generate, "--base-url", url)
        samples_before = (gen / "samples.jsonl").read_text()
        # same command again: resumes (no new teacher calls) and re-filters with a user function
        invoke(*generate, "--base-url", url, "--validator", f"{tmp_path / 'keep_all.py'}:keep")
        assert (gen / "samples.jsonl").read_text() == samples_before
        lenient = json.loads((gen / "report.json").read_text())
        invoke(*generate, "--base-url", url)  # back to the exact-answer check
    report = json.loads((gen / "report.json").read_text())

    # samples: k per problem, the thinking budget passed through to the budgetforce teacher
    rows = read_jsonl(gen / "samples.jsonl")
    assert len(rows) == NUM_PROBLEMS * SAMPLES and all(r["error"] is None for r in rows)
    assert all(r["request"]["max_thinking_tokens"] == 300 for r in rows)
    assert all(r["thinking_tokens"] <= 300 for r in rows)
    # rejection counts recomputed from the task's known answers with the teacher's own parser
    answers = known_answers()
    assert {r["example_id"] for r in rows} == set(answers)
    correct = [
        r for r in rows
        if r["finish_reason"] == "stop"
        and parse_final_answer(r["response"]["choices"][0]["message"]["content"] or "") == answers[r["example_id"]]
    ]  # fmt: skip
    assert report["samples"] == len(rows) and report["errors"] == 0
    assert report["kept"] == len(correct) > 0
    assert report["rejected_wrong"] + report["rejected_incomplete"] == len(rows) - len(correct)
    assert lenient["kept"] == len(rows) - lenient["rejected_incomplete"] >= report["kept"]
    per_problem = report["per_problem"]
    for ex_id in answers:
        kept_here = sum(1 for r in correct if r["example_id"] == ex_id)
        assert per_problem[ex_id] == {"kept": kept_here, "samples": SAMPLES, "pass_rate": kept_here / SAMPLES}
    sft = read_jsonl(gen / "sft.jsonl")
    assert len(sft) == report["kept"]
    for record in sft:
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"].startswith("<think>\n") and "\n</think>\n\n" in assistant["content"]
        assert parse_final_answer(assistant["content"].split("</think>")[1]) == answers[record["id"]]

    # the three targets over the same problems
    invoke("build", "--from", str(gen), "--out", str(targets))
    sets = {t: read_jsonl(targets / f"{t}.jsonl") for t in ("direct", "human", "teacher")}
    problem_ids = {r["id"] for r in sft}
    assert all({r["id"] for r in records} == problem_ids for records in sets.values())
    assert len(sets["teacher"]) == len(sft)

    # a fresh smaller student, LoRA for a few steps: the loss goes down
    invoke("init", "--out", str(student), "--hidden", "64", "--layers", "2")
    invoke("train", "--base", str(student), "--data", str(targets / "teacher.jsonl"), "--out", str(trained),
           "--steps", "12", "--batch-size", "8", "--lr", "3e-3", "--warmup", "2")  # fmt: skip
    record = json.loads((trained / "train_record.json").read_text())
    assert record["probe_loss_after"] < record["probe_loss_before"]
    assert record["mean_loss_last_steps"] < record["mean_loss_first_steps"]
    assert (trained / "adapter" / "adapter_config.json").is_file()
    assert (trained / "merged" / "config.json").is_file() and (trained / "merged" / "tokenizer.json").is_file()

    # the merged model loads in budgetforce's server and answers through the harness
    invoke("eval", "--eval", "student", "-n", "4", "--max-tokens", "48", "-t", f"teacher={trained / 'merged'}",
           "--out", str(evals), "--no-progress")  # fmt: skip
    table = json.loads((evals / "table.json").read_text())
    row = table["targets"]["teacher"]
    assert row["n"] == 4 and row["errors"] == 0 and row["mean_output_tokens"] > 0
    answered = read_jsonl(evals / "teacher" / "samples.jsonl")
    assert all(r["response"]["choices"][0]["message"] is not None for r in answered)
    assert "| teacher | 4 |" in (evals / "table.md").read_text()
