"""Profile presets and detection against real tokenizer configs and chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetforce import Budget, ProfileError, detect_profile, get_profile
from budgetforce.profile import detect_from_template

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
