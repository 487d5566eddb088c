"""What the thinking modes cost the forcing step, for requests that use them and for those that do not.

Times `ForcingSlots.step` (GPU time per step, CUDA events, launch hidden as in
`benchmarks/processor_step.py`) for the current code and for a baseline copy of the slots from
before the modes (a package `budgetforce_base` under ``--baseline-dir``, made by
``benchmarks/gpu/modes_baseline.sh``), interleaved A B A B over ``--reps`` repetitions, medians.
Row kinds: none (no budget), guard, max, mixed (s1 budgets only: the question is whether they got
slower), and, for the current code only, modes (every mode on: banned tokens, an intervention,
an answer budget, scheduled waits) and mixed+modes (mixed, with every eighth row using every mode:
the kernel variant with the modes compiled in, as an engine runs once any request used a mode).

    python -m benchmarks.modes_step_cost --baseline-dir /tmp/base --batch 256 --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936
START, END, EOS, WAIT, BREAK = 151648, 151649, 151643, 14190, 271
KINDS = ["none", "guard", "max", "mixed", "modes", "mixed+modes", "margin"]
NEW_ONLY = ("modes", "mixed+modes", "margin")  # kinds the baseline cannot run (margin: the logit-margin exit)


def _bare_package() -> None:
    """Import budgetforce's slots without the package's __init__ (the GPU image lacks pydantic-settings)."""
    if "budgetforce" not in sys.modules:
        pkg = types.ModuleType("budgetforce")
        pkg.__path__ = [str(ROOT / "budgetforce")]  # type: ignore[attr-defined]
        sys.modules["budgetforce"] = pkg


def _plan(kind: str, i: int) -> Any:
    from budgetforce.core.controller import ForcingPlan

    base = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,),))
    if kind == "mixed+modes":  # s1 rows in an engine where an eighth of the rows use every mode
        kind = "modes" if i % 8 == 7 else "mixed"
    if kind == "mixed":
        kind = ["none", "guard", "max", "guard"][i % 4]
    if kind == "none":
        return None
    if kind == "guard":
        return ForcingPlan(**base, min_thinking=10**6)
    if kind == "max":
        return ForcingPlan(**base, max_thinking=10**6)
    if kind == "margin":  # the logit-margin exit, tested after every break (a quarter of the steps here)
        return ForcingPlan(**base, max_thinking=10**6, exit_margin=0.0, exit_breaks=frozenset({BREAK}))
    return ForcingPlan(  # modes: each mode on, next to a maximum
        **base, max_thinking=10**6, banned=frozenset({WAIT, 13824, 11489}), intervention=(40, 41, 42),
        intervention_at=64, max_answer=10**6, alpha_moment=10**6, wait_probability=0.05,
        breaks=frozenset({BREAK, 382, 624}), answer_end=EOS,
    )


def bench(slots_mod: Any, kind: str, batch: int, steps: int, warmup: int, dev: torch.device) -> float:
    """Median GPU µs per step (host µs on the CPU)."""
    from benchmarks.processor_step import timed

    slots = slots_mod.ForcingSlots(max(2 * batch, 64), dev)
    keys = []
    for i in range(batch):
        plan = _plan(kind, i)
        if plan is None:
            keys.append(-1)
            continue
        assert slots.load(2 * i, plan, 1.0 if i % 2 else 0.0, (i, i + 1), [1, 2, START])
        keys.append(2 * i)
    slots.flush()
    history = torch.zeros(batch, warmup + steps + 1, dtype=torch.int32, device=dev)
    row_keys = torch.tensor(keys, device=dev)
    rows = torch.arange(batch, device=dev)
    base = torch.zeros(batch, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    logits_base = torch.randn(batch, VOCAB, device=dev, generator=gen)
    logits_base[:, END] += 3.0
    logits_base[:, BREAK] += 3.0
    out = []
    for step in range(warmup + steps):
        logits = logits_base.roll(step, dims=1)
        n_out = torch.full((batch,), step, dtype=torch.long, device=dev)
        h, d = timed(dev, lambda: slots.step(logits, row_keys, history, rows, base, n_out))
        history[:, step] = logits.argmax(1).int()
        if step >= warmup:
            out.append(d if d is not None else h)  # on the CPU (a check of the script): host time
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-dir", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    _bare_package()
    sys.path.insert(0, str(args.baseline_dir))
    new = importlib.import_module("budgetforce.vllm.slots")
    old = importlib.import_module("budgetforce_base.slots")
    dev = torch.device(args.device)
    runs: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for kind in KINDS:
            for name, mod in (("baseline", old), ("modes", new)) if rep % 2 == 0 else (("modes", new), ("baseline", old)):
                if kind in NEW_ONLY and name == "baseline":
                    continue
                runs.setdefault((kind, name), []).append(bench(mod, kind, args.batch, args.steps, args.warmup, dev))
    rows = []
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"{'GPU' if dev.type == 'cuda' else 'host'} µs per step, batch {args.batch}, median of {args.reps} "
          f"medians ({args.steps} steps each); {name}, torch {torch.__version__}")
    print(f"{'rows':8s} {'baseline':>10s} {'with modes':>11s} {'ratio':>7s}   spread (min-max of repetitions)")
    for kind in KINDS:
        b = runs.get((kind, "baseline"))
        m = runs[(kind, "modes")]
        mb, mm = (statistics.median(b) if b else None), statistics.median(m)
        ratio = mm / mb if mb else None
        spread = f"base {min(b):.2f}-{max(b):.2f}  " if b else ""
        spread += f"modes {min(m):.2f}-{max(m):.2f}"
        print(f"{kind:8s} {mb if mb is not None else float('nan'):10.2f} {mm:11.2f} "
              f"{ratio if ratio is not None else float('nan'):7.3f}   {spread}")
        rows.append({"rows": kind, "baseline_us": b, "modes_us": m, "baseline_median": mb, "modes_median": mm,
                     "ratio": ratio})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "python": platform.python_version(), "batch": args.batch,
                                         "steps": args.steps, "reps": args.reps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
