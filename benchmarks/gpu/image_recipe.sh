#!/usr/bin/env bash
# The GPU image's install recipe (docker/Dockerfile) run without a container engine, the way the
# image runs it, on a Python environment that already holds vLLM (the "base image"):
#   1. the constraints file from `pip list` of that environment (every base package pinned);
#   2. the budgetforce wheel (`pip wheel --no-deps`, from a copy of what the Dockerfile copies);
#   3. the Dockerfile's two pip commands, unchanged, into a virtual environment over the base
#      (`--system-site-packages`: the base's packages count as installed, as in the image), then
#      the Dockerfile's import check;
#   4. docker/entrypoint.sh as an unprivileged user (uid/gid 10001, created as in the Dockerfile when
#      missing; else the current user, said so) with the image's environment, BUDGETFORCE_MODEL and
#      BUDGETFORCE_SERVE_ARGS; waits for /health, runs the image's HEALTHCHECK command, sends one
#      budgeted chat (max_thinking_tokens 40, max_completion_tokens 80) and prints the choice's
#      `budget` object.
# Usage:   SITE=/tmp/site033 bash benchmarks/gpu/image_recipe.sh [MODEL_DIR]
#   MODEL_DIR unset or empty: the bundled student (BUDGETFORCE_MODEL unset, as in the image).
#   SITE: the carried vLLM (default /tmp/site; EXTRA_PYTHONPATH is appended, e.g. run.sh's fixes).
#   PYTHON: the base interpreter (default python3). SERVE_ARGS (default "--load-format dummy
#   --gpu-memory-utilization 0.3"), PORT (8010), HEALTH_TIMEOUT (s, 540), RECIPE_USER (a user name
#   to run as instead of 10001), WORK (scratch, default /tmp/image-recipe), OUT (logs, default $WORK/out),
#   INSTALL_ONLY=1 (steps 1-3 only). CHECKS (with MODEL_DIR): acceptance.py --only CHECKS on the server after the chat.
# No network is needed: pip runs with PIP_NO_INDEX=1, so budgetforce's requirements must already be
# in the base environment (as they are in vLLM's images). Exits non-zero when a step fails.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MODEL="${1:-}"
SITE="${SITE:-/tmp/site}"
PYTHON="${PYTHON:-python3}"
SERVE_ARGS="${SERVE_ARGS:---load-format dummy --gpu-memory-utilization 0.3}"
PORT="${PORT:-8010}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-540}"
WORK="${WORK:-/tmp/image-recipe}"
OUT="${OUT:-$WORK/out}"
LOG="$OUT/image-recipe"
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
fail() { echo "FAILED: $*"; exit 1; }

rm -rf "$WORK/venv" "$WORK/src" "$WORK/wheels" "$WORK/home" "$WORK/bin"
mkdir -p "$WORK" "$LOG" || exit 1
chmod 755 "$WORK"  # the unprivileged user reads the venv and the entrypoint below it
# The base environment: the interpreter's own packages plus the carried vLLM (not the working tree).
# The interpreter's site-packages go on the path too: where it is itself a virtual environment (as on
# the GPU machine), `venv --system-site-packages` would see its base interpreter's packages only.
BASE_SITE="$("$PYTHON" -c 'import site; print(":".join([*site.getsitepackages(), site.getusersitepackages()]))')"
export PYTHONPATH="$SITE:$BASE_SITE${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}"
# --without-pip: the venv runs the base's pip (visible through --system-site-packages or $SITE)
"$PYTHON" -m venv --system-site-packages --without-pip "$WORK/venv" || fail "python -m venv"
export PATH="$WORK/venv/bin:$PATH"
cd "$WORK" || exit 1  # nothing of the working tree on sys.path
python3 -c "import sys, vllm, torch; print('base:', sys.executable, 'vllm', vllm.__version__, 'torch', torch.__version__)" \
  2>&1 | tail -1 | tee "$LOG/base.txt"

step "1. constraints from the base environment"
CONSTRAINTS="$WORK/base-constraints.txt"
python3 -m pip list --format=freeze > "$CONSTRAINTS" || fail "pip list"
cp "$CONSTRAINTS" "$LOG/base-constraints.txt"
echo "$(wc -l < "$CONSTRAINTS") packages pinned: $(grep -E '^(vllm|torch|transformers|fastapi|pydantic)==' "$CONSTRAINTS" | tr '\n' ' ')"

