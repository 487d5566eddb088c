"""Profile presets and detection against real tokenizer configs and chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetforce import Budget, ProfileError, detect_profile, get_profile
from budgetforce.core.profile import detect_from_template

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"tokenizer fixtures not found at {FIXTURES}")


def tokenizer(folder: str, config: str = "tokenizer_config.json", tokenizer_json: str | None = None):
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((FIXTURES / folder / config).read_text())
    tj = FIXTURES / (tokenizer_json or folder) / "tokenizer.json"
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in cfg.items() if k.endswith("_token") and v}
    return PreTrainedTokenizerFast(tokenizer_file=str(tj), chat_template=cfg.get("chat_template"), **special)


@needs_fixtures
@pytest.mark.parametrize(
    ("folder", "tj", "expected", "start", "end"),
    [
        ("deepseek-r1-distill-qwen", None, "r1-distill-qwen", (151648,), (151649,)),
        ("qwen3", None, "qwen3", (151667,), (151668,)),
        ("qwq-32b", "qwen3", "qwq", (151667,), (151668,)),
        ("s1.1", "qwen2.5-instruct", "s1", (151644, 26865, 198), (151644, 9217, 198)),
    ],
)
def test_detects_real_tokenizers(folder: str, tj: str | None, expected: str, start: tuple, end: tuple) -> None:
    tok = tokenizer(folder, tokenizer_json=tj)
    profile = detect_profile(tok, f"org/{folder}")
    assert profile.name == expected
    resolved = profile.resolve(tok)
    assert resolved.think_start == start and resolved.think_end == end
    plan = resolved.plan(Budget(min_thinking_tokens=10))
    assert plan.waits == ((14190,),)  # "Wait" is one token in Qwen's vocabulary


@needs_fixtures
def test_r1_generation_prompt_opens_the_thinking() -> None:
    tok = tokenizer("deepseek-r1-distill-qwen")
    resolved = detect_profile(tok).resolve(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[-3:] == [151645, 151648, 198]
    assert resolved.open_thinking(ids) == ids  # already open: nothing appended
    old = tokenizer("deepseek-r1-distill-qwen", config="tokenizer_config.original-pre-think-fix.json")
    old_ids = old.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert detect_profile(old).name == "r1-distill-qwen"
    assert resolved.open_thinking(old_ids)[-1] == 151648  # the early template leaves it to us


@needs_fixtures
def test_s1_profile_forces_its_answer_prefix() -> None:
    tok = tokenizer("s1.1", tokenizer_json="qwen2.5-instruct")
    resolved = detect_profile(tok).resolve(tok)
    plan = resolved.plan(Budget(max_thinking_tokens=100))
    assert tok.decode(list(plan.answer_prefix)) == "Final Answer:"
    assert plan.close_attempts == {151644, 151645}  # <|im_start|> begins the close; <|im_end|> ends the turn


@needs_fixtures
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "r1-distill-qwen"),
        ("Qwen-QwQ-32B.jinja", "qwq"),
        ("Qwen-Qwen3-0.6B.jinja", "qwen3"),
    ],
)
def test_detects_from_template_files(template: str, expected: str) -> None:
    text = (FIXTURES / "templates" / template).read_text()
    assert detect_from_template(text, {"<think>", "</think>"}, vocab_size=151665).name == expected


@needs_fixtures
def test_r1_llama_template_with_llama_vocab() -> None:
    text = (FIXTURES / "deepseek-r1-distill-llama" / "chat_template.jinja").read_text()
    assert detect_from_template(text, {"<think>", "</think>"}, vocab_size=128256).name == "r1-distill-llama"


@needs_fixtures
def test_plain_instruct_model_is_refused_clearly() -> None:
    tok = tokenizer("qwen2.5-instruct")
    with pytest.raises(ProfileError, match="pass a profile explicitly"):
        detect_profile(tok, "Qwen/Qwen2.5-7B-Instruct")


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ProfileError, match="r1-distill-qwen"):
        get_profile("r2")


def test_tiny_models_detect(tiny_r1: Path, tiny_s1: Path) -> None:
    from transformers import AutoTokenizer

    assert detect_profile(AutoTokenizer.from_pretrained(tiny_r1)).name == "r1-distill-qwen"
    assert detect_profile(AutoTokenizer.from_pretrained(tiny_s1), "tiny-s1").name == "s1"


# -- the modes beyond s1 in token ids ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def student():
    from transformers import AutoTokenizer

    from budgetforce.student import STUDENT_PATH

    tok = AutoTokenizer.from_pretrained(STUDENT_PATH)
    return tok, detect_profile(tok).resolve(tok)


def test_banned_strings_ban_each_first_token_once(student) -> None:
    tok, resolved = student
    first = {tok.encode(v, add_special_tokens=False)[0] for v in ("Wait", " Wait", "wait", " wait")}
    assert resolved.banned_tokens(["Wait"]) == first == {389, 518, 92, 591}
    assert resolved.banned_tokens(["wait"]) == first  # every casing, whichever is given
    # " hmm" is [space, "h", "mm"] in the student's vocabulary: a space alone is never banned
    assert 226 not in resolved.banned_tokens(["hmm"]) and tok.decode([226]) == " "
    # the delimiters and end of sequence never are either
    banned = resolved.banned_tokens(["</think>", "<think>", tok.eos_token])
    assert not banned & (set(resolved.think_start) | set(resolved.think_end) | resolved.eos)
    plan = resolved.plan(Budget(banned_thinking_strings=("Wait",)))
    assert plan.banned == first and plan.is_active and not plan.is_budgeted


def test_too_many_banned_tokens_is_a_client_error(student) -> None:
    from budgetforce import BudgetError
    from budgetforce.core.profile import PlanError

    _, resolved = student
    words = ("Wait", "Hmm", "Alternatively", "But", "So", "Let", "Check")
    with pytest.raises(PlanError) as err:
        resolved.plan(Budget(banned_thinking_strings=words))
    assert err.value.param == "banned_thinking_strings" and "at most 16" in str(err.value)
    assert isinstance(err.value, BudgetError) and isinstance(err.value, ProfileError)


def test_intervention_is_the_encoded_text(student) -> None:
    from budgetforce.core.profile import PlanError

    tok, resolved = student
    plan = resolved.plan(Budget(thinking_intervention="Let me check.", intervention_at=7))
    assert plan.intervention == tuple(tok.encode("Let me check.", add_special_tokens=False)) == (49, 284, 390, 408, 19)
    assert plan.intervention_at == 7
    with pytest.raises(PlanError) as err:
        resolved.plan(Budget(thinking_intervention="x" * 65))  # one token a character here
    assert err.value.param == "thinking_intervention" and "at most 64" in str(err.value)


def test_answer_budget_and_schedule_reach_the_plan(student) -> None:
    tok, resolved = student
    plan = resolved.plan(Budget(max_answer_tokens=12, alpha=0.5, max_thinking_tokens=400, wait_decay="constant"))
    assert plan.max_answer == 12 and plan.answer_end == tok.eos_token_id == 0
    assert (plan.alpha_moment, plan.wait_probability, plan.wait_decay) == (200, 0.3, False)
    assert plan.breaks == {332}  # '>\n\n' is the student's one token that ends a paragraph
    plain = resolved.plan(Budget(max_thinking_tokens=400))
    assert (plain.alpha_moment, plain.wait_probability) == (0, 0.0) and not plain.breaks and not plain.banned


def test_break_tokens_are_cached_and_checked(student) -> None:
    from budgetforce.core.profile import PlanError

    tok, resolved = student
    lines = resolved.break_tokens(("\n",))
    assert lines == {204, 264, 323, 332} and all(tok.decode([i]).endswith("\n") for i in lines)
    assert resolved.break_tokens(("\n",)) is lines
    with pytest.raises(PlanError) as err:
        resolved.plan(Budget(alpha_moment_tokens=10, paragraph_breaks=("§§",)))
    assert err.value.param == "paragraph_breaks"


@needs_fixtures
def test_qwen_paragraph_breaks_are_byte_level_tokens() -> None:
    """Qwen writes "\\n\\n" as 'ĊĊ' (271); the byte-level search finds what decoding finds, lowest ids first."""
    tok = tokenizer("deepseek-r1-distill-qwen")
    resolved = detect_profile(tok).resolve(tok)
    breaks = resolved.break_tokens(("\n\n",))
    decoded = [i for i in range(4000) if tok.decode([i]).endswith("\n\n")]
    assert len(breaks) == 32 and sorted(breaks) == decoded[:32] and min(breaks) == 271
    assert tok.convert_ids_to_tokens(271) == "ĊĊ"
    # a break with a multi-byte character is searched by its UTF-8 bytes
    wide = resolved.break_tokens(("。\n\n",))
    assert 3407 in wide and all(tok.decode([i]).endswith("。\n\n") for i in wide)
    assert resolved.banned_tokens(["Wait"]) == {14190, 13824, 11489, 3783}
    assert resolved.plan(Budget(max_answer_tokens=5)).answer_end == 151643


def test_vocabulary_decodes_what_is_not_byte_level() -> None:
    """A vocabulary not written in the byte alphabet (SentencePiece-like) is decoded token by token."""
    from budgetforce.core.profile import Vocabulary

    pieces = {0: "<eos>", 1: "▁Wait", 2: "<0x0A>", 3: ".\n\n", 4: "\n\n", 5: "▁so"}
    text = {0: "", 1: " Wait", 2: "\n", 3: ".\n\n", 4: "\n\n", 5: " so"}

    class Spm:
        def get_vocab(self) -> dict[str, int]:
            return {p: i for i, p in pieces.items()}

        def encode(self, s: str, add_special_tokens: bool = False) -> list[int]:
            return [2, 2, 5]  # whatever: not byte-level pieces

        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            return [pieces[i] for i in ids]

        def decode(self, ids: list[int]) -> str:
            return "".join(text[i] for i in ids)

    assert Vocabulary(Spm()).ending_with(("\n\n",)) == [3, 4]
