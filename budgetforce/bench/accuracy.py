"""Accuracy vs thinking budget: the s1 sweep, resumable, against any OpenAI-compatible endpoint.

Every finished sample is appended to `samples.jsonl` at once (request and response verbatim), so
a crash loses only the samples in flight; a rerun with the same `--out` skips every key
(point, example, repeat) that already has an error-free line and retries the rest.

The summary reports, per sweep point, accuracy and the thinking-token distribution, and per
series (points sharing strategy and wait strings) the three metrics of s1 (Muennighoff et al.,
https://arxiv.org/abs/2501.19393, section 3.2):

- Control: the fraction of budgeted samples whose thinking tokens lie within [min, max].
- Scaling: the mean pairwise slope of accuracy vs mean thinking tokens over the series' points,
  here in accuracy points (%) per 1000 thinking tokens, so it reads "what a thousand tokens buy".
- Performance: the best accuracy over the series' points.

Points of the thinking modes beyond s1 (given with `--point`: banned strings, interventions,
answer budgets, scheduled waits, answer probes) form series of their own, named by their modes;
the "all" row of the s1 metrics is over s1's points only. Where the server reports the modes'
keys (`scheduled_waits`, `early_exit`, `probes`, ...), the per-point table gains their means.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from tqdm import tqdm

from budgetforce.bench.types import (
    MODE_REPORT_KEYS,
    Backend,
    BenchError,
    BudgetSettings,
    Eval,
    EvalResult,
    Example,
    SamplerBase,
    SamplerResponse,
    SingleEvalResult,
)
from budgetforce.core.budget import Strategy

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "summary.md"
PLOT_FILE = "accuracy_vs_thinking.png"


# --- sweep specification -------------------------------------------------------------------


def parse_int_list(spec: str | None, option: str, example: str = "512,1024") -> list[int]:
    """ "512,1024" -> [512, 1024]; a readable BenchError for anything else."""
    if not spec:
        return []
    values = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            raise BenchError(f"`{option}` expects comma-separated non-negative integers like {example}; got {spec!r}")
        values.append(int(part))
    return values


def parse_pairs(spec: str | None, option: str) -> list[tuple[int, int]]:
    """ "256:512,512:1024" -> [(256, 512), (512, 1024)]."""
    if not spec:
        return []
    pairs = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition(":")
        if not (sep and lo.isdigit() and hi.isdigit()):
            raise BenchError(f"`{option}` expects comma-separated MIN:MAX pairs like 256:512,512:1024; got {spec!r}")
        if int(lo) > int(hi):
            raise BenchError(f"`{option}`: minimum {lo} exceeds maximum {hi} in {part.strip()!r}")
        pairs.append((int(lo), int(hi)))
    return pairs


POINT_ALIASES = {"budget_strategy": "strategy"}  # the request's name for the strategy


def parse_point(spec: str, option: str = "--point") -> BudgetSettings:
    """One budget point from a JSON object of budget fields (s1's and the modes'); a readable
    BenchError for bad JSON, an unknown field or a bad value.

    >>> parse_point('{"probe_every": 16, "probe_agree": 2, "max_thinking_tokens": 256}').label
    'max=256,probe=16x2'
    """
    try:
        fields = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise BenchError(f"`{option}` is not JSON ({exc.msg} at character {exc.pos}): {spec!r}") from exc
    if not isinstance(fields, dict):
        raise BenchError(f"`{option}` must be a JSON object of budget fields, like '{{\"max_thinking_tokens\": 512}}'")
    known = list(BudgetSettings.model_fields)
    for alias, name in POINT_ALIASES.items():
        if alias in fields:
            if name in fields:
                raise BenchError(f"`{option}` sets both `{alias}` and `{name}`; give one")
            fields[name] = fields.pop(alias)
    unknown = [name for name in fields if name not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, [*known, *POINT_ALIASES], n=1)
            hints.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
        raise BenchError(f"`{option}`: unknown field {', '.join(hints)}; known fields: {', '.join(known)}")
    try:
        return BudgetSettings(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].replace("a valid tuple", "a list (a JSON array)")
        raise BenchError(f"`{option}` {spec}: " + (f"`{where}`: " if where else "") + message) from exc


class SweepSpec(BaseModel):
    """Which budgets to run: each list adds points; strategies and wait strings multiply them.

    A "waits" point forbids ending the thinking before `waits_min` tokens (default: `waits_max`,
    else one below the completion cap) but inserts at most N waits, which is s1's "suppress the
    end of thinking N times" extrapolation. `extra` points (the CLI's `--point`) come last, as
    given: they are not crossed with wait strings, strategies or the answer prefix.
    """

    baseline: bool = False
    max_only: list[int] = Field(default_factory=list)
    min_only: list[int] = Field(default_factory=list)
    min_max: list[tuple[int, int]] = Field(default_factory=list)
    waits: list[int] = Field(default_factory=list)
    waits_min: int | None = Field(default=None, ge=1)
    waits_max: int | None = Field(default=None, ge=1)
    wait_strings: list[str] = Field(default_factory=list)
    strategies: list[Strategy] = Field(default_factory=list)
    answer_prefix: str | None = None
    extra: list[BudgetSettings] = Field(default_factory=list)

    def points(self, max_tokens: int) -> list[BudgetSettings]:
        """The sweep's budgets in a stable order (baseline, max, min, min:max, waits, extra)."""
        plain: list[BudgetSettings] = [BudgetSettings(max_thinking_tokens=hi) for hi in self.max_only]
        forcing: list[dict[str, Any]] = [{"min_thinking_tokens": lo} for lo in self.min_only]
        forcing += [{"min_thinking_tokens": lo, "max_thinking_tokens": hi} for lo, hi in self.min_max]
        waits_min = self.waits_min or self.waits_max or max(max_tokens - 1, 1)  # servers want min < cap
        forcing += [
            {"min_thinking_tokens": waits_min, "max_thinking_tokens": self.waits_max, "max_waits": n}
            for n in self.waits
        ]
        variants = [(s,) for s in self.wait_strings] or [None]
        points = [BudgetSettings()] if self.baseline else []
        try:
            points += plain
            points += [BudgetSettings(**fields, wait_strings=w) for fields in forcing for w in variants]
        except ValidationError as exc:
            raise BenchError(f"invalid sweep point: {exc.errors()[0]['msg']}") from exc
        if self.answer_prefix is not None or self.strategies:
            points = [
                p if p.is_baseline else p.model_copy(update={"answer_prefix": self.answer_prefix, "strategy": s})
                for p in points
                for s in (self.strategies or [None])
            ]
        unique = list(dict.fromkeys([*points, *self.extra]))
        if not unique:
            raise BenchError(
                "empty sweep: give at least one of --max, --min, --min-max, --waits, --point or --baseline"
            )
        check_labels(unique)
        return unique


