"""Why the choices of an n > 1 request ran past their maximum on runner V2: a trace from inside the engine.

One in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so the processor lives in this process)
runs the same budget three ways: one request with n = 3 (seeded, sampled), three n = 1 requests with
the seeds vLLM gives the three choices, and n = 3 unseeded. Every `add_request` of the runner-V2
adapter is logged (slot, seed, nonce, the key it got) and, for the first steps after each, the
rows' keys and state (phase, thinking seen, waits) as the device holds them. Each output is
counted on its token ids. Writes a JSON trace; prints one line per choice.

    VLLM_USE_V2_MODEL_RUNNER=1 python3 benchmarks/gpu/v2_children.py --model DIR --out trace.json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=12, help="steps traced after each add")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    from budgetforce.vllm.stats_board import StatsBoard
    from budgetforce.vllm.wire import BOARD_ENV, BOARD_KEY_KEY, BOARD_NAME_KEY, NONCE_KEY

    os.environ[BOARD_ENV] = "bf-children-board"  # as a server's budget layer sets it
    board = StatsBoard.shared(os.environ[BOARD_ENV])

    from budgetforce.vllm import forcing_v2
    from budgetforce.core.layout import F

    trace: list[dict[str, Any]] = []
    budget_left = {"steps": 0}
    v2 = forcing_v2.BudgetForcingV2
    add0, apply0, staged0 = v2.add_request, v2.apply, v2.apply_staged_writes

    def add_request(self: Any, req_idx: int, sp: Any) -> bool:
        ok = add0(self, req_idx, sp)
        xa = sp.extra_args or {}
        trace.append({"event": "add", "slot": req_idx, "seed": sp.seed, "n": sp.n, "nonce": xa.get("budgetforce_nonce"),
                      "forced": ok, "key": int(self._slot_key[req_idx]), "fresh": list(self._fresh),
                      "params_id": id(sp), "xargs_id": id(xa)})  # fmt: skip
        budget_left["steps"] = args.steps
        return ok

    def apply_staged_writes(self: Any) -> None:
        staged0(self)
        if self._fresh or budget_left["steps"]:
            trace.append({"event": "staged", "slot_keys": [int(k) for k in self._slot_key[:8]]})

    def apply(self: Any, logits: Any, ctx: Any) -> Any:
        out = apply0(self, logits, ctx)
        if budget_left["steps"] and self.slots is not None:
            budget_left["steps"] -= 1
            slots = [int(s) for s in ctx.idx_mapping_np]
            rows = []
            for s in slots:
                k = int(self._slot_key[s])
                st = self.slots.state[k].tolist() if k >= 0 else None
                rs = self.req_states
                rows.append({"slot": s, "key": k, "dev_key": int(self._slot_key_dev[s]),
                             "total_len": int(rs.total_len.gpu[s]), "prompt_len": int(rs.prompt_len.gpu[s]),
                             "state": None if st is None else {c.name: st[c] for c in
                                                               (F.ON, F.PHASE, F.THINK, F.SEEN, F.WAITS, F.MIN, F.MAXT, F.QSRC, F.ACT)}})  # fmt: skip
            top = logits.argmax(1).tolist()
            trace.append({"event": "apply", "rows": rows, "argmax_after": top})
        return out

    v2.add_request, v2.apply, v2.apply_staged_writes = add_request, apply, apply_staged_writes  # type: ignore[method-assign]

    llm = LLM(model=args.model, load_format="dummy", dtype="bfloat16", max_model_len=1024, seed=0,
              gpu_memory_utilization=args.gpu_memory_utilization, logits_processors=["budgetforce.vllm:BudgetForcing"])  # fmt: skip
    tok = llm.get_tokenizer()
    close = tok.convert_tokens_to_ids("</think>")
    wait = tok.encode("Wait", add_special_tokens=False)
    msgs = [{"role": "user", "content": "Tom has 12 apples and buys 3 bags of 7. How many now?"}]
    budget = {"min_thinking_tokens": 40, "max_thinking_tokens": 80}

    def params(row: bool = False, **kw: Any) -> Any:
        xargs: dict[str, Any] = dict(budget)
        if row:  # what the budget layer adds: the board's name, a row there and its nonce
            key, nonce = board.acquire()
            xargs.update({BOARD_NAME_KEY: os.environ[BOARD_ENV], BOARD_KEY_KEY: key, NONCE_KEY: nonce})
        return SamplingParams(max_tokens=120, logit_bias={close: 7.0}, extra_args=xargs, **kw)

    cases = {
        "n3 seeded t=1": [params(n=3, temperature=1.0, seed=11)],
        "3 x n1 seeds 11,12,13 t=1": [params(temperature=1.0, seed=11 + i) for i in range(3)],
        "n3 unseeded t=1": [params(n=3, temperature=1.0)],
        "n3 seeded t=1, board row": [params(row=True, n=3, temperature=1.0, seed=11)],
        "n1 seeded t=1, board row": [params(row=True, temperature=1.0, seed=11 + i) for i in range(3)],
    }
    report: dict[str, Any] = {}
    for name, plist in cases.items():
        trace.append({"event": "case", "name": name})
        outs = []
        for p in plist:
            outs += llm.chat(msgs, p, use_tqdm=False)[0].outputs
        rows = []
        for o in outs:
            ids = list(o.token_ids)
            end = ids.index(close) if close in ids else len(ids)
            waits = sum(1 for i in range(end) if ids[i : i + len(wait)] == wait)
            rows.append({"thinking": end, "closed": end < len(ids), "waits": waits, "len": len(ids)})
            ok = end < len(ids) and 40 <= end <= 80
            print(f"{name:28s} thinking={end:4d} closed={end < len(ids)!s:5s} waits={waits:3d} len={len(ids):4d} {'OK' if ok else 'BAD'}",
                  flush=True)  # fmt: skip
        report[name] = rows
    with open(args.out, "w") as f:
        json.dump({"report": report, "trace": trace}, f, indent=0, default=str)


if __name__ == "__main__":
    main()
