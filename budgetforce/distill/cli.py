"""`budgetforce distill`: teacher traces, the three targets, LoRA fine-tuning, the seed's table.

Bad input (an unreachable teacher, a missing file, a malformed option) ends with one readable
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from budgetforce.bench.cli import ApiKey, configure_logging, run_cli
from budgetforce.bench.evals import EVAL_NAMES, load_eval
from budgetforce.bench.types import BenchError, BudgetSettings

app = typer.Typer(
    help="Distil a student: teacher traces with rejection sampling, training targets, LoRA, the seed's table.",
    no_args_is_help=True,
)
console = Console()
Opt = typer.Option

# -- options shared by generate and build ---------------------------------------------------
Dataset = Annotated[str, Opt("--dataset", "-d", help="gsm8k (train split), gsm8k-test, student, jsonl, math500, ...")]
NumExamples = Annotated[int | None, Opt("--num-examples", "-n", min=1, help="Seeded subsample (student: count).")]
Seed = Annotated[int, Opt("--seed", help="Subsampling seed (student: the task's stream seed; 0 = default).")]
DataPath = Annotated[Path | None, Opt("--data-path", help="jsonl: the file.")]
QuestionField = Annotated[str, Opt(help="jsonl: question field.")]
AnswerField = Annotated[str, Opt(help="jsonl: reference answer field.")]
RationaleField = Annotated[str | None, Opt(help="jsonl: human rationale field (the `human` target).")]
Grader = Annotated[str, Opt(help="jsonl: integer, math or exact.")]
PromptTemplate = Annotated[str | None, Opt(help="jsonl: prompt with {question}.")]
Progress = Annotated[bool, Opt("--progress/--no-progress")]
Verbose = Annotated[bool, Opt("--verbose", "-v")]


def fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def command_line() -> str:
    return "budgetforce distill " + " ".join(shlex.quote(a) for a in sys.argv[2:])


def problem_spec(**fields: Any) -> Any:
    from budgetforce.distill.problems import ProblemSpec

    if fields.get("data_path") is not None:
        fields["data_path"] = str(fields["data_path"])
    return ProblemSpec(**fields)


# The problem options of generate and build: (type, default) by parameter name.
PROBLEM_OPTIONS: dict[str, tuple[Any, Any]] = {
    "dataset": (Dataset, "gsm8k"), "num_examples": (NumExamples, None), "seed": (Seed, 0),
    "data_path": (DataPath, None), "question_field": (QuestionField, "question"), "answer_field": (AnswerField, "answer"),
    "rationale_field": (RationaleField, None), "grader": (Grader, "integer"), "prompt_template": (PromptTemplate, None),
}  # fmt: skip


def problem_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Gives a command the problem options (typer reads them from its signature) and passes them
    on as one argument, ``problem_fields``: the keyword arguments of `problem_spec`."""
    hints = get_type_hints(command, include_extras=True)  # typer reads the options from the annotations
    signature = inspect.signature(command)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
           if p.name != "problem_fields"]  # fmt: skip
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in PROBLEM_OPTIONS.items()]  # fmt: skip

    @functools.wraps(command)
    def with_problems(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in PROBLEM_OPTIONS}
        given["name"] = given.pop("dataset")
        return command(*args, problem_fields=given, **kwargs)

    with_problems.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return with_problems


