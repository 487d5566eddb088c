"""Time budget forcing's own work per decoding step: `ForcingSlots.step`, as runner V2 drives it.

A persistent batch of B rows over a vocabulary of real size (R1-Distill-Qwen's 151,936): each
step the rows' new tokens are read from a device token history (as runner V2's
`all_token_ids`), the slots advance and write the logits, and the argmax of the processed
logits is appended to the history (the "sampler", outside the timed region). Reports GPU time
(CUDA events around the step, a spin kernel queued ahead so that the host's launch cost is not
counted as GPU time) and host time (the call's wall time) per step. With vLLM importable, the
runner-V1 adapter (`BudgetForcingLogitsProcessor.apply`, host lists) is timed too (`--v1`).

Modes: none (rows without a budget: the cost of merely being registered), guard (below the
minimum all the time), max (budgeted thinking past its minimum: EOS redirected), force (a close
forced every 8 tokens, then re-opened), mixed (a quarter of each).

    python -m benchmarks.processor_step --batch 1 32 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from budgetforce.core.controller import ForcingPlan
from budgetforce.vllm.slots import ForcingSlots

VOCAB = 151_936  # DeepSeek-R1-Distill-Qwen's
START, END, EOS, WAIT = 151648, 151649, 151643, 14190
SLEEP_CYCLES = 4_000_000  # about 2 ms of GPU spin queued ahead of each timed step
MODES = ["none", "guard", "max", "force", "mixed"]
SPECS = {
    "guard": dict(min_thinking=10**6, max_thinking=None),
    "max": dict(min_thinking=0, max_thinking=10**6),
    "force": dict(min_thinking=0, max_thinking=8),
}


def _plan(kind: str) -> ForcingPlan | None:
    if kind == "none":
        return None
    return ForcingPlan(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),), **SPECS[kind])  # type: ignore[arg-type]


def timed(dev: torch.device, call: Any) -> tuple[float, float | None]:
    """(host µs, GPU µs or None) of one call; a spin kernel queued ahead keeps the host's launch
    cost out of the GPU time."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda._sleep(SLEEP_CYCLES)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
    t0 = time.perf_counter()
    call()
    t1 = time.perf_counter()
    if dev.type != "cuda":
        return (t1 - t0) * 1e6, None
    e1.record()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e6, e0.elapsed_time(e1) * 1000


def bench(device: str, batch: int, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    dev = torch.device(device)
    slots = ForcingSlots(max(2 * batch, 64), dev)
    kinds = [["none", "guard", "max", "force"][i % 4] if mode == "mixed" else mode for i in range(batch)]
    keys = []
    for i, kind in enumerate(kinds):
        plan = _plan(kind)
        if plan is None:
            keys.append(-1)
            continue
        slots.load(2 * i, plan, 1.0 if i % 2 else 0.0, (i, i + 1), [1, 2, START])
        keys.append(2 * i)
    slots.flush()
    width = warmup + steps + 1
    history = torch.zeros(batch, width, dtype=torch.int32, device=dev)
    row_keys = torch.tensor(keys, device=dev)
    rows = torch.arange(batch, device=dev)
    base = torch.zeros(batch, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    logits_base = torch.randn(batch, VOCAB, device=dev, generator=gen)
    logits_base[:, END] += 3.0  # the model tries to close now and then
    logits_base[:, START] += 2.0  # and re-opens after a forced close
    host, device_us = [], []
    for step in range(warmup + steps):
        logits = logits_base.roll(step, dims=1)
        n_out = torch.full((batch,), step, dtype=torch.long, device=dev)
        h, d = timed(dev, lambda: slots.step(logits, row_keys, history, rows, base, n_out))
        history[:, step] = logits.argmax(1).int()  # the "sampler", outside the timed region
        if step >= warmup:
            host.append(h)
            if d is not None:
                device_us.append(d)
    row = {"device": device, "batch": batch, "mode": mode, "steps": steps, "path": "slots (runner V2)",
           "host_us_median": statistics.median(host), "host_us_p90": sorted(host)[int(0.9 * len(host))],
           "waits": int(slots.state[:, 3].sum()), "forced_ends": int(slots.state[:, 15].sum())}
    if device_us:
        row["device_us_median"] = statistics.median(device_us)
        row["device_us_p90"] = sorted(device_us)[int(0.9 * len(device_us))]
    return row


def bench_v1(device: str, batch: int, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    """The runner-V1 adapter: host output lists in, `apply(logits)` timed."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from budgetforce.vllm.forcing import BudgetForcingLogitsProcessor
    from budgetforce.vllm.wire import plan_to_args

    dev = torch.device(device)
    proc = BudgetForcingLogitsProcessor(SimpleNamespace(model_config=None), dev, is_pin_memory=dev.type == "cuda")  # type: ignore[arg-type]
    outs: list[list[int]] = [[] for _ in range(batch)]
    added = []
    for i in range(batch):
        plan = _plan(["none", "guard", "max", "force"][i % 4] if mode == "mixed" else mode)
        extra = plan_to_args(plan, key=i) if plan is not None else None
        added.append((i, SamplingParams(temperature=1.0 if i % 2 else 0.0, extra_args=extra), [1, 2, START], outs[i]))
    proc.update_state(BatchUpdate(batch, [], added, []))
    gen = torch.Generator(device=dev).manual_seed(0)
    base = torch.randn(batch, VOCAB, device=dev, generator=gen)
    base[:, END] += 3.0
    base[:, START] += 2.0
    host, device_us = [], []
    for step in range(warmup + steps):
        logits = base.roll(step, dims=1)
        h, d = timed(dev, lambda: proc.apply(logits))  # in place
        nxt = logits.argmax(1).tolist()  # the "sampler", outside the timed region
        for o, t in zip(outs, nxt):
            o.append(t)
        proc.update_state(None)
        if step >= warmup:
            host.append(h)
            if d is not None:
                device_us.append(d)
    row = {"device": device, "batch": batch, "mode": mode, "steps": steps, "path": "adapter (runner V1)",
           "host_us_median": statistics.median(host), "host_us_p90": sorted(host)[int(0.9 * len(host))]}
    if device_us:
        row["device_us_median"] = statistics.median(device_us)
        row["device_us_p90"] = sorted(device_us)[int(0.9 * len(device_us))]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--v1", action="store_true", help="also time the runner-V1 adapter (needs vLLM)")
    ap.add_argument("--json", help="write the rows here as JSON")
    args = ap.parse_args()
    rows = [bench(args.device, b, m, args.steps, args.warmup) for b in args.batch for m in args.modes]
    if args.v1:
        rows += [bench_v1(args.device, b, m, args.steps, args.warmup) for b in args.batch for m in args.modes]
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "date": time.strftime("%Y-%m-%d"), "vocab": VOCAB}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"# forcing time per step  ({meta['device_name']}, torch {meta['torch']}, vocab {VOCAB})")
    print(f"{'path':>20} {'batch':>5} {'mode':>6} {'GPU us (median)':>19} {'host us (median)':>17} {'host us (p90)':>14}")
    for r in rows:
        dev_us = f"{r['device_us_median']:.1f}" if "device_us_median" in r else "-"
        print(f"{r['path']:>20} {r['batch']:>5} {r['mode']:>6} {dev_us:>19} {r['host_us_median']:>17.1f} {r['host_us_p90']:>14.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
