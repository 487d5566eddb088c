"""Random-weight reasoning models the project builds itself (tests, CPU demos, GPU shapes).

A BPE tokenizer trained on a small generated corpus carries the family's special tokens and
chat template, so budgets are exercised on real delimiters without downloading anything.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

Family = Literal["r1", "s1"]

R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
S1_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS: dict[Family, list[str]] = {
    "r1": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"],
    "s1": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
_WORDS = (
    "Wait let me check again the answer is so we have think answer Final Answer : Hmm maybe "
    "first second then add subtract multiply apples bags each total how many number step verify"
).split()


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(0, 3))]
        out.append(" ".join(words + nums) + rng.choice([".", "?", "\n", " = 12."]))
    return out


def build_tokenizer(path: Path, family: Family = "r1", vocab_size: int = 512, seed: int = 0) -> None:
    """Train and save a byte-level BPE tokenizer with the family's specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    if family == "r1":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1], pad_token=specials[1],
            chat_template=R1_TEMPLATE,
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=S1_TEMPLATE,
            additional_special_tokens=["<|im_start|>"],
        )
    fast.save_pretrained(path)


def build_tiny_model(
    path: str | Path,
    family: Family = "r1",
    seed: int = 0,
    hidden_size: int = 128,
    layers: int = 2,
    vocab_size: int = 512,
) -> Path:
    """Write a random-weight Qwen2 model (head_dim 64, as vLLM's CPU backend needs) and its tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, family, vocab_size, seed)
    tok = AutoTokenizer.from_pretrained(path)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.3,  # logits spread widely enough that greedy outputs vary
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    (path / "budgetforce.json").write_text(json.dumps({"family": family, "seed": seed}))
    return path
