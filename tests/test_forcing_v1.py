"""The runner-V1 adapter under every kind of batch update vLLM sends, against the controller.

`BudgetForcingLogitsProcessor` is driven with vLLM's own `BatchUpdate`s: requests are added,
removed, moved (one way) and swapped, preempted (removed with their output so far) and resumed
in another row (added again with that output, as runner V1 does), and their output lists carry
async-scheduling placeholders (-1) for a step now and then, repaired the step after. Greedy
outputs must follow `ThinkingController` exactly; rows without a budget must be untouched.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from budgetforce.core.controller import ForcingPlan, ThinkingController
from budgetforce.vllm.forcing import BudgetForcingLogitsProcessor
from budgetforce.vllm.wire import plan_to_args

V = 64
START, END, EOS, WAIT, HMM, COMMA = 5, 6, 2, 9, 10, 11
PLAN = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,), (HMM, COMMA)))


class Req:
    def __init__(self, rid: int, plan: ForcingPlan | None, prompt: list[int]) -> None:
        self.rid, self.prompt = rid, prompt
        self.params = SamplingParams(temperature=0.0, max_tokens=400, extra_args=plan_to_args(plan, key=rid) if plan else None)
        self.ctl = ThinkingController(plan, prompt) if plan else None
        self.out: list[int] = []  # vLLM's live output list (the processor holds a reference)


def test_v1_adapter_follows_every_batch_update() -> None:
    from test_slots import reference_token

    proc = BudgetForcingLogitsProcessor(SimpleNamespace(model_config=None), torch.device("cpu"), False)  # type: ignore[arg-type]
    rng = random.Random(3)
    gen = torch.Generator().manual_seed(3)
    reqs = [
        Req(i, None if i % 5 == 4 else ForcingPlan(
            **PLAN, min_thinking=rng.randint(5, 40), max_thinking=rng.choice([None, 18]), max_waits=rng.choice([None, 2])
        ), [1, 3, START] if i % 3 else [1, 3])
        for i in range(12)
    ]
    rows: list[Req | None] = []  # the persistent batch: row -> request
    waiting = list(reqs)
    held: dict[int, tuple[Req, int]] = {}  # request id -> (request, the real token behind its placeholder)
    counts = {"moved": 0, "swapped": 0, "preempted": 0, "placeholders": 0}
    for step in range(150):
        removed, added, moved = [], [], []
        live = [i for i, r in enumerate(rows) if r is not None]
        if live and step % 11 == 5:  # preemption: removed with its output, resumed later elsewhere
            i = rng.choice(live)
            waiting.append(rows[i])  # type: ignore[arg-type]
            rows[i] = None
            removed.append(i)
            counts["preempted"] += 1
        if removed:  # as vLLM condenses a batch with a hole and nothing to fill it: the last row moves in
            last = max(i for i, r in enumerate(rows) if r is not None) if any(rows) else -1
            if last > removed[0]:
                rows[removed[0]], rows[last] = rows[last], None
                moved.append((last, removed[0], MoveDirectionality.UNIDIRECTIONAL))
                counts["moved"] += 1
        while not removed and waiting and len([r for r in rows if r is not None]) < 8:
            req = waiting.pop(0)
            free = [i for i, r in enumerate(rows) if r is None]
            i = free[0] if free else len(rows)
            if i == len(rows):
                rows.append(None)
            rows[i] = req
            added.append((i, req.params, req.prompt, req.out))
        live = [i for i, r in enumerate(rows) if r is not None]
        if len(live) >= 2 and step % 7 == 3 and not moved:
            a, b = rng.sample(live, 2)
            rows[a], rows[b] = rows[b], rows[a]
            moved.append((a, b, MoveDirectionality.SWAP))
            counts["swapped"] += 1
        proc.update_state(BatchUpdate(len(rows), removed, added, moved) if (removed or added or moved) else None)
        for req, tok in held.values():  # last step's placeholders are repaired before the step runs
            req.out[-1] = tok
        held = {}
        raw = torch.randn(len(rows), V, generator=gen)
        raw[:, END] += 1.5
        raw[:, START] += 1.0
        logits = proc.apply(raw.clone())
        chosen = logits.argmax(1).tolist()
        for i, req in enumerate(rows):
            if req is None:
                continue
            if req.ctl is None:
                assert torch.equal(logits[i], raw[i]), "a row without a budget was touched"
                tok = chosen[i]
            else:
                want, replaced = reference_token(req.ctl, raw[i])
                assert chosen[i] == want, f"request {req.rid} at step {step}"
                req.ctl.accept(want, replaced)
                tok = want
            if rng.random() < 0.1 and req.ctl is not None and req.ctl.action()[0] == 0:
                req.out.append(-1)  # an async-scheduling placeholder, repaired next step
                held[req.rid] = (req, tok)
                counts["placeholders"] += 1
            else:
                req.out.append(tok)
    assert min(counts.values()) >= 3, counts
    assert sum(r.ctl.waits_inserted for r in reqs if r.ctl) >= 5
    assert any(r.ctl.forced_end for r in reqs if r.ctl)