@app.command()
@problem_options
def generate(
    out: Annotated[Path, Opt("--out", help="Run folder; rerunning the same command resumes it.")] = Path(
        "runs/distill/generate"
    ),
    base_url: Annotated[str, Opt("--base-url", envvar="BUDGETFORCE_BASE_URL", help="Teacher API root (…/v1).")] = (
        "http://127.0.0.1:8000/v1"
    ),
    model: Annotated[str | None, Opt("--model", help="Teacher model id; default: the first of GET /models.")] = None,
    backend: Annotated[str, Opt(help="budgetforce (budget fields sent) or vllm (max only); other APIs: vllm.")] = (
        "budgetforce"
    ),
    samples: Annotated[int, Opt("--samples", "-k", min=1, help="Teacher samples per problem.")] = 4,
    temperature: Annotated[float, Opt(min=0.0, help="Sampling temperature (R1 distillation: 0.6).")] = 0.6,
    top_p: Annotated[float | None, Opt(min=0.0, max=1.0)] = 0.95,
    max_tokens: Annotated[int, Opt("--max-tokens", min=1, help="Completion cap (thinking + answer).")] = 8192,
    min_thinking_tokens: Annotated[int | None, Opt(min=0, help="budgetforce teacher: thinking minimum.")] = None,
    max_thinking_tokens: Annotated[int | None, Opt(min=0, help="Teacher thinking maximum.")] = None,
    max_waits: Annotated[int | None, Opt(min=0, help="budgetforce teacher: waits allowed.")] = None,
    validator: Annotated[
        str | None, Opt(help="module:function or file.py:function, called with question, reference, reasoning, answer.")
    ] = None,
    max_per_problem: Annotated[int | None, Opt(min=1, help="Keep at most this many traces per problem.")] = None,
    concurrency: Annotated[int, Opt("--concurrency", "-c", min=1)] = 8,
    retries: Annotated[int, Opt(min=0, help="Retries on 429/5xx/connection errors (jittered backoff).")] = 5,
    timeout: Annotated[float, Opt(min=1.0, help="Per-request timeout, seconds.")] = 600.0,
    overwrite: Annotated[bool, Opt(help="Discard earlier samples in --out.")] = False,
    api_key: ApiKey = None,
    progress: Progress = True,
    verbose: Verbose = False,
    problem_fields: dict[str, Any] | None = None,  # the problem options (`problem_options`)
) -> None:
    """Sample a teacher k times per problem, keep the traces with the right answer; write sft.jsonl and report.json."""
    async def main() -> dict[str, Any]:
        from budgetforce.bench import store
        from budgetforce.bench.cli import check_backend
        from budgetforce.bench.sampler import ChatSampler, budget_fields, served_model
        from budgetforce.distill import generate as gen
        from budgetforce.distill.problems import load_problems

        checked = check_backend(backend)
        budget = BudgetSettings(
            min_thinking_tokens=min_thinking_tokens, max_thinking_tokens=max_thinking_tokens, max_waits=max_waits
        )
        budget_fields(budget, checked)
        check = gen.load_validator(validator) if validator else None
        spec = problem_spec(**(problem_fields or {}))
        problems = load_problems(spec)
        model_id = model or (await served_model(base_url, api_key))[0]
        config = store.RunConfig(
            eval=problems.eval.name, model=model_id, backend=checked, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, prompt_template=problems.eval.QUERY_TEMPLATE,
        )  # fmt: skip
        if overwrite:
            for name in (store.SAMPLES_FILE, store.RUN_FILE, gen.SPEC_FILE):
                (out / name).unlink(missing_ok=True)
        sampler = ChatSampler(
            base_url, model_id, checked, max_tokens, temperature, top_p, None, api_key, timeout, retries
        )
        try:
            return await gen.generate(
                problems, spec, sampler, config, out, samples, budget, concurrency, check, max_per_problem, progress
            )
        finally:
            await sampler.aclose()

    report = run_cli(main, verbose)
    table = Table(title=f"teacher traces - {report['teacher']['model']}")
    for column in ("samples", "kept", "wrong", "incomplete", "errors", "problems kept", "pass rate %", "mean think"):
        table.add_column(column, justify="right")
    think = report["mean_thinking_tokens_kept"]
    rate = report["mean_problem_pass_rate"]
    table.add_row(
        str(report["samples"]), str(report["kept"]), str(report["rejected_wrong"]), str(report["rejected_incomplete"]),
        str(report["errors"]), f"{report['problems_with_a_kept_trace']}/{report['problems']}",
        "-" if rate is None else f"{100 * rate:.1f}", "-" if think is None else f"{think:.1f}",
    )  # fmt: skip
    console.print(table)
    if report["errors"]:
        console.print(f"[yellow]{report['errors']} samples failed; rerun the same command to retry them")
    console.print(f"Wrote {out / 'sft.jsonl'} ({report['written']} records) and {out / 'report.json'}")


