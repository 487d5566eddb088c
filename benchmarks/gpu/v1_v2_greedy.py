"""Greedy outputs of budgetforce on vLLM's runner V2 against runner V1, in a real engine on one GPU.

Runs itself once per runner (a fresh process each: `VLLM_USE_V2_MODEL_RUNNER` is read at start),
with CUDA graphs, the R1-Distill-Qwen-1.5B shape (dummy weights) and a logit bias on `</think>`
so closes are attempted; requests without a budget are the control (any difference there is
the runners', not budgetforce's). Prints one line per request and a summary.

    python3 benchmarks/gpu/v1_v2_greedy.py --shape benchmarks/shapes/r1-distill-qwen-1.5b.json --tokenizer .gpu-tok
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BUDGETS = [None, {"min_thinking_tokens": 120, "max_waits": 3}, {"max_thinking_tokens": 40},
           {"min_thinking_tokens": 60, "max_thinking_tokens": 100, "wait_strings": ["Hmm, let me check again"]}]


def child(shape: str, tokenizer: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from benchmarks.throughput import model_dir
    from budgetforce import Budget
    from budgetforce.vllm.wire import plan_to_args
    from budgetforce.core.profile import detect_profile

    path = model_dir(Path(shape), Path(tokenizer))
    llm = LLM(model=str(path), load_format="dummy", dtype="bfloat16", max_model_len=1024, seed=0,
              gpu_memory_utilization=0.3, logits_processors=["budgetforce.vllm:EngineForcing"])  # fmt: skip
    tok = llm.get_tokenizer()
    profile = detect_profile(tok, str(path)).resolve(tok)
    prompts, params = [], []
    for i in range(16):
        msgs = [{"role": "user", "content": f"Problem {i}: {i * 17 % 23} bags of {i + 3} apples; how many?"}]
        ids = profile.open_thinking(list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)))
        spec = BUDGETS[i % len(BUDGETS)]
        plan = profile.plan(Budget(**spec)) if spec else None
        prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
        params.append(SamplingParams(temperature=0.0, max_tokens=256, logit_bias={profile.think_end[0]: 6.0},
                                     extra_args=plan_to_args(plan) if plan else None))  # fmt: skip
    outs = llm.generate(prompts, params)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.shape, args.tokenizer)
        return
    runs = {}
    for runner in ("1", "0"):
        env = {**os.environ, "VLLM_USE_V2_MODEL_RUNNER": runner}
        done = subprocess.run([sys.executable, __file__, "--child", "--shape", args.shape, "--tokenizer", args.tokenizer],
                              env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"runner {'V2' if runner == '1' else 'V1'} failed:\n{done.stderr[-3000:]}")
            return
        runs[runner] = json.loads(line[len("RESULT "):])
    same = {"budget": 0, "control": 0}
    total = {"budget": 0, "control": 0}
    for i, (a, b) in enumerate(zip(runs["1"], runs["0"])):
        kind = "control" if BUDGETS[i % len(BUDGETS)] is None else "budget"
        total[kind] += 1
        same[kind] += a == b
        first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
        print(f"request {i:2d} {kind:7s} budget={BUDGETS[i % len(BUDGETS)]} identical={a == b} first_diff={first}")
    print(f"SUMMARY identical: budgeted {same['budget']}/{total['budget']}, control (no budget) {same['control']}/{total['control']}")


if __name__ == "__main__":
    main()
