"""One table and one plot of every point measured on the bundled student at a 1024-token cap:
natural stop, s1's minimum/maximum points, every mode (`cap1024/`), the logit-margin exit
(`margin-vote/margin/`) and the vote beside s1's forced waits (`margin-vote/vote/`).

Usage: python benchmarks/results/student-modes/combine.py   (writes `all/`)
Points of the same label were measured more than once (same request, same seeds); the first run's
row is kept, the runs' own summaries hold the others.
"""

from __future__ import annotations

import json
from pathlib import Path

from budgetforce.bench.reporting import markdown_table, plot

HERE = Path(__file__).parent
RUNS = ["cap1024", "margin-vote/margin", "margin-vote/vote"]


def main() -> None:
    points: dict[str, dict] = {}
    for run in RUNS:
        for entry in json.loads((HERE / run / "summary.json").read_text())["points"]:
            points.setdefault(entry["point"], {**entry, "run": run})
    summary = {"points": list(points.values()), "s1": {}, "runs": RUNS}
    out = HERE / "all"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_table(summary) + "\n")
    plot(summary, out / "accuracy_vs_thinking.png", "bundled student, 500 problems, temperature 0.6: every mode")
    print(f"{len(points)} points -> {out}")


if __name__ == "__main__":
    main()
