"""`summary.json` and two plots from the HTTP benchmark's runs (`serve_bench.json`, benchmarks/gpu/serve_bench.py).

For each concurrency and target:config, the medians over its repetitions of output tok/s, TTFT
p50/p99, ITL p50/p99, waits per request and the API server's CPU per token, with the ratios against
plain `vllm serve` (`vllm:none`) and against the same server without a budget; the README's headline
table (`headline.md`); a throughput-vs-concurrency plot and an overhead plot.

    python3 benchmarks/gpu/serve_summary.py benchmarks/results/<date>-h200/serve_bench.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

FIELDS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms", "waits_per_choice",
          "forced_end_share", "thinking_per_choice", "api_cpu_us_per_token", "engine_cpu_us_per_token")


def summarise(state: dict[str, Any]) -> dict[str, Any]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in state["runs"]:
        if not r.get("profiled") and r.get("completed"):
            groups.setdefault((r["concurrency"], r["key"]), []).append(r)
    rows = []
    for (c, key), runs in sorted(groups.items()):
        row: dict[str, Any] = {"concurrency": c, "config": key, "runs": len(runs),
                               "failed": sum(int(r.get("failed") or 0) for r in runs)}
        for f in FIELDS:
            vals = [r[f] for r in runs if r.get(f) is not None]
            row[f] = statistics.median(vals) if vals else None
        rows.append(row)
    by = {(r["concurrency"], r["config"]): r for r in rows}
    for r in rows:
        base = by.get((r["concurrency"], "vllm:none"), {}).get("output_throughput")
        own = by.get((r["concurrency"], r["config"].split(":")[0] + ":none"), {}).get("output_throughput")
        tp = r["output_throughput"]
        r["vs_vllm_none"] = tp / base if tp and base else None
        r["vs_own_none"] = tp / own if tp and own else None
    return {"meta": state.get("meta", {}), "bias": state.get("bias"), "refused": state.get("refused", {}), "rows": rows}


def plot(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({r["config"] for r in rows}):
        pts = sorted((r["concurrency"], r["output_throughput"]) for r in rows if r["config"] == key and r["output_throughput"])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set(xscale="log", xlabel="concurrency", ylabel="output tok/s (median)", title="vllm serve vs budgetforce serve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = [(f"{r['config']}@{r['concurrency']}", r["vs_own_none"]) for r in rows if r["vs_own_none"] and not r["config"].endswith(":none")]
    if bars:
        ax.barh(*zip(*bars))
        ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xlabel="output tok/s / the same server without a budget", title="what a budget costs over HTTP")
    fig.tight_layout()
    fig.savefig(out / "overhead.png", dpi=120)


def headline(summary: dict[str, Any]) -> str:
    """The README's headline table: one row per concurrency and target:config, from `summary.json`."""

    def f(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    lines = ["| conc | target:config | runs | out tok/s | vs vllm:none | vs own none | TTFT p50 ms | ITL p50 ms "
             "| waits/req | forced end | API CPU µs/tok |", "|" + "---|" * 11]  # fmt: skip
    for r in sorted(summary["rows"], key=lambda r: (-r["concurrency"], r["config"])):
        lines.append(f"| {r['concurrency']} | {r['config']} | {r['runs']} | {f(r['output_throughput'], ',.0f')} "
                     f"| {f(r['vs_vllm_none'], '.3f')} | {f(r['vs_own_none'], '.3f')} | {f(r['median_ttft_ms'], ',.0f')} "
                     f"| {f(r['median_itl_ms'], '.2f')} | {f(r['waits_per_choice'], '.2f')} | {f(r['forced_end_share'], '.2f')} "
                     f"| {f(r.get('api_cpu_us_per_token'), '.1f')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    src = Path(sys.argv[1])
    summary = summarise(json.loads(src.read_text()))
    (src.parent / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (src.parent / "headline.md").write_text(headline(summary))
    plot(summary, src.parent)
    for r in summary["rows"]:
        print(f"c={r['concurrency']:<4} {r['config']:<14} {r['output_throughput'] or 0:>9,.0f} tok/s  "
              f"vs vllm {r['vs_vllm_none'] or 0:.3f}  vs own none {r['vs_own_none'] or 0:.3f}  waits {r['waits_per_choice']}")


if __name__ == "__main__":
    main()
