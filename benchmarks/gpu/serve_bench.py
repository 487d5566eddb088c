"""What a budget costs over HTTP, measured the way users compare servers: `vllm bench serve`.

vLLM's own benchmark client (`vllm.benchmarks.serve`, the code behind `vllm bench serve`, called
in-process so each run costs no start-up) against servers already running on one GPU, with
every (target, config) pair interleaved per repetition (A B C ... A B C ...) so drift hits all
alike; medians per pair, ratios against plain `vllm serve` and against the same server without
a budget at the same concurrency.

Configs (one request body each; every config carries the same logit bias on `</think>` so the
dummy-weight model tries to close its thinking at a controlled rate):

    none    no budget fields
    min     `min_thinking_tokens` (the bias is calibrated first on a budgetforce target so that
            2-4 waits per request are forced; the mean is reported per run from /metrics)
    max     `max_thinking_tokens` only
    native  vLLM's `thinking_token_budget` (a `vllm serve --reasoning-parser deepseek_r1` target)
    worst   min 600 / max 900 with a bias of +7: the model tries to close every few tokens
            (~190 forced waits per request), the worst case of the first HTTP measurement

Each run also records the CPU time the target's processes spent per output token, split into the
API server process(es) (those listening on the target's port) and the rest of the server's process
tree (engine core, workers): at high concurrency the API server is the bottleneck, and this says
what a budget adds there (`api_cpu_us_per_token`, `engine_cpu_us_per_token`).

Results are appended to `--state` after every run (a machine can be taken back mid-call) and
the table is printed from whatever the state holds, so later calls add repetitions or
concurrencies to the same table.

    python3 benchmarks/gpu/serve_bench.py --tokenizer DIR --state /root/sb/state.json --out $OUT \\
        --target vllm http://127.0.0.1:8101 r1 --target bf http://127.0.0.1:8102 r1 \\
        --concurrency 256 --reps 3 --runs vllm:none vllm:native bf:none bf:min bf:max bf:worst
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serve_summary import headline, summarise  # beside this script (run as a file)

CLOSE = 151649  # `</think>` in the R1-Distill tokenizer (--close-token for another)
MIN, MAX = 600, 64
WORST = {"logit_bias": {str(CLOSE): 7}, "min_thinking_tokens": 600, "max_thinking_tokens": 900}
METRICS = ("budgetforce_budgeted_choices_total", "budgetforce_waits_inserted_total", "budgetforce_forced_ends_total",
           "budgetforce_thinking_tokens_total", "budgetforce_unenforced_choices_total")


def body(config: str, bias: float) -> dict[str, Any]:
    """The request fields of one config (added to every request as `--extra-body`)."""
    b = {"logit_bias": {str(CLOSE): bias}}
    return {
        "none": b,
        "min": {**b, "min_thinking_tokens": MIN},
        "max": {**b, "max_thinking_tokens": MAX},
        "native": {**b, "thinking_token_budget": MAX},
        "worst": WORST,
    }[config]


def scrape(url: str) -> dict[str, float]:
    """budgetforce's counters on the target's /metrics, summed over labels (empty for plain vLLM)."""
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(budgetforce_\w+?)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) in METRICS:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def server_cpu(url: str) -> dict[str, float]:
    """CPU seconds so far of the server behind `url`: {"api": the processes listening on its port,
    "engine": the rest of their process tree}; empty when they cannot be read (another host, no psutil)."""
    try:
        import psutil
    except ImportError:
        return {}
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        listeners = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                     and c.status == psutil.CONN_LISTEN and c.pid}  # fmt: skip
    except (psutil.Error, OSError):
        return {}
    if not listeners:
        return {}
    out = {"api": 0.0, "engine": 0.0}
    seen: set[int] = set()
    for pid in listeners:
        try:
            proc = psutil.Process(pid)
            tree = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for q in tree:
            if q.pid in seen:
                continue
            seen.add(q.pid)
            try:
                t = q.cpu_times()
            except psutil.Error:
                continue
            out["api" if q.pid in listeners else "engine"] += t.user + t.system
    return out


def post(url: str, payload: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(payload).encode(),
                                 {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())


def mean_waits(url: str, model: str, bias: float, n: int, tokens: int) -> float:
    """Mean `waits_inserted` of `n` seeded min-budget chats at once (one request, n choices would be unreported)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        r = post(url, {"model": model, "messages": [{"role": "user", "content": f"Question {i}: how many primes below {50 + i}?"}],
                       "max_completion_tokens": tokens, "ignore_eos": True, "temperature": 0.6, "seed": i,
                       **body("min", bias)})
        return int(r["choices"][0]["budget"]["waits_inserted"] or 0)

    with ThreadPoolExecutor(n) as pool:
        return statistics.mean(pool.map(one, range(n)))


