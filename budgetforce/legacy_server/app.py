"""`build_app(settings, engine=None)`: the FastAPI app; the engine lives on `app.state`.

Pass an engine to share one (tests, embedding); without one the app starts its own from
`settings` when it starts up and shuts it down when it stops.

Example:
    >>> app = build_app(ServerSettings(model="path/to/model"))   # doctest: +SKIP
    >>> uvicorn.run(app, port=8000)                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from budgetforce.engine import BudgetForcingEngine
from budgetforce.legacy_server import errors
from budgetforce.legacy_server.metrics import Metrics
from budgetforce.legacy_server.middleware import CountRequests, LimitBody, RequireAPIKey
from budgetforce.legacy_server.routes import ROUTERS
from budgetforce.legacy_server.settings import ServerSettings
from budgetforce.student import default_model

log = logging.getLogger("budgetforce.server")
CPU_KV_CACHE_BYTES = 1 << 30

DESCRIPTION = """OpenAI-compatible chat and text completions with per-request **thinking budgets**
(s1 budget forcing inside vLLM). Set `min_thinking_tokens` / `max_thinking_tokens` (or vLLM's
`thinking_token_budget`, `reasoning_effort`, Anthropic's `thinking`, OpenRouter's `reasoning`)
as top-level fields; the reasoning comes back as `reasoning_content` and `reasoning`."""


def engine_kwargs(model: str | Path, engine_args: dict[str, Any]) -> dict[str, Any]:
    """vLLM engine arguments with CPU-friendly defaults; explicit ones always win."""
    import torch

    out = dict(engine_args)
    if not torch.cuda.is_available():
        # vLLM's CPU worker sizes the KV cache as a fraction of the NUMA node minus its own RSS,
        # which fails on small or busy hosts; a fixed size is predictable.
        sized = {"gpu_memory_utilization", "kv_cache_memory_bytes"} & set(out) or os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE"
        )
        if not sized:
            out["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        if "dtype" not in out:
            out["dtype"] = _cpu_dtype(Path(model))
        # vLLM-CPU 0.32 kills the engine when a seeded request's prompt is prefilled in chunks
        # ("CPU Generator does not use offset"); a large token budget per step avoids chunking.
        out.setdefault("max_num_batched_tokens", 65536)
    return out


def _cpu_dtype(model: Path) -> str:
    """float32 or bfloat16 as the checkpoint says (float16 is slow or unsupported on CPUs)."""
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        return "bfloat16"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return "float32" if dtype == "float32" else "bfloat16"


def start_engine(settings: ServerSettings) -> BudgetForcingEngine:
    model = settings.model or str(default_model())
    return BudgetForcingEngine.from_model(
        model,
        profile=settings.profile,
        served_model_name=settings.model_id,
        **engine_kwargs(model, settings.engine_args),
    )


def build_app(settings: ServerSettings, engine: BudgetForcingEngine | None = None) -> FastAPI:
    """The server around ``engine`` (or one started from ``settings`` at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = app.state.engine is None
        if owned:
            app.state.engine = start_engine(settings)
            app.state.model_id = app.state.engine.model_name
        try:
            yield
        finally:
            if owned:
                app.state.engine.shutdown()
                app.state.engine = None

    app = FastAPI(title="budgetforce", version=_version(), description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.model_id = settings.served_model_name or (engine.model_name if engine is not None else settings.model_id)
    app.state.metrics = metrics = Metrics()
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # Outermost last: count every request, then check the key, then bound the body.
    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(RequireAPIKey, api_key=settings.api_key.get_secret_value())
    app.add_middleware(CountRequests, metrics=metrics)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("budgetforce")
    except PackageNotFoundError:  # pragma: no cover
        return "0"
