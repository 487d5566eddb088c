"""The wheel: `budgetforce` only, with the top-level `server/` inside it as `budgetforce.server`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_under_budgetforce(tmp_path: Path) -> None:
    src = tmp_path / "src"  # what the Dockerfiles copy; built there so the checkout gets no build/
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("budgetforce", "server"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("budgetforce-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"budgetforce"}, top
    want = {f"budgetforce/{p.relative_to(ROOT / 'budgetforce').as_posix()}" for p in (ROOT / "budgetforce").rglob("*.py")}
    want |= {f"budgetforce/server/{p.relative_to(ROOT / 'server').as_posix()}" for p in (ROOT / "server").rglob("*.py")}
    assert want - names == set(), "modules missing from the wheel"
    assert "budgetforce/student/model/model.safetensors" in names  # package data