def preflight(url: str, model: str, extra: dict[str, Any], tokens: int) -> str | None:
    """One short request with the config's fields: the server's refusal, if any, said before a run of them."""
    try:
        post(url, {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": tokens,
                   "ignore_eos": True, "seed": 0, **extra})
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}"
    except OSError as e:
        return repr(e)
    return None


def calibrate(url: str, model: str, tokens: int, lo: float = -8.0, hi: float = 8.0) -> tuple[float, list[list[float]]]:
    """Bisect the `</think>` bias until the min budget forces 2-4 waits per request (mean of 16)."""
    trace: list[list[float]] = []
    bias = 4.0
    for _ in range(6):
        w = mean_waits(url, model, bias, 16, tokens)
        trace.append([bias, w])
        print(f"calibrate: bias {bias:.2f} -> {w:.2f} waits/request", flush=True)
        if 2.0 <= w <= 4.0:
            return bias, trace
        lo, hi = (bias, hi) if w < 2.0 else (lo, bias)
        bias = (lo + hi) / 2
    best = min(trace, key=lambda t: abs(t[1] - 3.0))
    return best[0], trace


class Runner:
    """`vllm bench serve`, in-process: the parser built once, `main(args)` per run."""

    def __init__(self, tokenizer: str, input_len: int, output_len: int, result_dir: Path) -> None:
        from vllm.benchmarks.serve import add_cli_args, main

        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:  # older vLLM
            from vllm.utils import FlexibleArgumentParser  # type: ignore[attr-defined,no-redef]

        self.main, self.tokenizer, self.input_len, self.output_len, self.dir = main, tokenizer, input_len, output_len, result_dir
        self.parser = FlexibleArgumentParser()
        add_cli_args(self.parser)

    def argv(self, url: str, model: str, concurrency: int, prompts: int, extra: dict[str, Any], name: str, seed: int) -> list[str]:
        return ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", url, "--model", model,
                "--tokenizer", self.tokenizer, "--dataset-name", "random", "--random-input-len", str(self.input_len),
                "--random-output-len", str(self.output_len), "--ignore-eos", "--num-prompts", str(prompts),
                "--max-concurrency", str(concurrency), "--temperature", "0.6", "--seed", str(seed),
                "--extra-body", json.dumps(extra), "--save-result", "--result-dir", str(self.dir),
                "--result-filename", f"{name}.json", "--disable-tqdm",
                "--ready-check-timeout-sec", "0"]  # no test request per run: the servers are up

    def __call__(self, argv: list[str]) -> dict[str, Any]:
        return self.main(self.parser.parse_args(argv))