def check_labels(points: Sequence[BudgetSettings]) -> None:
    """Labels are resume keys: two different points must never share one."""
    seen: dict[str, BudgetSettings] = {}
    for point in points:
        other = seen.setdefault(point.label, point)
        if other != point:
            raise BenchError(
                f"two different points share the label {point.label!r}: "
                f"{other.model_dump(exclude_none=True)} and {point.model_dump(exclude_none=True)}"
            )


# --- running -------------------------------------------------------------------------------


class RunConfig(BaseModel):
    """What must match for a rerun to resume an output directory instead of mixing runs."""

    eval: str
    model: str
    backend: Backend
    max_tokens: int
    temperature: float
    top_p: float | None = None
    seed: int | None = None
    prompt_template: str


def sample_key(point: BudgetSettings, example: Example, repeat: int) -> str:
    return f"{point.label}|{example.id}|{repeat}"


def read_samples(path: Path) -> list[dict[str, Any]]:
    """All well-formed lines of a samples file; a line cut off by a crash is skipped."""
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s line %d is incomplete (interrupted write); it will be redone", path, number)
    return rows


def latest_by_key(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last line per key: a retried error is superseded by its retry."""
    return {row["key"]: row for row in rows}


def check_run_config(out_dir: Path, config: RunConfig) -> None:
    """Refuse to resume into a directory written by a different configuration."""
    path = out_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        diffs = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in config.model_dump().items() if previous.get(k) != v]
        if diffs:
            raise BenchError(
                f"{out_dir} holds results of a different run ({'; '.join(diffs)}); "
                "use another --out, or --overwrite to discard them"
            )
    path.write_text(json.dumps(config.model_dump(), indent=2) + "\n")


def grade_sample(eval_: Eval, example: Example, response: SamplerResponse) -> SingleEvalResult:
    """Score one response; a transport failure scores None so it is retried, not counted wrong."""
    messages = eval_.messages(example)
    if response.error is not None:
        return SingleEvalResult(score=None, convo=messages)
    try:
        score, extracted = eval_.grade(example.answer, response.content)
    except ValueError as exc:  # a reference the grader cannot read: the data or --grader is wrong
        raise BenchError(f"cannot grade example {example.id!r} of {eval_.name}: {exc}") from exc
    metrics = {"latency_s": response.latency_s}
    if response.thinking_tokens is not None:
        metrics["thinking_tokens"] = response.thinking_tokens
    if response.waits_inserted is not None:
        metrics["waits_inserted"] = response.waits_inserted
    if response.forced_end is not None:
        metrics["forced_end"] = float(response.forced_end)
    for key in MODE_REPORT_KEYS:
        value = getattr(response, key)
        if value is not None:
            metrics[key] = float(value)
    convo = messages + [{"role": "assistant", "content": response.content, "reasoning": response.reasoning}]
    return SingleEvalResult(score=score, metrics=metrics, extracted_answer=extracted, convo=convo)


def sample_row(
    key: str, eval_: Eval, point: BudgetSettings, example: Example, repeat: int, response: SamplerResponse
) -> dict[str, Any]:
    result = grade_sample(eval_, example, response)
    within = (
        None if not point.has_s1_budget or response.thinking_tokens is None else point.within(response.thinking_tokens)
    )
    return {
        "key": key,
        "eval": eval_.name,
        "point": point.label,
        "budget": point.model_dump(exclude_none=True),
        "example_id": example.id,
        "repeat": repeat,
        "score": result.score,
        "correct_answer": example.answer,
        "extracted_answer": result.extracted_answer,
        "thinking_tokens": response.thinking_tokens,
        "thinking_tokens_source": response.thinking_tokens_source,
        "completion_tokens": response.completion_tokens,
        "waits_inserted": response.waits_inserted,
        "forced_end": response.forced_end,
        **{key: getattr(response, key) for key in MODE_REPORT_KEYS},
        "within_budget": within,
        "finish_reason": response.finish_reason,
        "latency_s": round(response.latency_s, 4),
        "attempts": response.attempts,
        "error": response.error,
        "request": response.request,
        "response": response.response,
    }


async def run_sweep(
    eval_: Eval,
    sampler: SamplerBase,
    points: Sequence[BudgetSettings],
    out_dir: Path,
    concurrency: int = 8,
    repeats: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (point, example, repeat) not yet done in `out_dir`; return all latest rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path = out_dir / SAMPLES_FILE
    done = {k for k, row in latest_by_key(read_samples(samples_path)).items() if row.get("error") is None}
    jobs = [
        (sample_key(point, example, r), point, example, r)
        for point, example, r in itertools.product(points, eval_.examples, range(repeats))
    ]
    pending = [job for job in jobs if job[0] not in done]
    logger.info(
        "%d samples in the sweep, %d already done, %d to run", len(jobs), len(jobs) - len(pending), len(pending)
    )
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), disable=not progress, desc=eval_.name, unit="sample")

    with samples_path.open("a", encoding="utf-8") as sink:
        if sink.tell() and not samples_path.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line cut off by a crash so the next sample starts cleanly

        async def one(key: str, point: BudgetSettings, example: Example, repeat: int) -> None:
            async with semaphore:
                response = await sampler(eval_.messages(example), point, seed=sample_seed(key))
            row = sample_row(key, eval_, point, example, repeat, response)
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update()
            if row["error"]:
                bar.write(f"sample {key} failed after {response.attempts} attempts: {row['error']}")

        tasks = [asyncio.create_task(one(*job)) for job in pending]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a rejected request, a grader error, ^C: stop, keep what finished
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
    wanted = {job[0] for job in jobs}
    return [row for key, row in latest_by_key(read_samples(samples_path)).items() if key in wanted]


def sample_seed(key: str) -> int:
    """A sample's own seed, from its resume key (point, example, repeat): reproducible runs whose
    repeats differ, and a resumed sample draws what it would have drawn."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


# --- summarising ---------------------------------------------------------------------------


# The modes' per-point metrics: (summary key, the sample key it is the mean of, table header, a share?).
MODE_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("mean_scheduled_waits", "scheduled_waits", "sched waits", False),
    ("intervened_rate", "intervened", "intervened %", True),
    ("early_exit_rate", "early_exit", "early exit %", True),
    ("mean_probes", "probes", "probes", False),
    ("mean_probe_tokens", "probe_tokens", "probe tok", False),
    ("mean_answer_tokens", "answer_tokens", "answer tok", False),
    ("answer_truncated_rate", "answer_truncated", "answer cut %", True),
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


def series_name(point: BudgetSettings) -> str:
    """Points that share strategy and wait strings form one series (one line in the plot); points
    of the modes beyond s1 form series by their modes (`mode:nowait`, `mode:early_exit`, ...)."""
    parts = [
        "mode:" + "+".join(point.modes) if point.modes else "",
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
                "mode": list(point.modes),
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
    mode_entries = [e for e in plotted if e.get("mode")]
    for name in dict.fromkeys(e["series"] for e in summary["points"] if not e.get("mode")):
        entries = sorted((e for e in plotted if e["series"] == name), key=lambda e: e["mean_thinking_tokens"])
        if not entries:
            continue
        xs = [e["mean_thinking_tokens"] for e in entries]
        ys = [100 * e["accuracy"] for e in entries]
        all_ys += ys
        if name == "baseline":
            ax.scatter(xs, ys, marker="*", s=160, color="black", label="no budget", zorder=3)
            continue
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