step "2. the budgetforce wheel"
# what the Dockerfile's wheel stage copies (pyproject.toml, README.md, budgetforce/, server/); no network,
# so the build uses the base's setuptools instead of an isolated one
mkdir -p "$WORK/src" "$WORK/wheels" && cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/" \
  && cp -r "$ROOT/budgetforce" "$ROOT/server" "$WORK/src/" && find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
WHEELS="$WORK/wheels"
PIP_NO_INDEX=1 python3 -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$WORK/src" \
  > "$LOG/wheel.log" 2>&1 || { tail -30 "$LOG/wheel.log"; fail "pip wheel"; }
ls "$WHEELS"

step "3. the Dockerfile's install (its runtime stage's RUN, unchanged but for the paths)"
# PIP_NO_INDEX: this machine has no network; the requirements come from the base, as in the image.
(
  export PIP_NO_INDEX=1
  export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 \
    && python3 -m pip install -c "$CONSTRAINTS" "$WHEELS"/budgetforce-*.whl \
    && python3 -m pip install --no-deps --force-reinstall "$WHEELS"/budgetforce-*.whl \
    && rm "$CONSTRAINTS" \
    && python3 -B -c "import budgetforce.cli, budgetforce.server.middleware, vllm; print('vllm', vllm.__version__)"
) > "$LOG/install.log" 2>&1 || { tail -40 "$LOG/install.log"; fail "the Dockerfile's install"; }
tail -1 "$LOG/install.log"
grep -i "Successfully installed\|already satisfied: budgetforce\|Not uninstalling" "$LOG/install.log" | head -5
install -D -m 755 "$ROOT/docker/entrypoint.sh" "$WORK/bin/budgetforce-entrypoint"
[ "${INSTALL_ONLY:-0}" = 1 ] && { echo "OK: installed (INSTALL_ONLY=1: no server started)"; exit 0; }

step "4. the entrypoint as an unprivileged user"
RUN_AS=()
if [ -n "${RECIPE_USER:-}" ]; then
  RUN_AS=(setpriv --reuid="$(id -u "$RECIPE_USER")" --regid="$(id -g "$RECIPE_USER")" --clear-groups --)
elif [ "$(id -u)" = 0 ]; then
  # the Dockerfile's user (numeric 10001, as Kubernetes' runAsNonRoot checks it)
  if ! id -u budgetforce > /dev/null 2>&1 && command -v useradd > /dev/null; then
    groupadd --gid 10001 budgetforce && useradd --no-create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin budgetforce
  fi
  id -u budgetforce > /dev/null 2>&1 && RUN_AS=(setpriv --reuid="$(id -u budgetforce)" --regid="$(id -g budgetforce)" --clear-groups --)
fi
if [ "${#RUN_AS[@]}" -gt 0 ] && ! command -v setpriv > /dev/null; then
  echo "no setpriv here: running as $(id -un) instead"; RUN_AS=()
fi
[ "${#RUN_AS[@]}" -eq 0 ] && echo "NOTE: no unprivileged user could be created or given: the entrypoint runs as $(id -un) ($(id -u))"
# the image's home (HF_HOME lives below it), owned by the user it runs as
mkdir -p "$WORK/home/.cache/huggingface" && [ "${#RUN_AS[@]}" -gt 0 ] && chown -R "${RUN_AS[1]#--reuid=}:${RUN_AS[2]#--regid=}" "$WORK/home"
# the image's ENV (docker/Dockerfile), with this run's model, flags and port
IMAGE_ENV=(
  PATH="$WORK/bin:$PATH" HOME="$WORK/home" PYTHONPATH="$PYTHONPATH"
  PYTHONUNBUFFERED=1 BUDGETFORCE_HOST=0.0.0.0 BUDGETFORCE_PORT="$PORT" BUDGETFORCE_SERVE_ARGS="$SERVE_ARGS"
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HOME="$WORK/home/.cache/huggingface"
)
if [ -n "$MODEL" ]; then
  if [ "${#RUN_AS[@]}" -gt 0 ] && ! "${RUN_AS[@]}" test -r "$MODEL/config.json"; then
    # e.g. a model under /root, which the user cannot read: a readable copy (dummy weights: small)
    rm -rf "$WORK/model" && cp -r "$MODEL" "$WORK/model" && chmod -R a+rX "$WORK/model" && MODEL="$WORK/model"
  fi
  IMAGE_ENV+=(BUDGETFORCE_MODEL="$MODEL")
