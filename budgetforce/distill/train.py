"""LoRA fine-tuning of a student on one distillation target, with the student's own chat template.

Each record's prompt turns are rendered with the student's template and generation prompt (for
R1-style templates that already opens ``<think>\\n``), the assistant turn follows as the
completion plus the end-of-sequence token, and the loss covers the completion only. The run
writes, under ``--out``:

    adapter/            the LoRA adapter (peft), with the tokenizer
    merged/             the base with the adapter merged in, loadable by `budgetforce serve --model`
    train_log.csv       step, loss, learning rate, elapsed seconds
    train_record.json   settings, data size, loss before and after on a fixed probe batch, time, versions

`fresh_student` makes a random-weight Qwen2 with another model's tokenizer and chat template,
the "fresh smaller student" of the CPU toy run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from budgetforce.bench.store import read_samples
from budgetforce.bench.types import BenchError

logger = logging.getLogger(__name__)

THINK_OPENERS = ("<think>\n", "<think>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")  # fmt: skip
PROBE_SIZE = 16


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune.

    Args:
        steps: optimizer steps (the data is cycled in seeded shuffles).
        batch_size: sequences per step.
        lr: peak learning rate (linear warm-up, cosine decay to a tenth).
        warmup: warm-up steps.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale and dropout.
        target_modules: "all-linear" or comma-separated module names (q_proj,v_proj).
        max_len: longer sequences are cut (the completion's end is dropped).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        save_dtype: dtype of the merged weights: "auto" (the base's), "float32" or "bfloat16".
        gradient_checkpointing: trade compute for memory on real models.
        seed: data order and LoRA initialisation.
    """

    steps: int = 100
    batch_size: int = 8
    lr: float = 2e-4
    warmup: int = 10
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    max_len: int = 1024
    device: str = "auto"
    save_dtype: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0


def encode(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat record: -100 on the prompt, the completion's ids after it."""
    if not messages or messages[-1].get("role") != "assistant":
        raise BenchError("a training record's last message must be the assistant's")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    completion = messages[-1]["content"]
    for opener in THINK_OPENERS:  # the template may open the thinking already
        if prompt.endswith(opener) and completion.startswith(opener):
            completion = completion[len(opener) :]
            break
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_len]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_len]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def copy_tokenizer(source: str | Path, tokenizer: Any, dest: Path) -> None:
    """The base's tokenizer files verbatim when it is a local folder, else the tokenizer as loaded."""
    source = Path(source)
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not copied:
        tokenizer.save_pretrained(dest)
    for name in copied:
        shutil.copyfile(source / name, dest / name)


def fresh_student(out: Path, tokenizer_from: str | Path, hidden: int = 128, layers: int = 2,
                  intermediate: int | None = None, seed: int = 0) -> Path:  # fmt: skip
    """A random-weight Qwen2 with ``tokenizer_from``'s tokenizer, chat template and special ids."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden % 64:
        raise BenchError(f"`--hidden` must be a multiple of 64 (head size); got {hidden}")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    base = AutoConfig.from_pretrained(tokenizer_from)
    vocab = max(getattr(base, "vocab_size", 0), len(tokenizer))
    config = Qwen2Config(
        vocab_size=64 * math.ceil(vocab / 64), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
        max_position_embeddings=getattr(base, "max_position_embeddings", 2048), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        use_sliding_window=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    try:
        GenerationConfig.from_pretrained(tokenizer_from).save_pretrained(out)
    except OSError:
        pass
    copy_tokenizer(tokenizer_from, tokenizer, out)
    logger.info("fresh student %s: %.2fM parameters", out, sum(p.numel() for p in model.parameters()) / 1e6)
    return out


def probe_loss(model: Any, batch: dict[str, Any]) -> float:
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
    model.train(was_training)
    return loss


def train(base: str | Path, data: Path, out: Path, config: TrainConfig = TrainConfig(),
          command: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``base`` with LoRA on the chat records in ``data``; save adapter and merged model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    started = time.time()
    records = read_samples(data)
    if not records:
        raise BenchError(f"{data} holds no training records")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.chat_template is None:
        raise BenchError(f"{base} has no chat template; distillation records are chats")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [encode(tokenizer, r["messages"], config.max_len) for r in records]
    train_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=train_dtype).to(device)
    base_dtype = str(getattr(model.config, "dtype", None) or "float32").removeprefix("torch.")
    targets: Any = config.target_modules if config.target_modules == "all-linear" else config.target_modules.split(",")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("%d records, %d trainable of %d parameters, %s", len(rows), trainable, total, device)

    def on_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) for k, v in batch.items()}

    probe = on_device(collate(rows[:PROBE_SIZE], pad_id))
    loss_before = probe_loss(model, probe)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, config.steps)))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rng = random.Random(config.seed)
    order: list[int] = []
    log_rows: list[tuple[int, float, float, float]] = []
    model.train()
    t_train = time.time()
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh * max(1, math.ceil(config.batch_size / len(rows)))
        chunk, order = order[: config.batch_size], order[config.batch_size :]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(**on_device(collate([rows[i] for i in chunk], pad_id))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log_rows.append((step, round(float(loss.detach()), 5), sched.get_last_lr()[0], round(time.time() - t_train, 2)))
        if step == 1 or step % 25 == 0 or step == config.steps:
            logger.info("step %d/%d loss %.4f", step, config.steps, log_rows[-1][1])
    train_seconds = time.time() - t_train
    loss_after = probe_loss(model, probe)

    out.mkdir(parents=True, exist_ok=True)
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    model.save_pretrained(adapter_dir)
    copy_tokenizer(base, tokenizer, adapter_dir)
    merged = model.merge_and_unload()
    save_dtype = base_dtype if config.save_dtype == "auto" else config.save_dtype
    merged = merged.to(getattr(torch, save_dtype)).to("cpu")
    merged.config.dtype = save_dtype
    merged.save_pretrained(merged_dir)
    copy_tokenizer(base, tokenizer, merged_dir)
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(merged_dir)
    except OSError:
        pass
    with (out / "train_log.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("step", "loss", "lr", "elapsed_s"))
        writer.writerows(log_rows)
    window = max(1, len(log_rows) // 5)
    record = {
        "command": command,
        "base": str(base),
        "data": str(data),
        "records": len(rows),
        "tokens": sum(len(ids) for ids, _ in rows),
        "config": asdict(config),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "trainable_parameters": trainable,
        "parameters": total,
        "probe_loss_before": loss_before,
        "probe_loss_after": loss_after,
        "mean_loss_first_steps": statistics.fmean(r[1] for r in log_rows[:window]),
        "mean_loss_last_steps": statistics.fmean(r[1] for r in log_rows[-window:]),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "adapter": str(adapter_dir),
        "merged": str(merged_dir),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("probe loss %.4f -> %.4f; saved %s and %s", loss_before, loss_after, adapter_dir, merged_dir)
    return record
