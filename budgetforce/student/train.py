"""Train the bundled student: distil the programmatic teacher's rejection-sampled traces.

The seed's recipe in miniature: a teacher writes chains of thought, rejection sampling keeps
the ones whose final answer is exactly right, and a small decoder (Qwen2 architecture, own BPE
tokenizer, R1-Distill chat format) is fine-tuned on them with the loss on the completion only.

Reproduce the shipped weights (GPU, a few minutes)::

    python -m budgetforce.student.train --out budgetforce/student/model --device cuda

Everything random is seeded (`--seed`); the held-out evaluation problems are never generated
for training (see `budgetforce.student.task`). The run writes ``train_log.csv`` (step, loss,
lr, elapsed seconds) and ``train_record.json`` (command, data size, time, device, versions)
next to the weights, or into ``--record-dir``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from budgetforce.student.task import problems
from budgetforce.student.teacher import EOS, RejectionStats, Teacher, TeacherConfig, rejection_sample, truncate

logger = logging.getLogger("budgetforce.student.train")

DEFAULT_TOKENIZER = Path(__file__).parent / "model"


def build_dataset(tokenizer_dir: Path, n_problems: int, seed: int, teacher: TeacherConfig):
    """Token ids and completion masks of the kept teacher traces, plus the rejection stats."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    rng = random.Random(seed)
    stats = RejectionStats()
    t = Teacher(teacher)
    traces = list(
        rejection_sample((t.trace(p, rng) for p in itertools.islice(problems(seed, "train"), n_problems)), stats)
    )
    traces = [truncate(tr, rng) if rng.random() < teacher.truncate_rate else tr for tr in traces]
    prompts = [f"<｜User｜>{tr.problem.question}<｜Assistant｜><think>\n" for tr in traces]
    completions = [tr.text + EOS for tr in traces]
    p_ids = tok.encode_batch(prompts)  # the post-processor adds BOS
    c_ids = tok.encode_batch(completions, add_special_tokens=False)
    end_id = tok.token_to_id("</think>")
    # -1 marks a target the loss skips: the glued </think> of a truncated trace (a forced end)
    seqs = [
        (p.ids, [(-1 - i if tr.truncated and i == end_id else i) for i in c.ids])
        for p, c, tr in zip(p_ids, c_ids, traces)
    ]
    return seqs, stats, traces


def batches(seqs, batch_size: int, rng: random.Random, pad_id: int, pool: int = 64):
    """Endless shuffled batches: input ids (right-padded) and labels (-100 off the completion).

    Each pool of ``pool`` batches is sorted by length before it is cut, so a batch pads little.
    """
    order = list(range(len(seqs)))
    span = batch_size * pool
    while True:
        rng.shuffle(order)
        for s in range(0, len(order) - span + 1, span):
            chunk_ids = sorted(order[s : s + span], key=lambda j: len(seqs[j][0]) + len(seqs[j][1]))
            cuts = list(range(0, span, batch_size))
            rng.shuffle(cuts)
            for i in cuts:
                chunk = [seqs[j] for j in chunk_ids[i : i + batch_size]]
                width = max(len(p) + len(c) for p, c in chunk)
                ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
                labels = torch.full((batch_size, width), -100, dtype=torch.long)
                for r, (p, c) in enumerate(chunk):
                    cc = torch.tensor(c)
                    ids[r, : len(p) + len(c)] = torch.cat([torch.tensor(p), cc.abs() - (cc < 0).long()])
                    labels[r, len(p) : len(p) + len(c)] = torch.where(cc < 0, -100, cc)
                yield ids, labels