@app.command()
@problem_options
def build(
    out: Annotated[Path, Opt("--out", help="Folder for direct.jsonl, human.jsonl, teacher.jsonl.")] = Path(
        "runs/distill/targets"
    ),
    from_run: Annotated[
        Path | None, Opt("--from", help="A `generate` run: its problems and kept traces (the teacher target).")
    ] = None,
    all_problems: Annotated[
        bool, Opt(help="direct/human for every problem, not only those with a kept trace.")
    ] = False,
    verbose: Verbose = False,
    problem_fields: dict[str, Any] | None = None,  # the problem options (`problem_options`)
) -> None:
    """The seed's three targets from the same problems: direct answer, human CoT, teacher CoT."""
    async def main() -> dict[str, Any]:
        from budgetforce.distill.build import build_targets
        from budgetforce.distill.generate import read_spec
        from budgetforce.distill.problems import load_problems

        if from_run is not None:
            spec = read_spec(from_run)
        else:
            spec = problem_spec(**(problem_fields or {}))
        return build_targets(load_problems(spec), out, from_run, all_problems)

    summary = run_cli(main, verbose)
    table = Table(title=f"targets ({summary['problems']} problems)")
    for column in ("target", "records", "problems", "mean chars", "file"):
        table.add_column(column, justify="left" if column in ("target", "file") else "right")
    for name, t in summary["targets"].items():
        chars = "-" if t["mean_target_chars"] is None else f"{t['mean_target_chars']:.0f}"
        table.add_row(name, str(t["records"]), str(t["problems"]), chars, t["path"])
    console.print(table)
    reasons = {"teacher": "the run kept no traces" if from_run else "no --from run"}
    for name in summary["unavailable"]:
        console.print(f"[yellow]target `{name}` unavailable ({reasons.get(name, 'the data set has no rationales')})")


@app.command()
def init(
    out: Annotated[Path, Opt("--out", help="Folder for the random-weight student.")],
    tokenizer_from: Annotated[
        str | None,
        Opt("--tokenizer-from", help="Model whose tokenizer/chat template to use; default: the bundled student."),
    ] = None,
    hidden: Annotated[int, Opt(min=64, help="Hidden size (a multiple of 64).")] = 128,
    layers: Annotated[int, Opt(min=1)] = 2,
    seed: Annotated[int, Opt()] = 0,
) -> None:
    """A fresh random-weight Qwen2 student with another model's tokenizer (for toy runs)."""
    from budgetforce.distill.train import fresh_student
    from budgetforce.student import STUDENT_PATH

    try:
        fresh_student(out, tokenizer_from or STUDENT_PATH, hidden, layers, seed=seed)
    except (BenchError, OSError, ValueError) as exc:
        fail(str(exc))
    console.print(f"Wrote {out}")


@app.command()
def train(
    data: Annotated[Path, Opt("--data", help="A target set from `build` (e.g. runs/distill/targets/teacher.jsonl).")],
    out: Annotated[Path, Opt("--out", help="Folder for adapter/, merged/, train_log.csv, train_record.json.")],
    base: Annotated[
        str | None, Opt("--base", help="Student model folder or hub id; default: the bundled student.")
    ] = None,
    steps: Annotated[int, Opt(min=1)] = 100,
    batch_size: Annotated[int, Opt(min=1)] = 8,
    lr: Annotated[float, Opt(min=0.0)] = 2e-4,
    warmup: Annotated[int, Opt(min=0)] = 10,
    lora_r: Annotated[int, Opt(min=1)] = 16,
    lora_alpha: Annotated[int, Opt(min=1)] = 32,
    lora_dropout: Annotated[float, Opt(min=0.0, max=1.0)] = 0.0,
    target_modules: Annotated[str, Opt(help="all-linear or e.g. q_proj,k_proj,v_proj,o_proj.")] = "all-linear",
    max_len: Annotated[int, Opt(min=8, help="Longer sequences are cut.")] = 1024,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
    save_dtype: Annotated[str, Opt(help="Merged weights: auto (the base's), float32 or bfloat16.")] = "auto",
    gradient_checkpointing: Annotated[bool, Opt(help="Less memory, more compute (real models).")] = False,
    seed: Annotated[int, Opt()] = 0,
    verbose: Verbose = False,
) -> None:
    """LoRA fine-tuning on one target set; saves the adapter and a merged model `budgetforce serve` loads."""
    from budgetforce.distill.train import TrainConfig
    from budgetforce.distill.train import train as run_training
    from budgetforce.student import STUDENT_PATH

    configure_logging(verbose)
    if save_dtype not in ("auto", "float32", "bfloat16"):
        fail(f"`--save-dtype` must be auto, float32 or bfloat16; got {save_dtype!r}")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        fail(f"`--device` must be auto, cpu or cuda; got {device!r}")
    config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, target_modules=target_modules, max_len=max_len, device=device,
        save_dtype=save_dtype, gradient_checkpointing=gradient_checkpointing, seed=seed,
    )  # fmt: skip
    try:
        record = run_training(base or STUDENT_PATH, data, out, config, command_line())
    except (BenchError, OSError) as exc:
        fail(str(exc))
    console.print(
        f"probe loss {record['probe_loss_before']:.4f} -> {record['probe_loss_after']:.4f} "
        f"({steps} steps, {record['train_seconds']:.0f}s on {record['device']})"
    )
    console.print(
        f"Wrote {record['adapter']} and {record['merged']}  (serve: budgetforce serve --model {record['merged']})"
    )


