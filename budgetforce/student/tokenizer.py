"""The student's byte-level BPE tokenizer, trained with `tokenizers`, in the R1-Distill-Qwen shape.

Same pre-tokenization as Qwen2 (digits split one per token, which arithmetic needs), the
DeepSeek-R1-Distill special token strings, added the same way the real distills add them
(BOS/EOS special; ``<｜User｜>``, ``<｜Assistant｜>``, ``<think>``, ``</think>`` single added tokens
that stay visible in decoded text), and a simplified R1-Distill-Qwen chat template whose
generation prompt opens the thinking: ``<｜Assistant｜><think>\\n``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL = (EOS, BOS, USER, ASSISTANT, THINK_START, THINK_END)  # ids 0..5
HIDDEN = {EOS, BOS}  # special=True (skipped when decoding with skip_special_tokens)
GENERATION_PROMPT = f"{ASSISTANT}{THINK_START}\n"
VOCAB_SIZE = 1024

# Qwen2's pre-tokenizer pattern: letters with one leading non-letter, single digits, punctuation runs.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

# Words the task never uses but a budget-forcing user may send as wait strings; BPE merges them
# into single tokens ("Wait" and " Wait" in particular).
EXTRA_TEXT = "Wait Wait, wait Hmm Alternatively Okay But let me double-check. Let me verify. " * 200


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` ids (specials first) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*texts, EXTRA_TEXT], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, SPECIAL.index(BOS))]
    )
    # Added tokens as in the real distills: only BOS/EOS are "special".
    data = json.loads(tok.to_str())
    for t in data["added_tokens"]:
        t["special"] = t["content"] in HIDDEN
        t["normalized"] = False
    return Tokenizer.from_str(json.dumps(data))


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int = 1024) -> None:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    added = {
        str(SPECIAL.index(s)): {
            "content": s, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": s in HIDDEN,
        }
        for s in SPECIAL
    }  # fmt: skip
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {
        "bos_token": {"content": BOS, **token},
        "eos_token": {"content": EOS, **token},
        "pad_token": {"content": EOS, **token},
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")


def corpus(n_problems: int = 5000, seed: int = 12345) -> list[str]:
    """Questions and teacher traces the BPE merges are learned from (seeded, train split)."""
    import itertools
    import random

    from budgetforce.student.task import problems
    from budgetforce.student.teacher import Teacher

    rng, teacher, texts = random.Random(seed), Teacher(), []
    for p in itertools.islice(problems(seed, "train"), n_problems):
        texts += [p.question, teacher.trace(p, rng).text]
    return texts


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Train the student's BPE tokenizer and write it to a model folder.")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "model")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    tok = train_tokenizer(corpus(seed=args.seed))
    save_tokenizer(tok, args.out)
    print(f"wrote {args.out} (vocabulary {tok.get_vocab_size()})")
