"""Run `ForcingSlots.step` through the Triton kernel (interpreter) and the torch path on the same batches.

Invoked by tests/test_slots_kernel.py with TRITON_INTERPRET=1; prints "OK <steps>" or raises. With
`s1-only` no plan uses a mode beyond s1, so the kernel's variant without them runs. With `cuda` the
kernel's copy of the slots lives on the GPU (the compiled kernel, no interpreter) and the torch path
stays on the CPU as the reference:

    python3 tests/scripts/kernel_vs_torch.py SEED history|window [s1-only] [cuda]
"""

from __future__ import annotations

import copy
import random
import sys

import torch

from budgetforce.core.controller import ForcingPlan
from budgetforce.core.layout import NS, F, S
from budgetforce.vllm.slots import ForcingSlots, _step_torch
from budgetforce.vllm.slots_kernel import step_cuda

V = 48
START, END, EOS, WAIT, HMM, COMMA = 5, 6, 2, 9, 10, 11
IM, THINK, ANSWER, NL, FINAL, COLON = 30, 31, 32, 33, 34, 35
R1 = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,), (HMM, COMMA)))
S1 = dict(
    think_start=(IM, THINK, NL), think_end=(IM, ANSWER, NL), eos=frozenset({EOS, 3}),
    waits=((WAIT,), (HMM, COMMA, WAIT)), answer_prefix=(FINAL, COLON),
)


def modes(rng: random.Random) -> dict:
    """A random mix of the modes beyond s1 (each on with probability 1/2)."""
    out: dict = {}
    if rng.random() < 0.5:
        out["banned"] = frozenset(rng.sample([12, 13, HMM, 20], rng.randrange(1, 4)))
    if rng.random() < 0.5:
        out["intervention"] = tuple(rng.sample([16, 17, 18, 19], rng.randrange(1, 4)))
        out["intervention_at"] = rng.choice([0, 0, 5, 20])
    if rng.random() < 0.5:
        out["max_answer"] = rng.randrange(0, 12)
        out["answer_end"] = EOS
    out["early_exit"] = rng.random() < 0.7
    if rng.random() < 0.5:
        out["alpha_moment"] = rng.randrange(1, 40)
        out["wait_probability"] = rng.choice([0.2, 0.7, 1.0])
        out["wait_decay"] = rng.random() < 0.5
        out["breaks"] = frozenset({14, 15})
    if rng.random() < 0.5:  # the logit-margin exit (a break shared with the schedule, and one of its own)
        out["exit_margin"] = rng.choice([0.0, 0.7, 3.0])
        out["exit_breaks"] = frozenset({15, 21})
    return out


def on_device(slots: ForcingSlots, dev: torch.device) -> ForcingSlots:
    """A copy of ``slots`` with every table on ``dev``."""
    out = copy.deepcopy(slots)
    for name, value in vars(out).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.to(dev))
    out.device = dev
    return out


def main(seed: int, window: bool, with_modes: bool = True, dev: torch.device = torch.device("cpu")) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    b = 12
    a = ForcingSlots(32, torch.device("cpu"), stats=torch.zeros(32, NS, dtype=torch.int32))
    keys = []
    for i in range(b):
        if i % 5 == 4:
            keys.append(-1)
            continue
        s1 = rng.random() < 0.5
        lo = rng.randrange(0, 40)
        hi = rng.choice([None, rng.randrange(lo, 60)])
        mix = modes(rng) if with_modes else {}
        plan = ForcingPlan(**(S1 if s1 else R1), min_thinking=lo, max_thinking=hi, max_waits=rng.choice([None, 1, 3]), **mix)
        if with_modes and not plan.is_budgeted and rng.random() < 0.5:
            plan = ForcingPlan(**(S1 if s1 else R1), **modes(rng))  # modes alone
        prompt = [1, IM, THINK, NL] if s1 else rng.choice([[1, START, NL], [1, 4], [1, START, 7, END]])
        temp = rng.choice([0.0, 0.6, 1.0])
        key = 2 * i + 1
        a.load(key, plan, temp, (rng.randrange(2**31), rng.randrange(2**31)), prompt, (i, 9))
        keys.append(key)
    a.flush()
    k = on_device(a, dev)
    row_keys = torch.tensor(keys)
    outs: list[list[int]] = [[] for _ in range(b)]
    for step in range(80):
        raw = torch.randn(b, V, generator=gen) * 2
        raw[:, END] += 1.5
        raw[:, IM] += 1.5
        raw[:, START] += 0.5
        raw[:, 14:16] += 1.0  # paragraph breaks now and then
        raw[:, 21] += 1.0
        la, lk = raw.clone(), raw.clone()
        if step == 30:  # the frontend asks some rows to close their thinking now (an early exit)
            for key in keys[::3]:
                if key >= 0:
                    a.stats[key, S.EXIT] = k.stats[key, S.EXIT] = 1
        hist = torch.tensor([[o[-1] if o else -1] for o in outs])
        seen = torch.tensor([len(o) - 1 if o else 0 for o in outs])
        n = torch.tensor([len(o) for o in outs])
        if window:  # runner V1's layout: exactly the new tokens, counted per row
            n = torch.tensor([1 if o else 0 for o in outs])
        _step_torch(a, la, row_keys, hist, torch.arange(b), -seen, n, 1 if window else None)
        lk = lk.to(dev)
        step_cuda(k, lk, row_keys.to(dev), hist.to(dev), torch.arange(b, device=dev), (-seen).to(dev), n.to(dev), window)
        ks, lk, kst = k.state.cpu(), lk.cpu(), k.stats.cpu()
        if not torch.equal(a.state, ks):
            diff = (a.state != ks).nonzero().tolist()
            raise AssertionError(f"step {step}: state differs at (key, field): {[(r, c, int(a.state[r, c]), int(ks[r, c])) for r, c in diff]}")
        assert torch.allclose(la, lk, rtol=1e-5, atol=1e-5, equal_nan=True), f"step {step}: logits differ"
        assert torch.equal(a.stats, kst), f"step {step}: stats differ"
        probs = torch.softmax(la, 1)
        tok = torch.multinomial(probs, 1, generator=gen).flatten().tolist()
        for o, t in zip(outs, tok):
            o.append(t)
    print("OK", step + 1, "waits", int(a.state[:, F.WAITS].sum()), "forced", int(a.state[:, F.FORCED].sum()),
          "sched", int(a.state[:, F.SCHED].sum()), "exited", int(a.state[:, F.EXITED].sum()), "margin rows", int((a.state[:, F.MODES] & 32).ne(0).sum()),
          "ans", int(a.state[:, F.ANS].sum()), "ivn", int(a.state[:, F.IVDONE].sum()))


if __name__ == "__main__":
    main(int(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "window", "s1-only" not in sys.argv,
         torch.device("cuda" if "cuda" in sys.argv else "cpu"))
