"""The sweep's resume store: every finished sample a line of `samples.jsonl`, keyed by (point,
example, repeat), so a rerun with the same output folder skips what is done; `run.json` pins the
run's configuration."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from budgetforce.bench.types import Backend, BenchError, BudgetSettings, Example

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"


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


def sample_seed(key: str) -> int:
    """A sample's own seed, from its resume key (point, example, repeat): reproducible runs whose
    repeats differ, and a resumed sample draws what it would have drawn."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF
