"""`budgetforce serve` (the OpenAI-compatible server) and `budgetforce bench` (the benchmarks).

Options the CLI does not name pass through to vLLM's engine arguments, spelled as in
`vllm serve` (`--enable-prefix-caching`, `--max-num-seqs 64`, `--data-parallel-size=2`), or as
`--engine-arg key=value`. Every flag also reads a `BUDGETFORCE_*` environment variable.
"""

from __future__ import annotations

import json
import logging
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


def parse_engine_args(extra: list[str], pairs: list[str]) -> dict[str, Any]:
    """vLLM engine arguments from pass-through options and `key=value` pairs.

    Values are read as JSON when they parse (`8`, `0.5`, `true`, `{"a": 1}`), else as text;
    a bare `--flag` is True and `--no-flag` is False.

    Example:
        >>> parse_engine_args(["--max-num-seqs", "8", "--enable-prefix-caching"], ["kv_cache_dtype=fp8"])
        {'max_num_seqs': 8, 'enable_prefix_caching': True, 'kv_cache_dtype': 'fp8'}
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; engine options look like --name value")
        name, eq, value = token[2:].partition("=")
        if not eq and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value, i = extra[i + 1], i + 1
        key = name.replace("-", "_")
        if eq or value:
            out[key] = _value(value)
        elif key.startswith("no_"):
            out[key[3:]] = False
        else:
            out[key] = True
        i += 1
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"`--engine-arg` takes key=value; got {pair!r}")
        out[key.strip().replace("-", "_")] = _value(value)
    return out


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_option(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"`{name}` must be JSON: {exc}") from None


def check_engine_args(args: dict[str, Any]) -> None:
    """Reject names vLLM's `AsyncEngineArgs` does not have, before a minute of engine start-up."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UsageError(f"unknown engine option(s): {', '.join('--' + u.replace('_', '-') for u in unknown)}")


Opt = typer.Option


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: Annotated[str | None, Opt(help="Model path or Hugging Face id; default: the bundled student.")] = None,
    host: Annotated[str, Opt(envvar="BUDGETFORCE_HOST")] = "127.0.0.1",
    port: Annotated[int, Opt(envvar="BUDGETFORCE_PORT")] = 8000,
    api_key: Annotated[
        str | None, Opt(envvar="BUDGETFORCE_API_KEY", help="Require `Authorization: Bearer KEY` on /v1.")
    ] = None,
    profile: Annotated[str | None, Opt(help="Thinking-delimiter preset; default: detected.")] = None,
    served_model_name: Annotated[str | None, Opt(help="Model id clients send; default: --model.")] = None,
    tensor_parallel_size: Annotated[int | None, Opt("--tensor-parallel-size", "-tp")] = None,
    data_parallel_size: Annotated[int | None, Opt("--data-parallel-size", "-dp")] = None,
    max_model_len: Annotated[int | None, Opt()] = None,
    gpu_memory_utilization: Annotated[float | None, Opt(help="Default on CPU: 0.1.")] = None,
    dtype: Annotated[str | None, Opt(help="Default on CPU: float32 or bfloat16 as the checkpoint says.")] = None,
    default_min_thinking_tokens: Annotated[int | None, Opt(help="Minimum for requests without one.")] = None,
    default_max_thinking_tokens: Annotated[int | None, Opt(help="Maximum for requests without one.")] = None,
    max_thinking_tokens_limit: Annotated[int | None, Opt(help="Largest budget a request may ask for.")] = None,
    default_max_waits: Annotated[int | None, Opt(help="Waits allowed to requests that set none.")] = None,
    default_budget_strategy: Annotated[str | None, Opt(help="engine or rounds.")] = None,
    reasoning_effort_budgets: Annotated[
        str | None, Opt(help='JSON, e.g. \'{"low": {"max_thinking_tokens": 512}}\'; unnamed levels keep defaults.')
    ] = None,
    max_body_bytes: Annotated[int | None, Opt(help="Larger request bodies get 413.")] = None,
    engine_arg: Annotated[list[str] | None, Opt(help="A vLLM engine argument as key=value (repeatable).")] = None,
    log_level: Annotated[str, Opt(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve a reasoning model with per-request thinking budgets (OpenAI-compatible)."""
    from pydantic import ValidationError

    from server.settings import ServerSettings

    try:
        engine_args = parse_engine_args(list(ctx.args), engine_arg or [])
        named = {
            "tensor_parallel_size": tensor_parallel_size, "data_parallel_size": data_parallel_size,
            "max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
        }  # fmt: skip
        engine_args.update({k: v for k, v in named.items() if v is not None})
        check_engine_args(engine_args)
        given = {
            "model": model, "host": host, "port": port, "api_key": api_key, "profile": profile,
            "served_model_name": served_model_name, "default_min_thinking_tokens": default_min_thinking_tokens,
            "default_max_thinking_tokens": default_max_thinking_tokens,
            "max_thinking_tokens_limit": max_thinking_tokens_limit, "default_budget_strategy": default_budget_strategy,
            "default_max_waits": default_max_waits, "max_body_bytes": max_body_bytes, "engine_args": engine_args,
            "reasoning_effort_budgets": _json_option("--reasoning-effort-budgets", reasoning_effort_budgets),
        }  # fmt: skip
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except UsageError as exc:
        typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        typer.secho(f"Error: `{where}`: {message}" if where else f"Error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    run_server(settings, log_level)


def run_server(settings: Any, log_level: str = "info") -> None:
    import uvicorn

    from server.app import build_app

    level = getattr(logging, log_level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("budgetforce")
    root.setLevel(level)
    root.addHandler(handler)
    root.propagate = False
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower())


try:  # the benchmarks are optional (their dependencies may be missing)
    from benchmarks.cli import app as bench_app
except ImportError:  # pragma: no cover
    bench_app = None
if bench_app is not None:
    app.add_typer(bench_app, name="bench")
    from budgetforce.distill.cli import app as distill_app  # needs the benchmarks too

    app.add_typer(distill_app, name="distill")


if __name__ == "__main__":
    app()
