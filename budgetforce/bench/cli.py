"""`budgetforce bench accuracy` and `budgetforce bench load`: the typer app the main CLI mounts.

Bad input (a missing AIME path, a malformed sweep, an unreachable server) ends with one
readable line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from budgetforce.bench import accuracy, load, reporting, store, sweep
from budgetforce.bench.evals import EVAL_NAMES, load_eval
from budgetforce.bench.sampler import ChatSampler, budget_fields, served_model
from budgetforce.bench.types import Backend, BenchError, BudgetSettings
from budgetforce.core.budget import Strategy

app = typer.Typer(help="Benchmarks: accuracy vs thinking budget (s1 sweep) and HTTP load.", no_args_is_help=True)
console = Console()
T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BaseUrl = Annotated[str, typer.Option("--base-url", help="OpenAI-compatible API root.", envvar="BUDGETFORCE_BASE_URL")]
Model = Annotated[str | None, typer.Option("--model", help="Model id; default: the first of GET /models.")]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="budgetforce (all budget fields) or vllm (stock `vllm serve`, max only).")
]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token, if needed.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


def run_cli(coroutine_factory: Callable[[], Coroutine[Any, Any, T]], verbose: bool = False) -> T:
    """Run a command's coroutine (logging set up first), turning the user's mistakes into one line on
    stderr and exit code 2."""
    configure_logging(verbose)
    try:
        return asyncio.run(coroutine_factory())
    except BenchError as exc:
        typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        typer.secho(f"Error: `{where}`: {error['msg']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("Interrupted; finished samples are kept, rerun to resume.", err=True)
        raise typer.Exit(130) from None


def check_backend(backend: str) -> Backend:
    if backend not in ("budgetforce", "vllm"):
        raise BenchError(f"`--backend` must be budgetforce or vllm; got {backend!r}")
    return backend  # type: ignore[return-value]


def check_strategies(strategies: list[str]) -> list[Strategy]:
    for strategy in strategies:
        if strategy not in ("engine", "rounds"):
            raise BenchError(f"`--strategy` must be engine or rounds; got {strategy!r}")
    return strategies  # type: ignore[return-value]


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tokenizer_counter(name: str | None, root: str | None, backend: Backend) -> Callable[[str], int] | None:
    """A token counter for servers whose usage lacks reasoning tokens (stock vLLM, see sampler).

    Without `--tokenizer`, the vllm backend uses the served model's `root` when it is a local
    directory; the budgetforce server always reports the count itself.
    """
    if name is None and backend == "vllm" and root and Path(root).is_dir():
        name = root
        logging.getLogger(__name__).info("counting thinking tokens with the tokenizer in %s", root)
    if name is None:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot load tokenizer {name!r}: {exc}") from exc
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def show_accuracy(summary: dict[str, Any], title: str) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    table = Table(title=title)
    extra = reporting.mode_columns(summary)  # the modes' columns, only when some point has them
    columns = ("point", "n", "err", "acc %", "mean think", "median think", "waits", "forced %", "control %")
    for column in (*columns, *(header for _, header, _ in extra)):
        table.add_column(column, justify="left" if column == "point" else "right", overflow="fold")
    for e in summary["points"]:
        table.add_row(
            e["point"], f"{e['n']:.0f}", f"{e['errors']:.0f}", pct(e["accuracy"]), num(e["mean_thinking_tokens"]),
            num(e["median_thinking_tokens"]), num(e["mean_waits"]), pct(e["forced_end_rate"]), pct(e["control"]),
            *((pct if share else num)(e.get(key)) for key, _, share in extra),
        )  # fmt: skip
    console.print(table)
    s1 = Table(title="s1 metrics")
    for column in ("series", "points", "Control %", "Scaling (pp/1k tok)", "Performance %"):
        s1.add_column(column, justify="left" if column == "series" else "right")
    for name, m in summary["s1"].items():
        s1.add_row(
            name, str(m["points"]), pct(m["control"]), num(m["scaling_pct_per_1k_tokens"]), pct(m["performance"])
        )
    console.print(s1)


@app.command("accuracy")
def accuracy_command(
    eval_name: Annotated[str, typer.Option("--eval", help=f"Data set: {', '.join(EVAL_NAMES)}.")] = "gsm8k",
    out: Annotated[Path, typer.Option("--out", help="Output directory; rerunning resumes it.")] = Path("runs/accuracy"),
    base_url: BaseUrl = DEFAULT_BASE_URL,
    model: Model = None,
    backend: BackendOpt = "budgetforce",
    num_examples: Annotated[
        int | None, typer.Option("--num-examples", "-n", min=1, help="Seeded subsample size.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Subsampling seed.")] = 0,
    data_path: Annotated[Path | None, typer.Option("--data-path", help="JSONL for aime2024/aime2025/jsonl.")] = None,
    question_field: Annotated[str, typer.Option(help="jsonl: question field.")] = "question",
    answer_field: Annotated[str, typer.Option(help="jsonl: reference answer field.")] = "answer",
    id_field: Annotated[str | None, typer.Option(help="jsonl: id field (default: line number).")] = None,
    grader: Annotated[str, typer.Option(help="jsonl: integer, math or exact.")] = "math",
    prompt_template: Annotated[str | None, typer.Option(help="jsonl: prompt with {question}.")] = None,
    max_: Annotated[str | None, typer.Option("--max", help="Max-only points, e.g. 512,1024,2048.")] = None,
    min_: Annotated[str | None, typer.Option("--min", help="Min-only points, e.g. 256,512.")] = None,
    min_max: Annotated[str | None, typer.Option("--min-max", help="MIN:MAX points, e.g. 256:512,512:1024.")] = None,
    waits: Annotated[
        str | None, typer.Option("--waits", help="Number-of-waits points (s1 extrapolation), e.g. 0,1,2,4.")
    ] = None,
    waits_min: Annotated[
        int | None, typer.Option(min=1, help="Waits points: minimum thinking (default: the cap).")
    ] = None,
    waits_max: Annotated[int | None, typer.Option(min=1, help="Waits points: maximum thinking.")] = None,
    votes: Annotated[
        str | None,
        typer.Option("--votes", help="Vote points: n thinkings per problem, graded on their majority "
                     "(budget_aggregate vote, read by the eval's grader), e.g. 2,4,8."),
    ] = None,
    wait_string: Annotated[
        list[str] | None, typer.Option("--wait-string", help="Repeatable: one series per string (s1 Table 4).")
    ] = None,
    strategy: Annotated[list[str] | None, typer.Option("--strategy", help="Repeatable: engine, rounds.")] = None,
    answer_prefix: Annotated[str | None, typer.Option(help="Text forced after the end of thinking.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Add an unbudgeted point.")] = False,
    point_json: Annotated[
        list[str] | None,
        typer.Option(
            "--point",
            help="Repeatable: one more point as a JSON object of budget fields, s1's and the thinking modes' "
            "(banned_thinking_strings, thinking_intervention, intervention_at, max_answer_tokens, "
            "alpha_moment_tokens, alpha, wait_probability, wait_decay, paragraph_breaks, probe_every, "
            "probe_agree, probe_lead, probe_max_tokens, exit_margin, exit_breaks) and the vote's (n, "
            "budget_aggregate, vote_grader, total_thinking_tokens), e.g. "
            '\'{"probe_every": 16, "probe_agree": 2, "max_thinking_tokens": 256}\'. Run after the other points, '
            "as given (not crossed with --strategy, --wait-string or --answer-prefix).",
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Completion cap (thinking + answer).")] = 4096,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy, as in s1.")] = 0.0,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    sample_seed: Annotated[int | None, typer.Option(help="`seed` sent with each request.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Samples per example and point.")] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 8,
    overwrite: Annotated[bool, typer.Option(help="Discard earlier results in --out.")] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="Per-request timeout, seconds.")] = 600.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries on 429/5xx/connection errors.")] = 5,
    tokenizer: Annotated[
        str | None, typer.Option(help="Count thinking tokens locally when the server does not.")
    ] = None,
    api_key: ApiKey = None,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Sweep thinking budgets over a data set; write samples.jsonl, summary.{json,md} and a plot."""
    async def main() -> dict[str, Any]:
        checked_backend = check_backend(backend)
        spec = sweep.SweepSpec(
            baseline=baseline,
            max_only=sweep.parse_int_list(max_, "--max"),
            min_only=sweep.parse_int_list(min_, "--min"),
            min_max=sweep.parse_pairs(min_max, "--min-max"),
            waits=sweep.parse_int_list(waits, "--waits", "0,1,2,4"),
            waits_min=waits_min,
            waits_max=waits_max,
            votes=sweep.parse_int_list(votes, "--votes", "2,4,8"),
            wait_strings=wait_string or [],
            strategies=check_strategies(strategy or []),
            answer_prefix=answer_prefix,
            extra=[sweep.parse_point(text) for text in point_json or []],
        )
        points = spec.points(max_tokens)
        for point in points:
            budget_fields(point, checked_backend)  # refuse vLLM-incompatible points before any request
            if point.votes and temperature == 0:  # vLLM refuses n > 1 under greedy decoding: say so first
                raise BenchError(
                    f"point {point.label!r} votes over {point.n} thinkings, which greedy decoding would make "
                    "identical (vLLM refuses n > 1 at temperature 0); set --temperature, e.g. 0.6"
                )
        eval_ = load_eval(
            eval_name, num_examples, seed, data_path, question_field, answer_field, id_field, grader, prompt_template
        )
        listed_id, root = await served_model(base_url, api_key)
        model_id = model or listed_id
        config = store.RunConfig(
            eval=eval_.name, model=model_id, backend=checked_backend, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, seed=sample_seed, prompt_template=eval_.QUERY_TEMPLATE,
        )  # fmt: skip
        if overwrite:
            for name in (store.SAMPLES_FILE, store.RUN_FILE):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        store.check_run_config(out, config)
        sampler = ChatSampler(
            base_url, model_id, checked_backend, max_tokens, temperature, top_p, sample_seed, api_key,
            timeout, retries, count_tokens=tokenizer_counter(tokenizer, root, checked_backend),
        )  # fmt: skip
        try:
            rows = await accuracy.run_sweep(eval_, sampler, points, out, concurrency, repeats, progress)
        finally:
            await sampler.aclose()
        summary = reporting.summarize(rows, points)
        summary["run"] = config.model_dump()
        reporting.write_reports(summary, out, f"{eval_.name} - {model_id}")
        return summary

    summary = run_cli(main, verbose)
    show_accuracy(summary, f"{summary['run']['eval']} - {summary['run']['model']}")
    names = (store.SAMPLES_FILE, reporting.SUMMARY_FILE, reporting.TABLE_FILE, reporting.PLOT_FILE)
    console.print("Wrote " + ", ".join(str(out / name) for name in names))


