"""The sweep's report: per point accuracy and thinking tokens, per series s1's three metrics
(Control, Scaling, Performance), a markdown table and one plot of accuracy vs thinking tokens."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from budgetforce.bench.types import EvalResult, BudgetSettings

SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"
PLOT_FILE = "accuracy_vs_thinking.png"


# The modes' per-point metrics: (summary key, the sample key it is the mean of, table header, a share?).
MODE_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("mean_scheduled_waits", "scheduled_waits", "sched waits", False),
    ("intervened_rate", "intervened", "intervened %", True),
    ("early_exit_rate", "early_exit", "early exit %", True),
    ("mean_probes", "probes", "probes", False),
    ("mean_probe_tokens", "probe_tokens", "probe tok", False),
    ("mean_answer_tokens", "answer_tokens", "answer tok", False),
    ("answer_truncated_rate", "answer_truncated", "answer cut %", True),
    ("mean_exit_tokens_saved", "exit_tokens_saved", "exit saved tok", False),
    ("mean_vote_share", "vote_share", "vote share %", True),
)


def mode_columns(summary: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(summary key, header, share?) of the modes' metrics that some point of `summary` has."""
    return [
        (key, header, share)
        for key, _, header, share in MODE_METRICS
        if any(e.get(key) is not None for e in summary["points"])
    ]


def aggregate(rows: Sequence[dict[str, Any]], point: BudgetSettings) -> EvalResult:
    """Reduce one point's rows: accuracy over graded samples, token stats, the Control fraction,
    and the means of the modes' report keys (None where no sample reports one)."""
    graded = [r for r in rows if r.get("error") is None and r.get("score") is not None]
    tokens = [r["thinking_tokens"] for r in graded if r.get("thinking_tokens") is not None]
    waits = [r["waits_inserted"] for r in graded if r.get("waits_inserted") is not None]
    forced = [float(r["forced_end"]) for r in graded if r.get("forced_end") is not None]
    within = [float(r["within_budget"]) for r in graded if r.get("within_budget") is not None]
    score = statistics.fmean(r["score"] for r in graded) if graded else None
    modes: dict[str, float | None] = {}
    for key, sample_key_, _, _ in MODE_METRICS:
        values = [float(r[sample_key_]) for r in graded if r.get(sample_key_) is not None]
        modes[key] = statistics.fmean(values) if values else None
    return EvalResult(
        score=score,
        metrics={
            "n": float(len(graded)),
            "errors": float(len(rows) - len(graded)),
            "accuracy": score,
            "mean_thinking_tokens": statistics.fmean(tokens) if tokens else None,
            "median_thinking_tokens": statistics.median(tokens) if tokens else None,
            "mean_waits": statistics.fmean(waits) if waits else None,
            "forced_end_rate": statistics.fmean(forced) if forced else None,
            "control": None if not point.has_s1_budget or not within else statistics.fmean(within),
            "within_n": float(len(within)),
            "mean_latency_s": statistics.fmean(r["latency_s"] for r in graded) if graded else None,
            **modes,
        },
    )


def scaling(points: Sequence[tuple[float, float]]) -> float | None:
    """s1's Scaling: the mean over pairs a < b of (acc(b) - acc(a)) / (tokens(b) - tokens(a)).

    `points` are (mean thinking tokens, accuracy) pairs; pairs with equal token counts carry no
    slope and are skipped. Returns accuracy points (%) per 1000 thinking tokens, or None when
    fewer than two distinct token counts exist.

    >>> round(scaling([(1000, 0.5), (2000, 0.6)]), 9)  # +10 points for 1000 more tokens
    10.0
    """
    ordered = sorted(points)
    slopes = [
        (acc_b - acc_a) * 100 / ((tok_b - tok_a) / 1000)
        for (tok_a, acc_a), (tok_b, acc_b) in itertools.combinations(ordered, 2)
        if tok_b != tok_a
    ]
    return statistics.fmean(slopes) if slopes else None


def point_modes(point: BudgetSettings) -> list[str]:
    """The point's thinking modes beyond s1, and `vote` for a voting point."""
    return [*point.modes, *(["vote"] if point.votes else [])]


