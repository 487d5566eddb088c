"""The bundled student: task generator, teacher, rejection sampling, and the shipped model folder."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from budgetforce.student import STUDENT_PATH
from budgetforce.student.task import apply, heldout_problems, is_heldout, make_problem, problems
from budgetforce.student.teacher import (
    WAIT_LINE,
    RejectionStats,
    Teacher,
    TeacherConfig,
    parse_answer,
    rejection_sample,
    truncate,
)

NUM = r"(\d+)"


def solve_from_text(question: str) -> int:
    """An independent solver that reads only the question's words."""
    total = 0
    for sentence in re.split(r"(?<=\.) ", question):
        nums = list(map(int, re.findall(r"\d+", sentence)))
        if " has " in sentence and "How many" not in sentence:
            total = nums[0]
        elif " buys " in sentence:
            total += nums[0] * nums[1]
        elif " gives " in sentence:
            total -= nums[0]
        elif " more " in sentence:
            total += nums[0]
        elif nums:  # picks / collects / finds several numbers, or gets a first amount
            total += sum(nums)
    return total


def test_answers_are_exact_and_match_an_independent_reading():
    sample = list(itertools.islice(problems(7, "train"), 3000))
    with_sum = sum(any(len(s.args) > 2 for s in p.steps) for p in sample)
    assert with_sum >= 0.95 * len(sample)  # the sum of several numbers is the hard step
    for p in sample:
        assert p.answer == solve_from_text(p.question), p.question
        assert p.answer == p.steps[-1].value
        assert 2 <= len(p.steps) <= 4
        for i, s in enumerate(p.steps):
            assert s.value == apply(s.op, s.args)
            for j, a in enumerate(s.args):
                src = s.source(j)
                if src is not None:
                    assert src < i and p.steps[src].value == a


def test_generator_is_seeded():
    a = [p.question for p in itertools.islice(problems(3, "train"), 50)]
    b = [p.question for p in itertools.islice(problems(3, "train"), 50)]
    assert a == b
    assert make_problem(random.Random(1)) == make_problem(random.Random(1))


def test_heldout_split_is_disjoint_from_training():
    held = heldout_problems(200)
    assert len({p.question for p in held}) == 200 and all(p.heldout for p in held)
    for seed in (0, 1, 12345):
        assert not any(is_heldout(p.question) for p in itertools.islice(problems(seed, "train"), 2000))


def _check_lines(text: str) -> None:
    """Every equation in a trace is internally consistent where it claims to be careful."""
    for line in text.splitlines():
        if line.startswith(("Wait", "So the", "The answer")) or "=" not in line:
            continue
        if line.endswith("Correct.") or ", not " in line:  # re-check lines are always right
            for a, op, b, v in re.findall(rf"{NUM} ?([+\-*]) ?{NUM} = {NUM}(?![ \d]*[+*])", line):
                assert apply(op, (int(a), int(b))) == int(v), line


def test_teacher_traces_are_well_formed_and_rechecks_fix_slips():
    rng, teacher = random.Random(0), Teacher()
    stats = RejectionStats()
    traces = [teacher.trace(p, rng) for p in itertools.islice(problems(11, "train"), 2000)]
    kept = list(rejection_sample(traces, stats))
    assert stats.generated == 2000 and stats.kept == len(kept) and stats.rejected_malformed == 0
    assert 0 < stats.rejected_wrong < 0.1 * stats.generated
    for t in kept:
        thinking, answer = t.text.split("\n</think>\n\n")
        assert answer == f"The answer is {t.problem.answer}."
        assert thinking.endswith(f"So the answer is {t.problem.answer}.")
        assert thinking.count(WAIT_LINE) == t.rechecks
        assert "<think>" not in t.text and t.text.count("</think>") == 1
        _check_lines(t.text)
        if t.slipped:
            assert t.rechecks >= 1 and ", not " in t.text
    kinds = {(t.slipped, t.rechecks > 0) for t in kept}
    assert kinds == {(False, False), (False, True), (True, True)}


def test_rejection_sampling_removes_wrong_traces():
    rng = random.Random(0)
    sloppy = Teacher(TeacherConfig(slip_rate=1.0, hard_slip_share=1.0, catch_rate=0.0, confirm_rate=0.0))
    traces = [sloppy.trace(p, rng) for p in itertools.islice(problems(5, "train"), 300)]
    assert all(t.answer != t.problem.answer for t in traces)  # every slip propagates to the answer
    stats = RejectionStats()
    assert list(rejection_sample(traces, stats)) == []
    assert stats.rejected_wrong == 300
    careful = Teacher(TeacherConfig(slip_rate=1.0, catch_rate=1.0))
    traces = [careful.trace(p, rng) for p in itertools.islice(problems(5, "train"), 300)]
    assert len(list(rejection_sample(traces))) == 300


def test_truncated_trace_is_closed_where_cut():
    rng = random.Random(0)
    t = Teacher().trace(next(problems(2, "train")), rng)
    cut = truncate(t, rng)
    assert cut.truncated and parse_answer(cut.text) == t.problem.answer
    assert cut.text.count("</think>") == 1 and not cut.text.split("</think>")[0].endswith("\n")


def test_parse_answer_rejects_malformed():
    assert parse_answer("x\n</think>\n\nThe answer is 12.") == 12
    assert parse_answer("x\n</think>\n\nThe answer is 12") is None
    assert parse_answer("x</think></think>\n\nThe answer is 12.") is None
    assert parse_answer("The answer is 12.") is None


# --- the shipped model folder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STUDENT_PATH)


def test_model_folder_shape():
    names = {p.name for p in STUDENT_PATH.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names  # fmt: skip
    config = json.loads((STUDENT_PATH / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["head_dim"] == 64 and config["hidden_size"] // config["num_attention_heads"] == 64
    assert (STUDENT_PATH / "model.safetensors").stat().st_size < 40 * 2**20


def test_chat_template_opens_thinking_with_r1_tokens(tokenizer):
    msgs = [{"role": "user", "content": "Tom has 12 apples."}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>Tom has 12 apples.<｜Assistant｜><think>\n"
    history = msgs + [{"role": "assistant", "content": "a\n</think>\n\nThe answer is 12."}]
    text = tokenizer.apply_chat_template(history, tokenize=False)
    assert text.endswith("<｜Assistant｜>\n\nThe answer is 12.<｜end▁of▁sentence｜>")  # thinking dropped
    for token in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                  "<think>", "</think>", "Wait", " Wait"):  # fmt: skip
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert tokenizer.eos_token == tokenizer.pad_token == "<｜end▁of▁sentence｜>"
    assert tokenizer.bos_token == "<｜begin▁of▁sentence｜>"


def test_profile_detection_sees_an_r1_distill(tokenizer):
    from budgetforce.core.profile import detect_profile

    assert detect_profile(tokenizer, str(STUDENT_PATH)).name == "r1-distill-qwen"


def test_shipped_model_loads_and_thinks(tokenizer):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STUDENT_PATH, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 5e6 <= n_params <= 50e6
    p = heldout_problems(1)[0]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": p.question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
    out = model.generate(ids, max_new_tokens=400, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert parse_answer(text) is not None, text  # thinks, closes once, answers in the expected form
