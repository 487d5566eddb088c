"""Time the budget-forcing logits processor's own work per decoding step.

Drives `BudgetForcingLogitsProcessor` directly with a persistent batch of B rows and a
vocabulary of real size, feeding back the argmax of the processed logits as each row's next
token (outside the timed region), and reports per-step host time (the `apply()` call) and, on
CUDA, device time (events around it).

    python -m benchmarks.processor_step --device cpu --batch 1 32 128
    python -m benchmarks.processor_step --device cuda --batch 1 32 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from budgetforce.controller import ForcingPlan
from budgetforce.forcing import BudgetForcingLogitsProcessor, plan_to_args

VOCAB = 151_936  # DeepSeek-R1-Distill-Qwen's
START, END, EOS, WAIT = 151648, 151649, 151643, 14190
MODES = {
    "none": None,  # rows without a budget: the processor must cost nothing
    "guard": dict(min_thinking=10**6, max_thinking=None),  # below the minimum all the time
    "max": dict(min_thinking=0, max_thinking=10**6),  # budgeted thinking past its minimum (redirect)
    "mixed": "mixed",  # a quarter each: none, guard, max, forcing a close every 8 tokens
}


def make_params(mode: str, i: int) -> SamplingParams:
    spec = MODES[mode]
    if spec == "mixed":
        spec = [None, MODES["guard"], MODES["max"], dict(min_thinking=0, max_thinking=8)][i % 4]
    if spec is None:
        return SamplingParams(temperature=1.0 if i % 2 else 0.0)
    plan = ForcingPlan(
        think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),), **spec  # type: ignore[arg-type]
    )
    return SamplingParams(temperature=1.0 if i % 2 else 0.0, extra_args=plan_to_args(plan))


def bench(device: str, batch: int, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    dev = torch.device(device)
    proc = BudgetForcingLogitsProcessor(SimpleNamespace(model_config=None), dev, is_pin_memory=dev.type == "cuda")  # type: ignore[arg-type]
    outs: list[list[int]] = [[] for _ in range(batch)]
    prompt = [1, 2, 3, START]
    proc.update_state(BatchUpdate(batch, [], [(i, make_params(mode, i), prompt, outs[i]) for i in range(batch)], []))
    gen = torch.Generator(device=dev).manual_seed(0)
    base = torch.randn(batch, VOCAB, device=dev, generator=gen)
    base[:, END] += 3.0  # the model tries to close now and then
    host, device_us = [], []
    for step in range(warmup + steps):
        logits = base.roll(step, dims=1).clone()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        t0 = time.perf_counter()
        logits = proc.apply(logits)
        t1 = time.perf_counter()
        if dev.type == "cuda":
            e1.record()
        nxt = logits.argmax(1).tolist()  # the "sampler", outside the timed region
        if dev.type == "cuda":
            if step >= warmup:
                device_us.append(e0.elapsed_time(e1) * 1000)
        for o, t in zip(outs, nxt):
            o.append(t)
        proc.update_state(None)
        if step >= warmup:
            host.append((t1 - t0) * 1e6)
    row = {"device": device, "batch": batch, "mode": mode, "steps": steps,
           "host_us_median": statistics.median(host), "host_us_p90": sorted(host)[int(0.9 * len(host))]}
    if device_us:
        row["device_us_median"] = statistics.median(device_us)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", help="write the rows here as JSON")
    args = ap.parse_args()
    rows = [bench(args.device, b, m, args.steps, args.warmup) for b in args.batch for m in args.modes]
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "date": time.strftime("%Y-%m-%d"), "vocab": VOCAB}
    print(f"# processor time per step  ({meta['device_name']}, torch {meta['torch']}, vocab {VOCAB})")
    print(f"{'batch':>5} {'mode':>6} {'host us (median)':>17} {'host us (p90)':>14} {'device us (median)':>19}")
    for r in rows:
        dev_us = f"{r['device_us_median']:.1f}" if "device_us_median" in r else "-"
        print(f"{r['batch']:>5} {r['mode']:>6} {r['host_us_median']:>17.1f} {r['host_us_p90']:>14.1f} {dev_us:>19}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