def series_name(point: BudgetSettings) -> str:
    """Points that share strategy and wait strings form one series (one line in the plot); points
    of the modes beyond s1 form series by their modes (`mode:nowait`, `mode:early_exit`, ...)."""
    modes = point_modes(point)
    parts = [
        "mode:" + "+".join(modes) if modes else "",
        f"strategy={point.strategy}" if point.strategy else "",
        "wait=" + "|".join(point.wait_strings) if point.wait_strings else "",
    ]
    return ",".join(p for p in parts if p) or "default"


def summarize(rows: Sequence[dict[str, Any]], points: Sequence[BudgetSettings]) -> dict[str, Any]:
    """Per-point table plus s1's Control / Scaling / Performance per series and over all points."""
    by_point: dict[str, list[dict[str, Any]]] = {p.label: [] for p in points}
    for row in rows:
        by_point.setdefault(row["point"], []).append(row)
    table = []
    for point in points:
        result = aggregate(by_point[point.label], point)
        table.append(
            {
                "point": point.label,
                "series": "baseline" if point.is_baseline else series_name(point),
                "mode": point_modes(point),
                **result.metrics,
            }
        )

    def s1_metrics(entries: list[dict[str, Any]]) -> dict[str, Any]:
        within_n = sum(e["within_n"] for e in entries)
        control = (
            sum(e["control"] * e["within_n"] for e in entries if e["control"] is not None) / within_n
            if within_n
            else None
        )
        curve = [
            (e["mean_thinking_tokens"], e["accuracy"])
            for e in entries
            if e["mean_thinking_tokens"] is not None and e["accuracy"] is not None
        ]
        accuracies = [e["accuracy"] for e in entries if e["accuracy"] is not None]
        return {
            "points": len(entries),
            "control": control,
            "scaling_pct_per_1k_tokens": scaling(curve),
            "performance": max(accuracies) if accuracies else None,
        }

    budgeted = [e for e in table if e["series"] != "baseline"]
    series = {
        name: s1_metrics([e for e in budgeted if e["series"] == name])
        for name in dict.fromkeys(e["series"] for e in budgeted)
    }
    s1_points = [e for e in budgeted if not e["mode"]]
    shown = series if len(series) > 1 or len(s1_points) < len(budgeted) else {}  # a mode series always shows
    return {"points": table, "s1": {"all": s1_metrics(s1_points), **shown}}


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown: one row per point, then the s1 metrics."""

    def fmt(value: Any, pct: bool = False) -> str:
        if value is None:
            return "-"
        if pct:
            return f"{100 * value:.1f}"
        return (
            f"{value:.0f}"
            if isinstance(value, float) and value.is_integer()
            else f"{value:.3g}"
            if isinstance(value, float)
            else str(value)
        )

    extra = mode_columns(summary)
    headers = "".join(f" {header} |" for _, header, _ in extra)
    lines = [
        "| point | n | errors | accuracy % | mean think | median think | mean waits | forced end % | control % |"
        + headers,
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for e in summary["points"]:
        cells = "".join(f" {fmt(e.get(key), share)} |" for key, _, share in extra)
        point = e["point"].replace("|", "\\|")  # a wait-string or banned-string separator, not a column
        lines.append(
            f"| {point} | {fmt(e['n'])} | {fmt(e['errors'])} | {fmt(e['accuracy'], True)} | "
            f"{fmt(e['mean_thinking_tokens'])} | {fmt(e['median_thinking_tokens'])} | {fmt(e['mean_waits'])} | "
            f"{fmt(e['forced_end_rate'], True)} | {fmt(e['control'], True)} |" + cells
        )
    lines += [
        "",
        "| series | points | Control % | Scaling (pp / 1k thinking tokens) | Performance % |",
        "|---|---|---|---|---|",
    ]
    for name, m in summary["s1"].items():
        scaling_ = fmt(m["scaling_pct_per_1k_tokens"])
        name = name.replace("|", "\\|")
        lines.append(
            f"| {name} | {m['points']} | {fmt(m['control'], True)} | {scaling_} | {fmt(m['performance'], True)} |"
        )
    return "\n".join(lines) + "\n"


MODE_MARKERS = ("s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "d", "H")
MODE_COLOURS = ("C3", "C2", "C4", "C1", "C6", "C5", "C9", "C7")  # C0 is s1's first line; no pale yellow
PLOT_LABEL_CHARS = 48


def short(text: str, limit: int = PLOT_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy (%) vs mean thinking tokens: one line per s1 series, baseline as a star, and each
    point of a mode beyond s1 as its own marker (one colour per mode), annotated with its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    annotated: set[tuple[float, float, str]] = set()
    texts: list[Any] = []  # every annotation, so that a mode point's label avoids them
    all_ys: list[float] = []
    plotted = [e for e in summary["points"] if e["mean_thinking_tokens"] is not None and e["accuracy"] is not None]
    # s1's series and the vote's (n = 2, 4, 8 … without other modes) are lines; the other modes' points markers
    lines = [e for e in summary["points"] if not e.get("mode") or e.get("mode") == ["vote"]]
    mode_entries = [e for e in plotted if e.get("mode") and e.get("mode") != ["vote"]]
    for name in dict.fromkeys(e["series"] for e in lines):
        entries = sorted((e for e in plotted if e["series"] == name), key=lambda e: e["mean_thinking_tokens"])
        if not entries:
            continue
        xs = [e["mean_thinking_tokens"] for e in entries]
        ys = [100 * e["accuracy"] for e in entries]
        all_ys += ys
        if name == "baseline":
            ax.scatter(xs, ys, marker="*", s=160, color="black", label="no budget", zorder=3)
            continue
        if name == "mode:vote":
            ax.plot(xs, ys, marker="s", linestyle="--", color="C8", label="majority vote over n thinkings")
        else:
            ax.plot(xs, ys, marker="o", label=f"s1: {name}" if mode_entries else name)
        for x, y, e in zip(xs, ys, entries):
            text = ",".join(p for p in e["point"].split(",") if not p.startswith(("wait=", "strategy=")))
            if (x, y, text) not in annotated:  # series that share a budget share its label
                annotated.add((x, y, text))
                texts.append(ax.annotate(text, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4)))
    families = dict.fromkeys(e["series"] for e in mode_entries)
    colours = {name: MODE_COLOURS[i % len(MODE_COLOURS)] for i, name in enumerate(families)}
    x_mid = (
        statistics.fmean(
            [min(e["mean_thinking_tokens"] for e in plotted), max(e["mean_thinking_tokens"] for e in plotted)]
        )
        if plotted
        else 0
    )
    for i, e in enumerate(mode_entries):
        x, y = e["mean_thinking_tokens"], 100 * e["accuracy"]
        all_ys.append(y)
        marker = MODE_MARKERS[i % len(MODE_MARKERS)]
        ax.scatter(
            [x], [y], marker=marker, s=70, color=colours[e["series"]], edgecolors="black", linewidths=0.6,
            label=short(e["point"]), zorder=4,
        )  # fmt: skip
    mode_labels = []
    for e in mode_entries:
        x, y = e["mean_thinking_tokens"], 100 * e["accuracy"]
        right = x > x_mid  # labels of the right half go to the left of their marker, inside the axes
        text = ax.annotate(
            short(e["point"], 32), (x, y), fontsize=7, textcoords="offset points", xytext=(-6 if right else 6, -11),
            ha="right" if right else "left", color="0.2",
        )  # fmt: skip
        mode_labels.append((text, -6 if right else 6))
    if all_ys and max(all_ys) - min(all_ys) < 10:  # keep flat curves readable: at least 10 points of range
        middle = (max(all_ys) + min(all_ys)) / 2
        low = min(max(middle - 5, 0), 90)
        ax.set_ylim(low - 1, low + 11)
    ax.set_xlabel("mean thinking tokens per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if mode_entries:  # many labels: the legend goes beside the axes
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if mode_labels:  # mode points often sit close together: move a label that would cover another
        renderer = fig.canvas.get_renderer()
        for text, dx in mode_labels:
            for dy in (-11, 6, -21, 16, -31, 26, -41, 36):
                text.xyann = (dx, dy)
                box = text.get_window_extent(renderer)
                if not any(box.overlaps(other.get_window_extent(renderer)) for other in texts):
                    break
            texts.append(text)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_reports(summary: dict[str, Any], out_dir: Path, title: str) -> dict[str, Path]:
    paths = {"summary": out_dir / SUMMARY_FILE, "table": out_dir / TABLE_FILE, "plot": out_dir / PLOT_FILE}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    paths["table"].write_text(markdown_table(summary))
    plot(summary, paths["plot"], title)
    return paths