@app.command("eval")
def eval_command(
    target: Annotated[list[str], Opt("--target", "-t", help="NAME=MODEL_DIR (served here) or NAME=URL; repeatable.")],
    out: Annotated[Path, Opt("--out", help="Folder for per-target samples and table.{md,json}.")] = Path(
        "runs/distill/eval"
    ),
    eval_name: Annotated[str, Opt("--eval", help=f"Harness data set: {', '.join(EVAL_NAMES)}.")] = "gsm8k",
    num_examples: NumExamples = None,
    seed: Seed = 0,
    data_path: DataPath = None,
    question_field: QuestionField = "question",
    answer_field: AnswerField = "answer",
    grader: Grader = "math",
    prompt_template: PromptTemplate = None,
    max_tokens: Annotated[int, Opt("--max-tokens", min=1, help="Completion cap (thinking + answer).")] = 4096,
    max_thinking_tokens: Annotated[int | None, Opt(min=0, help="Evaluate under this thinking maximum.")] = None,
    concurrency: Annotated[int, Opt("--concurrency", "-c", min=1)] = 8,
    serve_arg: Annotated[
        list[str] | None,
        Opt("--serve-arg", help="Extra `budgetforce serve` argument for MODEL_DIR targets (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, Opt(help="Discard earlier samples of these targets (after retraining).")] = False,
    api_key: ApiKey = None,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Run the harness on each trained student; print the seed's table (accuracy, mean tokens per target)."""
    from budgetforce.distill.evaluate import evaluate_targets, parse_targets

    configure_logging(verbose)
    try:
        targets = parse_targets(target)
        eval_ = load_eval(eval_name, num_examples, seed, data_path, question_field, answer_field, None, grader,
                          prompt_template)  # fmt: skip
        budget = BudgetSettings(max_thinking_tokens=max_thinking_tokens)
        serve_args = tuple(a for arg in serve_arg or [] for a in shlex.split(arg))
        table = evaluate_targets(
            eval_, targets, out, max_tokens, budget, concurrency, progress, serve_args, api_key, overwrite
        )
    except BenchError as exc:
        fail(str(exc))
    view = Table(title=table["title"])
    for column in ("target", "n", "accuracy %", "mean output tokens", "mean thinking tokens"):
        view.add_column(column, justify="left" if column == "target" else "right")
    for name, r in table["targets"].items():
        view.add_row(
            name, str(r["n"]), "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}",
            "-" if r["mean_output_tokens"] is None else f"{r['mean_output_tokens']:.1f}",
            "-" if r["mean_thinking_tokens"] is None else f"{r['mean_thinking_tokens']:.1f}",
        )  # fmt: skip
    console.print(view)
    console.print(f"Wrote {out / 'table.md'} and {out / 'table.json'}")


if __name__ == "__main__":
    app()