fi
as_image() { env "${IMAGE_ENV[@]}" "${RUN_AS[@]}" "$@"; }
if [ "${#RUN_AS[@]}" -gt 0 ] && command -v nvidia-smi > /dev/null \
   && ! as_image python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
  # in a container the NVIDIA runtime opens the devices to the image's user; a bare machine may not
  echo "NOTE: uid ${RUN_AS[1]#--reuid=} cannot open the GPU on this machine ($(ls -l /dev/nvidiactl 2> /dev/null | cut -d' ' -f1,3,4)):"
  echo "      the entrypoint runs as $(id -un) ($(id -u)) instead"
  RUN_AS=()
fi
echo "uid inside: $(as_image budgetforce-entrypoint id -u)"  # the entrypoint runs a given command as is
as_image python3 -c "import budgetforce, vllm; print('budgetforce from', budgetforce.__file__)" \
  || fail "the image's user cannot import budgetforce and vllm (can it read $SITE?)"
# `budgetforce serve $BUDGETFORCE_SERVE_ARGS --dry-run`: the vLLM command line the image would run
as_image budgetforce-entrypoint --dry-run > "$LOG/dry-run.txt" 2>&1 || { cat "$LOG/dry-run.txt"; fail "dry run"; }
tail -1 "$LOG/dry-run.txt"
# A simple command, not the function: the background child execs env -> setpriv -> setsid -> the
# entrypoint -> budgetforce -> vLLM, one pid throughout, which leads the server's own process group.
env "${IMAGE_ENV[@]}" "${RUN_AS[@]}" setsid budgetforce-entrypoint > "$LOG/server.log" 2>&1 < /dev/null &
SERVER=$!
why() {  # the server log's first errors (the root cause sits above vLLM's last traceback), then its end
  grep -n -i "error\|exception\|denied\|no cuda\|out of memory\|free memory\|requested memory" "$LOG/server.log" | grep -v -i "warn" | head -25; echo ...; tail -12 "$LOG/server.log"
}
stop() {  # the server's process group: the API server and vLLM's engine processes
  kill -TERM -- "-$SERVER" 2> /dev/null || kill -TERM "$SERVER" 2> /dev/null
  for _ in $(seq 30); do kill -0 -- "-$SERVER" 2> /dev/null || return 0; sleep 1; done
  kill -KILL -- "-$SERVER" 2> /dev/null
}
trap stop EXIT
t0=$(date +%s)
until python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=4)" 2> /dev/null; do
  kill -0 "$SERVER" 2> /dev/null || { why; fail "the server exited"; }
  [ $(( $(date +%s) - t0 )) -gt "$HEALTH_TIMEOUT" ] && { why; fail "no /health after $HEALTH_TIMEOUT s"; }
  sleep 3
done
echo "healthy after $(( $(date +%s) - t0 )) s ($(date -u +%H:%M:%S))"
# the image's HEALTHCHECK command, as the image's user
as_image python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BUDGETFORCE_PORT', '8000'), timeout=4)" \
  && echo "HEALTHCHECK passes" || fail "the HEALTHCHECK command"
python3 - "$PORT" "$LOG/response.json" <<'PY' || fail "the budgeted chat"
import json, sys, urllib.request

port, path = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
model = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=30))["data"][0]["id"]
body = {"model": model, "messages": [{"role": "user", "content": "What is 12 + 30?"}],
        "max_thinking_tokens": 40, "max_completion_tokens": 80, "temperature": 0, "seed": 0}
req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
response = json.load(urllib.request.urlopen(req, timeout=300))
with open(path, "w") as fh:
    json.dump(response, fh, indent=1)
budget = response["choices"][0].get("budget")
print("system_fingerprint:", response.get("system_fingerprint"))
print("budget:", json.dumps(budget))
assert isinstance(budget, dict) and budget["thinking_tokens"] <= 40, budget
PY
if [ -n "${CHECKS:-}" ] && [ -n "$MODEL" ]; then  # CHECKS="logit-margin,vote": acceptance.py's checks on this server too
  timeout 240 python3 "$ROOT/benchmarks/gpu/acceptance.py" --only "$CHECKS" --out "$LOG/acceptance-checks.json" \
    --target budgetforce-serve "http://127.0.0.1:$PORT" "$MODEL" "$MODEL" 2>&1 | grep -v -i warn | tail -8
fi
echo "OK: the image recipe installs, starts as $(as_image id -un 2> /dev/null || as_image id -u) and forces the budget (logs: $LOG)"
