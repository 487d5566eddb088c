"""`budgetforce serve` (vLLM's OpenAI-compatible server with thinking budgets), `bench` and `distill`.

`budgetforce serve` runs vLLM's own server with budgetforce's processor and budget layer
(`budgetforce.server`); options the CLI does not name pass through to vLLM unchanged
(`--enable-prefix-caching`, `--max-num-seqs 64`, `--tensor-parallel-size 2`, ...). The budget
options also read `BUDGETFORCE_*` environment variables.
"""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="s1-style thinking budgets (minimum and maximum) inside vLLM, behind an OpenAI-compatible server.",
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """budgetforce: thinking budgets for reasoning models."""


class UsageError(ValueError):
    """A command-line mistake; reported as one line, exit code 2."""


def _json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"`{name}` must be JSON: {exc}") from None


Opt = typer.Option


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}
)
def serve(
    ctx: typer.Context,
    model: Annotated[
        str | None, Opt(envvar="BUDGETFORCE_MODEL", help="Model path or Hugging Face id; default: the bundled student.")
    ] = None,
    host: Annotated[str, Opt(envvar="BUDGETFORCE_HOST")] = "127.0.0.1",
    port: Annotated[int, Opt(envvar="BUDGETFORCE_PORT", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None, Opt(envvar="BUDGETFORCE_API_KEY", help="Require `Authorization: Bearer KEY` on /v1.")
    ] = None,
    served_model_name: Annotated[
        str | None,
        Opt(envvar="BUDGETFORCE_SERVED_MODEL_NAME", help="Model id clients send; default: --model (`budgetforce` for the student)."),
    ] = None,
    default_min_thinking_tokens: Annotated[int | None, Opt(help="Minimum for requests without one.")] = None,
    default_max_thinking_tokens: Annotated[int | None, Opt(help="Maximum for requests without one.")] = None,
    max_thinking_tokens_limit: Annotated[int | None, Opt(help="Largest budget a request may ask for.")] = None,
    default_max_waits: Annotated[int | None, Opt(help="Waits allowed to requests that set none.")] = None,
    default_budget_strategy: Annotated[
        str | None, Opt(help="engine (the logits processor) or rounds (s1's loop, run by the budget layer).")
    ] = None,
    reasoning_effort_budgets: Annotated[
        str | None, Opt(help='JSON, e.g. \'{"low": {"max_thinking_tokens": 512}}\'; unnamed levels keep defaults.')
    ] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the vLLM command line and environment, start nothing.")] = False,
    log_level: Annotated[str, Opt(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve a reasoning model on vLLM's OpenAI-compatible server, with per-request thinking budgets.

    Every option not listed here passes through to vLLM's server (`vllm serve --help`), e.g.
    --max-model-len 8192 --tensor-parallel-size 2 --enable-prefix-caching --tool-call-parser hermes.
    """
    from pydantic import ValidationError

    defaults = {
        "default_min_thinking_tokens": default_min_thinking_tokens, "default_max_thinking_tokens": default_max_thinking_tokens,
        "max_thinking_tokens_limit": max_thinking_tokens_limit, "default_max_waits": default_max_waits,
        "default_budget_strategy": default_budget_strategy,
    }  # fmt: skip
    try:
        defaults["reasoning_effort_budgets"] = _json_option("--reasoning-effort-budgets", reasoning_effort_budgets)
        command, env = _vllm_command(list(ctx.args), model, host, port, api_key, served_model_name, defaults, log_level)
    except UsageError as exc:
        typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        _report_validation(exc)
    if dry_run:
        typer.echo(" ".join(f"{k}={v}" for k, v in env.items()))
        typer.echo(shlex.join(command))
        return
    from budgetforce.server.launch import exec_server

    exec_server(command, env)


def _report_validation(exc: Any) -> None:
    err = exc.errors()[0]
    where = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    typer.secho(f"Error: `{where}`: {message}" if where else f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2) from None


def _vllm_command(
    passthrough: list[str], model: str | None, host: str, port: int, api_key: str | None,
    served_model_name: str | None, defaults: dict[str, Any], log_level: str,
) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """vLLM's server command line and the middleware's environment (see `budgetforce.server.launch`)."""
    from pathlib import Path

    from budgetforce.server import launch
    from budgetforce.student import default_model

    env = launch.budget_environment(defaults)
    given = launch.flags(passthrough)
    for name in ("model", "host", "port", "api-key", "served-model-name"):
        if name in given:
            raise UsageError(f"give --{name} once, as `budgetforce serve --{name}`")
    path = model or str(default_model())
    args = ["--host", host, "--port", str(port), *passthrough]
    if served_model_name or model is None:
        args += ["--served-model-name", served_model_name or "budgetforce"]
    if api_key:
        args += ["--api-key", api_key]
    if "uvicorn-log-level" not in given:
        args += ["--uvicorn-log-level", log_level.lower()]
    parser = None
    if "reasoning-parser" not in given:
        tokenizer = (given.get("tokenizer") or [None])[0]
        try:
            parser = launch.reasoning_parser_for(path, tokenizer)
        except Exception as exc:  # noqa: BLE001 - the processor reports an unknown model at start-up itself
            raise UsageError(f"cannot tell how {path} delimits its thinking: {exc}") from None
    cpu = not launch.has_cuda()
    dtype = launch.cpu_dtype(Path(path)) if cpu else None
    return launch.vllm_command(args, path, parser, cpu=cpu, dtype=dtype), env


try:  # the benchmarks are optional (their dependencies may be missing)
    from budgetforce.bench.cli import app as bench_app
except ImportError:  # pragma: no cover
    bench_app = None
if bench_app is not None:
    app.add_typer(bench_app, name="bench")
    from budgetforce.distill.cli import app as distill_app  # needs the benchmarks too

    app.add_typer(distill_app, name="distill")


if __name__ == "__main__":
    app()
