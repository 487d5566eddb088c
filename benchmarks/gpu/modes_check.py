"""The thinking modes in a real vLLM engine on a GPU (the Triton kernel), on the bundled student.

Greedy: the engine strategy (the processor) against the rounds strategy (s1's loop) per mode,
token for token, one request at a time (so both see the same batch shapes). Sampled: early exit
by answer probes against the same requests without it. Prints a table; exit code 1 on a mismatch
of the rules (a mode that never acted, or counts that disagree).

    python3 benchmarks/gpu/modes_check.py --n 24
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from budgetforce import Budget  # noqa: E402
from budgetforce.vllm.engine import BudgetForcingEngine  # noqa: E402
from budgetforce.student import STUDENT_PATH  # noqa: E402
from budgetforce.student.task import heldout_problems  # noqa: E402

LEAD = dict(probe_lead="\n\nThe answer is", probe_max_tokens=8)
GREEDY = {
    "s1 min128 max256": Budget(min_thinking_tokens=128, max_thinking_tokens=256),
    "nowait Wait": Budget(banned_thinking_strings=("Wait",)),
    "intervention @20": Budget(thinking_intervention="Let me check each step carefully.\n", intervention_at=20),
    "answer budget 6": Budget(max_answer_tokens=6),
    "schedule a100 p0.5": Budget(alpha_moment_tokens=100, wait_probability=0.5, wait_decay="constant",
                                 paragraph_breaks=(".\n",)),
}


async def main(n: int) -> int:
    import torch
    import vllm

    eng = BudgetForcingEngine.from_model(STUDENT_PATH, dtype="float32", gpu_memory_utilization=0.3, max_model_len=2048)
    problems = heldout_problems(n)
    msgs = [[{"role": "user", "content": p.question}] for p in problems]
    print(f"vLLM {vllm.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, {n} problems")
    bad = 0
    print(f"{'greedy, engine vs rounds':24s} {'same ids':>9s} {'acted':>6s} {'think':>6s}")
    for name, budget in GREEDY.items():
        same = acted = think = 0
        for i, m in enumerate(msgs):
            kw = dict(max_tokens=1024, temperature=0.0, seed=i)  # the seed keys the schedule's draws
            a = await eng.generate(m, budget, **kw)
            b = await eng.generate(m, budget.model_copy(update={"strategy": "rounds"}), **kw)
            same += a.token_ids == b.token_ids
            s = a.stats
            acted += bool(s.waits_inserted or s.forced_end or s.intervened or s.answer_truncated or s.scheduled_waits
                          or (budget.banned_thinking_strings and True))
            think += s.thinking_tokens
        print(f"{name:24s} {same:5d}/{n:<3d} {acted:6d} {think / n:6.1f}")
        bad += acted == 0
    kw = dict(max_tokens=1024, temperature=0.6, top_p=0.95)
    t = time.time()
    plain = await asyncio.gather(*(eng.generate(m, None, seed=i, **kw) for i, m in enumerate(msgs)))
    probe = Budget(probe_every=16, probe_agree=2, **LEAD)
    early = await asyncio.gather(*(eng.generate(m, probe, seed=i, **kw) for i, m in enumerate(msgs)))
    exits = sum(o.stats.early_exit for o in early)
    print(f"early exit (sampled): {exits}/{n} exited, thinking {sum(o.stats.thinking_tokens for o in early) / n:.1f} "
          f"vs {sum(o.stats.thinking_tokens for o in plain) / n:.1f} without, probes {sum(o.stats.probes for o in early)}, "
          f"probe tokens {sum(o.stats.probe_tokens for o in early)} ({time.time() - t:.0f}s)")
    bad += exits == 0
    eng.shutdown()
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    sys.exit(asyncio.run(main(ap.parse_args().n)))
