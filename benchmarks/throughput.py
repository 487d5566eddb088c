"""What budget forcing costs: in-process throughput and latency, side by side, on one GPU.

Models of real students' shapes with random weights (`load_format="dummy"`), the real
R1-Distill tokenizer, sampling at temperature 1 with a logit bias on `</think>` so think-end
attempts happen at a controlled rate, and `ignore_eos` with a fixed `max_tokens` so every
configuration generates exactly the same number of tokens. Configurations, interleaved
(A B C ... A B C ...) so drift between repetitions hits all alike:

    plain      vLLM without budgetforce (same logit bias)
    idle       budgetforce's engine, requests without a budget (the processor registered, idle)
    engine     engine strategy, min budget with `waits` forced waits (the model then closes)
    engine-max engine strategy, max only (compare with `native`)
    rounds     rounds strategy (per request s1 loop), same budget as `engine`
    s1loop     s1's offline loop: `generate` over the whole batch in rounds, each round waiting
               for the slowest sequence, `waits` rounds of "Wait", then the answer
    native     vLLM's own `thinking_token_budget` (max only; needs a reasoning parser)

Workloads (`--workload`): `uniform` gives every request the same bias, so every thinking tries to
close at the same rate; `longtail` gives each request its own bias, drawn so that the thinking
lengths at which the model first tries to close spread like real R1 traces (log-normal, median
`--longtail-median` tokens, sigma `--longtail-sigma`: a wide, long tail), the case where s1's loop
waits on the slowest sequence every round. The bias for a length is set from the close rate
measured at `--bias` when the engines start (the dummy weights' logits are not known before).

    python -m benchmarks.throughput --shape benchmarks/shapes/r1-distill-qwen-1.5b.json \\
        --tokenizer .gpu-tok --concurrency 256 --new-tokens 1024 --reps 3 --out $OUT/tp.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # custom V1 processors and the native budget need runner V1

CONFIGS = ["plain", "idle", "engine", "engine-max", "rounds", "s1loop", "native"]


def model_dir(shape: Path, tokenizer: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="shape-"))
    shutil.copy(shape, d / "config.json")
    for f in tokenizer.iterdir():
        if f.name != "config.json":
            shutil.copy(f, d / f.name)
    return d


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.path = model_dir(Path(args.shape), Path(args.tokenizer))
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.think_end = self.tok.convert_tokens_to_ids("</think>")
        self.wait_ids = self.tok.encode("Wait", add_special_tokens=False)
        self.bias = {self.think_end: args.bias}
        self.q: float | None = None  # the close token's base probability share, measured (longtail)

    def prompts(self, n: int) -> list[list[int]]:
        rng = random.Random(0)
        out = []
        for i in range(n):
            words = " ".join(rng.choice(["apples", "bags", "each", "total", "how", "many", str(i)]) for _ in range(400))
            body = self.tok.encode(words, add_special_tokens=False)[: self.args.input_len]
            msgs = [{"role": "user", "content": self.tok.decode(body)}]
            out.append(self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
        return out

    def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from budgetforce.vllm.engine import BudgetForcingEngine

        common = dict(
            load_format="dummy", dtype="bfloat16", max_model_len=self.args.input_len + self.args.new_tokens + 64,
            gpu_memory_utilization=self.args.mem, seed=0, max_num_seqs=max(self.args.concurrency),
            enable_prefix_caching=True,
        )
        t = time.time()
        try:
            self.plain = AsyncLLM.from_engine_args(
                AsyncEngineArgs(model=str(self.path), reasoning_parser="deepseek_r1", **common)
            )
            self.native_ok = True
        except Exception as e:  # the native budget is optional for the comparison
            print(f"reasoning parser unavailable ({e}); native runs skipped", flush=True)
            self.plain = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(self.path), **common))
            self.native_ok = False
        self.ours = BudgetForcingEngine.from_model(self.path, **common)
        self.start_s = time.time() - t

    async def calibrate(self) -> None:
        """The close token's base share q from the close rate at `--bias`: p = e^b q / (1 - q + e^b q)."""
        from vllm.inputs import TokensPrompt

        prompts, tokens, closes = self.prompts(64), 0, 0
        params = self.params(max_tokens=256)

        async def one(i: int, ids: list[int]) -> None:
            nonlocal tokens, closes
            async for out in self.plain.generate(TokensPrompt(prompt_token_ids=ids), params, f"cal-{i}-{uuid.uuid4().hex}"):
                new = out.outputs[0].token_ids
                tokens += len(new)
                closes += sum(t == self.think_end for t in new)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        p = max(closes, 1) / max(tokens, 1)
        self.q = p / (math.exp(self.args.bias) * (1 - p) + p)
        print(json.dumps({"calibration": {"bias": self.args.bias, "close_rate": p, "q": self.q}}), flush=True)

    def biases(self, c: int) -> list[dict[int, float]]:
        """Each request's `</think>` bias: one for all (uniform), or one per target length (longtail)."""
        if self.args.workload == "uniform" or self.q is None:
            return [self.bias] * c
        rng = random.Random(1)
        out = []
        for _ in range(c):
            length = min(max(rng.lognormvariate(math.log(self.args.longtail_median), self.args.longtail_sigma), 4.0),
                         float(self.args.new_tokens * 4))  # fmt: skip
            p = 1.0 / length
            out.append({self.think_end: math.log(p * (1 - self.q) / (self.q * (1 - p)))})
        return out

    def params(self, **kw: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        base = dict(temperature=1.0, logit_bias=self.bias, ignore_eos=True, output_kind=RequestOutputKind.DELTA,
                    detokenize=False)
        return SamplingParams(**{**base, **kw})

    async def _plain_one(self, ids: list[int], params: Any, rec: dict) -> None:
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        last, n = t0, 0
        async for out in self.plain.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
            now = time.perf_counter()
            k = len(out.outputs[0].token_ids)
            if n == 0 and k:
                rec["ttft"].append(now - t0)
            elif k:
                rec["itl"].append((now - last) / k)
            last, n = now, n + k
        rec["latency"].append(time.perf_counter() - t0)
        rec["tokens"] += n

    async def _ours_one(self, ids: list[int], budget: Any, rec: dict, bias: dict[int, float] | None = None) -> None:
        t0 = time.perf_counter()
        last, n = t0, 0
        async for d in self.ours.stream(ids, budget, max_tokens=self.args.new_tokens, temperature=1.0,
                                        logit_bias=bias or self.bias, ignore_eos=True):
            now = time.perf_counter()
            k = len(d.token_ids)
            if n == 0 and k:
                rec["ttft"].append(now - t0)
            elif k:
                rec["itl"].append((now - last) / k)
            last, n = now, n + k
            if d.stats is not None:
                rec["waits"].append(d.stats.waits_inserted if d.stats.waits_inserted is not None else float("nan"))
                rec["thinking"].append(d.stats.thinking_tokens)
        rec["latency"].append(time.perf_counter() - t0)
        rec["tokens"] += n

    async def _s1loop(self, prompts: list[list[int]], rec: dict, biases: list[dict[int, float]] | None = None) -> None:
        """s1's harness: whole-batch rounds, each waiting for the slowest sequence."""
        from vllm.inputs import TokensPrompt

        n_new, budget = self.args.new_tokens, self.args.new_tokens * 3 // 4
        seqs = [list(p) for p in prompts]
        made = [0] * len(seqs)
        t0 = time.perf_counter()

        async def gen(i: int, max_tokens: int, stop: list[int] | None) -> None:
            params = self.params(max_tokens=max_tokens, stop_token_ids=stop, ignore_eos=stop is None,
                                 logit_bias=biases[i] if biases else self.bias)
            async for out in self.plain.generate(TokensPrompt(prompt_token_ids=seqs[i]), params, uuid.uuid4().hex):
                new = list(out.outputs[0].token_ids)
                if new and stop and new[-1] in stop:
                    new.pop()  # s1 drops the stop token and appends "Wait"
                seqs[i] += new
                made[i] += len(new)

        for r in range(self.args.waits + 1):  # thinking rounds: stop at </think>
            await asyncio.gather(*(gen(i, budget - made[i], [self.think_end]) for i in range(len(seqs)) if budget - made[i] > 0))
            if r < self.args.waits:
                for i in range(len(seqs)):
                    if budget - made[i] > len(self.wait_ids):
                        seqs[i] += self.wait_ids
                        made[i] += len(self.wait_ids)
                        rec["waits"].append(1)
        for i in range(len(seqs)):  # close the thinking, then the answer up to the same total
            seqs[i].append(self.think_end)
            made[i] += 1
        await asyncio.gather(*(gen(i, n_new - made[i], None) for i in range(len(seqs)) if n_new - made[i] > 0))
        rec["latency"] += [time.perf_counter() - t0] * len(seqs)
        rec["tokens"] += sum(made)

    async def run_config(self, config: str, c: int) -> dict[str, Any]:
        from budgetforce import Budget

        prompts = self.prompts(c)
        rec: dict[str, Any] = dict(config=config, concurrency=c, tokens=0, ttft=[], itl=[], latency=[], waits=[], thinking=[])
        n, w = self.args.new_tokens, self.args.waits
        min_budget = Budget(min_thinking_tokens=n * 3 // 4, max_waits=w)
        bias = self.biases(c)
        t0 = time.perf_counter()
        if config == "plain":
            await asyncio.gather(*(self._plain_one(p, self.params(max_tokens=n, logit_bias=b), rec) for p, b in zip(prompts, bias)))
        elif config == "native":
            if not self.native_ok:
                return {**rec, "error": "no reasoning parser"}
            await asyncio.gather(*(self._plain_one(p, self.params(max_tokens=n, thinking_token_budget=n // 2, logit_bias=b), rec)
                                   for p, b in zip(prompts, bias)))  # fmt: skip
        elif config == "idle":
            await asyncio.gather(*(self._ours_one(p, None, rec, b) for p, b in zip(prompts, bias)))
        elif config == "engine":
            await asyncio.gather(*(self._ours_one(p, min_budget, rec, b) for p, b in zip(prompts, bias)))
        elif config == "engine-max":
            await asyncio.gather(*(self._ours_one(p, Budget(max_thinking_tokens=n // 2), rec, b) for p, b in zip(prompts, bias)))
        elif config == "rounds":
            rb = min_budget.model_copy(update={"strategy": "rounds"})
            await asyncio.gather(*(self._ours_one(p, rb, rec, b) for p, b in zip(prompts, bias)))
        elif config == "s1loop":
            await self._s1loop(prompts, rec, bias)
        wall = time.perf_counter() - t0
        waits_per_req = (sum(rec["waits"]) / c) if rec["waits"] else 0.0
        return dict(
            config=config, concurrency=c, wall_s=wall, tokens=rec["tokens"], tok_per_s=rec["tokens"] / wall,
            ttft_p50=pct(rec["ttft"], 0.5), ttft_p99=pct(rec["ttft"], 0.99), itl_p50=pct(rec["itl"], 0.5),
            itl_p99=pct(rec["itl"], 0.99), latency_p50=pct(rec["latency"], 0.5), latency_p99=pct(rec["latency"], 0.99),
            waits_per_request=waits_per_req,
            thinking_mean=statistics.mean(rec["thinking"]) if rec["thinking"] else None,
        )


async def main_async(args: argparse.Namespace) -> None:
    import torch
    import vllm

    bench = Bench(args)
    bench.start()
    if args.workload == "longtail":
        await bench.calibrate()
    meta = dict(
        shape=args.shape, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        vllm=vllm.__version__, torch=torch.__version__, python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), engine_start_s=bench.start_s, args=vars(args),
        close_token_share=bench.q,
    )
    print(json.dumps(meta), flush=True)
    rows: list[dict[str, Any]] = []
    for c in args.concurrency:
        await bench.run_config("plain", min(c, 4))  # warm-up
        await bench.run_config("idle", min(c, 4))
        for rep in range(args.reps):
            for config in args.configs:
                row = await bench.run_config(config, c)
                row["rep"] = rep
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print_table(rows)
    bench.ours.shutdown()
    bench.plain.shutdown()


def print_table(rows: list[dict[str, Any]]) -> None:
    from collections import defaultdict

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if "error" not in r:
            groups[(r["concurrency"], r["config"])].append(r)
    print(f"\n{'conc':>4} {'config':>10} {'runs':>4} {'tok/s (median)':>15} {'vs plain':>8} {'TTFT p50 ms':>11} "
          f"{'TTFT p99 ms':>11} {'ITL p50 ms':>10} {'lat p99 s':>9} {'waits/req':>9}")
    for (c, config), rs in sorted(groups.items()):
        med = statistics.median(r["tok_per_s"] for r in rs)
        plain = groups.get((c, "plain"))
        ratio = med / statistics.median(r["tok_per_s"] for r in plain) if plain else float("nan")
        m = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"{c:>4} {config:>10} {len(rs):>4} {med:>15.0f} {ratio:>8.3f} {m('ttft_p50') * 1e3:>11.1f} "
              f"{m('ttft_p99') * 1e3:>11.1f} {m('itl_p50') * 1e3:>10.2f} {m('latency_p99'):>9.2f} {m('waits_per_request'):>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, help="a config.json of the model's shape")
    ap.add_argument("--tokenizer", required=True, help="a folder with tokenizer.json and tokenizer_config.json")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[256])
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--new-tokens", type=int, default=1024)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--waits", type=int, default=2)
    ap.add_argument("--bias", type=float, default=7.0, help="logit bias on </think> (sets the attempt rate)")
    ap.add_argument("--workload", choices=["uniform", "longtail"], default="uniform")
    ap.add_argument("--longtail-median", type=float, default=256.0, help="median thinking tokens before a first close")
    ap.add_argument("--longtail-sigma", type=float, default=1.0, help="log-normal sigma of those lengths")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem", type=float, default=0.42, help="gpu_memory_utilization of each of the two engines")
    ap.add_argument("--out")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