@app.command("load")
def load_command(
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    model: Model = None,
    backend: BackendOpt = "budgetforce",
    concurrency: Annotated[str, typer.Option("--concurrency", "-c", help="Levels, e.g. 1,4,16.")] = "1,4,16",
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests per level.")] = 32,
    input_len: Annotated[int, typer.Option(min=1, help="Approximate prompt tokens.")] = 128,
    output_len: Annotated[int, typer.Option(min=1, help="Completion tokens (a cap; pinned with --ignore-eos).")] = 128,
    ignore_eos: Annotated[
        bool | None, typer.Option("--ignore-eos/--no-ignore-eos", help="Default: on for vllm.")
    ] = None,
    min_thinking: Annotated[int | None, typer.Option(min=0, help="budgetforce: min_thinking_tokens.")] = None,
    max_thinking: Annotated[
        int | None, typer.Option(min=0, help="Max thinking tokens (vllm: thinking_token_budget).")
    ] = None,
    max_waits: Annotated[int | None, typer.Option(min=0)] = None,
    strategy: Annotated[str | None, typer.Option(help="budgetforce: engine or rounds.")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured warm-up requests.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    extra_body: Annotated[str | None, typer.Option(help="JSON object merged into each request body.")] = None,
    timeout: Annotated[float, typer.Option(min=1.0)] = 600.0,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON report here.")] = None,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Streamed load at each concurrency level: output tok/s, TTFT and ITL p50/p99, errors."""
    async def main() -> dict[str, Any]:
        checked_backend = check_backend(backend)
        levels = sweep.parse_int_list(concurrency, "--concurrency", "1,4,16")
        if not levels or min(levels) < 1:
            raise BenchError(f"`--concurrency` needs positive integers like 1,4,16; got {concurrency!r}")
        extra: dict[str, Any] = {}
        if extra_body:
            try:
                extra = json.loads(extra_body)
            except json.JSONDecodeError as exc:
                raise BenchError(f"`--extra-body` is not JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise BenchError("`--extra-body` must be a JSON object")
        try:
            budget = BudgetSettings(
                min_thinking_tokens=min_thinking, max_thinking_tokens=max_thinking, max_waits=max_waits,
                strategy=check_strategies([strategy])[0] if strategy else None,
            )  # fmt: skip
        except ValidationError as exc:
            raise BenchError(exc.errors()[0]["msg"]) from exc
        budget_fields(budget, checked_backend)
        config = load.LoadConfig(
            base_url=base_url, model=model or (await served_model(base_url, api_key))[0], backend=checked_backend,
            input_len=input_len, output_len=output_len, concurrency=levels, requests=requests, warmup=warmup,
            ignore_eos=ignore_eos, budget=budget, temperature=temperature, extra_body=extra, timeout_s=timeout,
        )  # fmt: skip
        return await load.run_load(config, api_key, progress)

    report = run_cli(main, verbose)
    table = Table(title=f"load - {report['config']['model']} ({report['config']['backend']})")
    columns = {  # header: (report key, format)
        "conc": ("concurrency", "{:.0f}"), "ok": ("ok", "{:.0f}"), "err": ("errors", "{:.0f}"),
        "tok/s": ("output_tokens_per_s", "{:.1f}"), "req/s": ("requests_per_s", "{:.2f}"),
        "out tok": ("mean_output_tokens", "{:.0f}"), "TTFT50 ms": ("ttft_ms_p50", "{:.1f}"),
        "TTFT99 ms": ("ttft_ms_p99", "{:.1f}"), "ITL50 ms": ("itl_ms_p50", "{:.2f}"),
        "ITL99 ms": ("itl_ms_p99", "{:.2f}"), "lat50 s": ("latency_s_p50", "{:.2f}"),
        "lat99 s": ("latency_s_p99", "{:.2f}"),
    }  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for level in report["levels"]:
        table.add_row(*("-" if level[k] is None else f.format(level[k]) for k, f in columns.values()))
    console.print(table)
    for level in report["levels"]:
        if level["first_error"]:
            console.print(
                f"[red]concurrency {level['concurrency']}: {level['errors']} errors; first: {level['first_error']}"
            )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"Wrote {out}")


def main() -> None:
    """Stand-alone entry point (`python -m budgetforce.bench.cli`) until the main CLI mounts `app`."""
    app()


if __name__ == "__main__":
    main()
