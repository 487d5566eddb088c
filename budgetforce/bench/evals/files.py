"""Locating and reading the JSONL data files, with errors that name the file and line."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from budgetforce.bench.types import BenchError


def bundled_path(name: str) -> Path:
    """A data file shipped in `budgetforce/bench/data/`."""
    return Path(str(resources.files("budgetforce.bench") / "data" / name))


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"data file {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchError(f"{path} line {number} is not JSON: {exc}") from exc
    if not rows:
        raise BenchError(f"data file {path} is empty")
    return rows