def py_spy(pids: dict[str, int], seconds: int, out: Path) -> list[subprocess.Popen[bytes]]:
    """Sample each named process (collapsed stacks, `py-spy record -f raw`) while a run goes on."""
    exe = shutil.which("py-spy") or "py-spy"
    return [subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "50", "--nonblocking",
                              "-f", "raw", "-o", str(out / f"{name}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for name, pid in pids.items()]


def record(state: dict[str, Any], key: str, res: dict[str, Any], before: dict[str, float], after: dict[str, float],
           meta: dict[str, Any], cpu: tuple[dict[str, float], dict[str, float]] = ({}, {})) -> dict[str, Any]:
    tokens = res.get("total_output_tokens") or 0
    per_token = {f"{part}_cpu_us_per_token": (cpu[1][part] - cpu[0][part]) / tokens * 1e6
                 if tokens and part in cpu[0] and part in cpu[1] else None for part in ("api", "engine")}  # fmt: skip
    delta = {k.removeprefix("budgetforce_").removesuffix("_total"): after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}
    choices = delta["budgeted_choices"]
    row = {
        **meta, "key": key,
        "output_throughput": res.get("output_throughput"), "total_token_throughput": res.get("total_token_throughput"),
        "completed": res.get("completed"), "failed": res.get("failed", 0), "duration_s": res.get("duration"),
        "median_ttft_ms": res.get("median_ttft_ms"), "p99_ttft_ms": res.get("p99_ttft_ms"),
        "median_itl_ms": res.get("median_itl_ms"), "p99_itl_ms": res.get("p99_itl_ms"), "median_tpot_ms": res.get("median_tpot_ms"),
        "budgeted_choices": choices,
        "waits_per_choice": delta["waits_inserted"] / choices if choices else None,
        "thinking_per_choice": delta["thinking_tokens"] / choices if choices else None,
        "forced_end_share": delta["forced_ends"] / choices if choices else None,
        "unenforced": delta["unenforced_choices"],
        "output_tokens": tokens,
        **per_token,
    }
    state["runs"].append(row)
    return row


def table(state: dict[str, Any]) -> str:
    """Medians per (concurrency, target:config) with their ratios: the table `serve_summary.py` makes for the README."""
    return headline(summarise(state))


def main() -> None:
    global CLOSE, WORST
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", nargs=3, action="append", metavar=("NAME", "URL", "MODEL"), required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--state", type=Path, required=True, help="JSON the runs accumulate in (kept across calls)")
    ap.add_argument("--out", type=Path, required=True, help="where the state, the table and the raw results are copied")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[256])
    ap.add_argument("--prompts-per-slot", type=float, default=1.0, help="prompts = max(2, this x concurrency)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", nargs="+", required=True, help="TARGET:CONFIG pairs, interleaved in this order; TARGET:CONFIG@256/32: at those concurrencies only")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--bias", type=float, default=None, help="the </think> bias; default: calibrated on --calibrate-on")
    ap.add_argument("--calibrate-on", default="bf", help="target whose min budget calibrates the bias")
    ap.add_argument("--deadline-s", type=float, default=1e9, help="start no run that would end after this many seconds")
    ap.add_argument("--profile", nargs="*", default=[], metavar="TARGET:CONFIG:CONC:NAME=PID,...",
                    help="after the timed runs, one extra run per entry with py-spy on the given processes")
    ap.add_argument("--close-token", type=int, default=CLOSE, help="the token id of `</think>`")
    ap.add_argument("--meta", default="{}")
    a = ap.parse_args()
    CLOSE = a.close_token
    WORST = {**WORST, "logit_bias": {str(CLOSE): 7}}
    t_start = time.time()
    targets = {n: (u, m) for n, u, m in a.target}
    raw = a.out / "serve-bench-raw"
    raw.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = json.loads(a.state.read_text()) if a.state.exists() else {"runs": [], "meta": json.loads(a.meta)}

    def save() -> None:
        a.state.parent.mkdir(parents=True, exist_ok=True)
        a.state.write_text(json.dumps(state, indent=1))
        shutil.copy(a.state, a.out / "serve_bench.json")
        (a.out / "serve_bench.md").write_text(table(state) + "\n")

    if a.bias is not None:
        state["bias"] = a.bias
    if "bias" not in state:
        url, model = targets[a.calibrate_on]
        state["bias"], state["calibration"] = calibrate(url, model, a.output_len)
        save()
    bias = state["bias"]
    runner = Runner(a.tokenizer, a.input_len, a.output_len, raw)
    last: dict[str, float] = {}  # seconds the last run of a pair took, to keep inside the deadline
    refused: dict[str, str | None] = {}

    def one(key: str, c: int, rep: int, profiled: bool = False) -> dict[str, Any] | None:
        name, config = key.split(":")
        if name not in targets:  # a server that did not start (serve_bench.sh leaves it out)
            return None
        url, model = targets[name]
        # a pair not yet run this call: as long as the slowest run at this concurrency so far
        need = last.get(f"{key}@{c}", max((v for k, v in last.items() if k.endswith(f"@{c}")), default=0.0))
        if time.time() - t_start + need > a.deadline_s:
            print(f"deadline: {key} c={c} rep {rep} not started", flush=True)
            return None
        if key not in refused:
            refused[key] = preflight(url, model, body(config, bias), a.output_len)
            if refused[key]:
                print(f"{key}: refused, not run: {refused[key]}", flush=True)
                state.setdefault("refused", {})[key] = refused[key]
                save()
        if refused[key]:
            return None
        prompts = max(2, int(a.prompts_per_slot * c))
        tag = f"c{c}-{name}-{config}-r{rep}{'-prof' if profiled else ''}"
        before, cpu_before = scrape(url), server_cpu(url)
        t = time.time()
        try:
            res = runner(runner.argv(url, model, c, prompts, body(config, bias), tag, 1000 * rep + c))
        except Exception as e:  # one failed run is recorded and the rest go on
            res = {"error": repr(e)}
            print(f"{tag}: {e!r}", flush=True)
        last[f"{key}@{c}"] = time.time() - t
        cpu = (cpu_before, server_cpu(url))
        row = record(state, key, res, before, scrape(url),
                     {"concurrency": c, "rep": rep, "prompts": prompts, "profiled": profiled, "error": res.get("error")}, cpu)
        save()
        w = row["waits_per_choice"]
        print(f"{tag}: {row['output_throughput'] or 0:,.0f} tok/s, TTFT p50 {row['median_ttft_ms'] or 0:,.0f} ms, "
              f"ITL p50 {row['median_itl_ms'] or 0:.2f} ms, waits/req {'-' if w is None else f'{w:.2f}'}, "
              f"API CPU {row['api_cpu_us_per_token'] or 0:.1f} µs/tok, failed {row['failed']}, {last[f'{key}@{c}']:.0f} s",
              flush=True)
        return row

    done = {(r["concurrency"], r["key"], r["rep"]) for r in state["runs"] if not r.get("profiled") and r.get("completed")}
    profiled = {(r["concurrency"], r["key"]) for r in state["runs"] if r.get("profiled") and r.get("completed")}

    def profile(c: int) -> None:
        """The profiled runs at this concurrency, right after its repetitions: a deadline cuts the lower ones, not these."""
        for spec in a.profile:  # TARGET:CONFIG:CONC:name=pid,name=pid
            target, config, conc_text, procs = spec.split(":", 3)
            key = f"{target}:{config}"
            if int(conc_text) != c or (c, key) in profiled:
                continue
            pids = {k: int(v) for k, v in (p.split("=") for p in procs.split(",")) if v.strip().isdigit()}
            prof = a.out / "profiles" / f"{key.replace(':', '-')}-c{c}"
            prof.mkdir(parents=True, exist_ok=True)
            spies = py_spy(pids, 20, prof)
            one(key, c, 0, profiled=True)
            for spy in spies:
                spy.wait(timeout=60)

    for c in a.concurrency:
        for rep in range(a.reps):
            for spec in a.runs:  # TARGET:CONFIG, or TARGET:CONFIG@C1/C2 for some concurrencies only
                key, _, only = spec.partition("@")
                if (c, key, rep) not in done and (not only or str(c) in only.split("/")):
                    one(key, c, rep)
        profile(c)
    print(f"\nbias on </think>: {bias} ({state.get('calibration')})\n" + table(state), flush=True)


if __name__ == "__main__":
    main()