def make_model(args, vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        head_dim=64,
        max_position_embeddings=args.max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
        use_sliding_window=False,
    )
    return Qwen2ForCausalLM(config)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="folder for the trained model (weights + tokenizer)")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="folder with the tokenizer files")
    ap.add_argument("--record-dir", type=Path, default=None, help="where to write train_log.csv / train_record.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--problems", type=int, default=400_000, help="problems given to the teacher")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=0, help="MLP width (default 4x hidden)")
    ap.add_argument("--max-positions", type=int, default=2048)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=0,
        help="time cap: the learning-rate schedule runs on max(step/steps, time/cap) (0: steps only)",
    )
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="dtype of the saved weights")
    ap.add_argument("--max-shard-size", default="", help="split the safetensors file (e.g. 12MB) for transport")
    for f, v in asdict(TeacherConfig()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=v, help="teacher setting (see TeacherConfig)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    teacher = TeacherConfig(**{f: getattr(args, f) for f in asdict(TeacherConfig())})
    seqs, stats, traces = build_dataset(args.tokenizer, args.problems, args.seed, teacher)
    n_tokens = sum(len(p) + len(c) for p, c in seqs)
    logger.info(
        "data: %s, %d sequences, %d tokens, max len %d (%.1fs)",
        stats,
        len(seqs),
        n_tokens,
        max(len(p) + len(c) for p, c in seqs),
        time.time() - t0,
    )

    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab_size = 64 * math.ceil(len(hf_tok) / 64)
    model = make_model(args, vocab_size).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %.2fM parameters, vocab %d", n_params / 1e6, vocab_size)

    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=args.device.startswith("cuda")
    )
    progress = [0.0]  # fraction of the run done: by steps, or by time under --max-minutes

    def lr_factor(s: int) -> float:
        warm = min(1.0, (s + 1) / args.warmup)
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress[0]))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if args.device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    record_dir = args.record_dir or args.out
    record_dir.mkdir(parents=True, exist_ok=True)
    log_rows = []
    t_train = time.time()
    model.train()
    data = batches(seqs, args.batch_size, random.Random(args.seed + 1), hf_tok.pad_token_id)
    running = 0.0
    step = 0
    for step in range(1, args.steps + 1):
        ids, labels = next(data)
        ids, labels = ids.to(args.device, non_blocking=True), labels.to(args.device, non_blocking=True)
        with amp:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed = time.time() - t_train
        progress[0] = max(step / args.steps, elapsed / (60 * args.max_minutes) if args.max_minutes else 0.0)
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == 1:
            running = loss.item()
            log_rows.append((step, round(running, 5), sched.get_last_lr()[0], round(elapsed, 1)))
            if step % 250 == 0 or step == 1:
                logger.info("step %d loss %.4f lr %.2e %.0fs", step, running, sched.get_last_lr()[0], elapsed)
        if progress[0] >= 1.0:
            if step < args.steps:
                logger.warning("stopping at step %d: --max-minutes %.1f reached", step, args.max_minutes)
            break
    train_seconds = time.time() - t_train

    model.eval()
    dtype = getattr(torch, args.dtype)
    model.to(dtype).to("cpu")
    model.config.torch_dtype = args.dtype
    model.generation_config.update(
        bos_token_id=1, eos_token_id=0, pad_token_id=0, do_sample=True, temperature=0.6, top_p=0.95
    )
    save_kwargs = {"max_shard_size": args.max_shard_size} if args.max_shard_size else {}
    model.save_pretrained(args.out, **save_kwargs)
    if args.tokenizer.resolve() != args.out.resolve():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(args.tokenizer / name, args.out / name)
    with open(record_dir / "train_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "loss", "lr", "elapsed_s"))
        w.writerows(log_rows)
    record = {
        "command": "python -m budgetforce.student.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) for k, v in vars(args).items()},
        "teacher": asdict(teacher),
        "rejection": asdict(stats),
        "train_sequences": len(seqs),
        "train_tokens": n_tokens,
        "kept_with_recheck": sum(t.rechecks > 0 for t in traces),
        "kept_slipped": sum(t.slipped for t in traces),
        "truncated": sum(t.truncated for t in traces),
        "parameters": n_params,
        "steps_done": step,
        "final_loss": log_rows[-1][1] if log_rows else None,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    (record_dir / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("saved %s in %.0fs (training %.0fs)", args.out, time.time() - t0, train_seconds)


if __name__ == "__main__":
    main()
