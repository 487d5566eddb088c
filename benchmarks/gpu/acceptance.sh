#!/usr/bin/env bash
# The GPU acceptance run (one call, ~6-8 minutes): three servers started as users start them, then
# benchmarks/gpu/acceptance.py against each, results and server logs under $OUT as they complete.
#   1. `budgetforce serve` on the R1-Distill-Qwen-1.5B shape (dummy weights, the real tokenizer)
#   2. a stock vLLM server with the two flags (`--logits-processors`, `--middleware`) on the same shape
#   3. `budgetforce serve` with no `--model` (the bundled student, real weights: greedy is stable there)
# Usage (after the bundle's parts were carried and unpacked, see benchmarks/gpu/run.sh):
#   bash benchmarks/gpu/acceptance.sh VLLM_VERSION_LABEL
set -uo pipefail
LABEL="$1"
# servers an earlier run left on this machine (setsid) hold GPU memory: stop them first
pkill -f "vllm.entrypoints.openai.api_server" 2>/dev/null; pkill -f "budgetforce.cli serve" 2>/dev/null; sleep 5
pkill -9 -f "vllm.entrypoints.openai.api_server" 2>/dev/null; pkill -9 -f "EngineCore" 2>/dev/null; sleep 2
# ... and the driver frees their memory a while after they exit: wait for it (seen: a start that
# followed at once found "No available memory for the cache blocks")
for _ in $(seq 60); do
  used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
  [ -z "$used" ] || [ "$used" -lt 2000 ] && break
  sleep 2
done
export PYTHONUNBUFFERED=1 VLLM_LOGGING_LEVEL=WARNING TOKENIZERS_PARALLELISM=false
# the servers run from a copy outside the working tree: the next call lays the tree anew
rm -rf /root/bf && mkdir -p /root/bf && cp -r budgetforce benchmarks /root/bf/ && cp -r "${TOK:-.gpu-tok}" /root/bf/tok
# run from a copy without installing: server/ goes where the wheel puts it (budgetforce.server)
cp -r server /root/bf/budgetforce/server
cd /root/bf
export PYTHONPATH="${SITE:-/tmp/site}:/root/bf${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}"
MODEL=/root/bf/r1-1.5b && mkdir -p $MODEL && cp tok/* $MODEL/ && cp benchmarks/shapes/r1-distill-qwen-1.5b.json $MODEL/config.json
COMMON=(--load-format dummy --max-model-len 4096 --gpu-memory-utilization 0.30 --seed 0)
setsid python3 -m budgetforce.cli serve --model $MODEL --served-model-name r1 --port 8001 "${COMMON[@]}" \
  > "$OUT/server-budgetforce-$LABEL.log" 2>&1 < /dev/null &
declare -A PID; PID[8001]=$!
sleep 15
BUDGETFORCE_STATS_BOARD=bf-stock-board setsid python3 -m vllm.entrypoints.openai.api_server --model $MODEL \
  --served-model-name r1 --port 8002 "${COMMON[@]}" --logits-processors budgetforce.vllm:BudgetForcing \
  --middleware budgetforce.server.BudgetMiddleware --reasoning-parser deepseek_r1 \
  > "$OUT/server-vllm-$LABEL.log" 2>&1 < /dev/null &
PID[8002]=$!
sleep 15
setsid python3 -m budgetforce.cli serve --port 8003 --gpu-memory-utilization 0.10 --seed 0 \
  > "$OUT/server-student-$LABEL.log" 2>&1 < /dev/null &
PID[8003]=$!
t0=$(date +%s)
for port in 8001 8002 8003; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    if ! kill -0 "${PID[$port]}" 2>/dev/null; then echo "the server on port $port exited"; break; fi  # no need to wait
    if [ $(( $(date +%s) - t0 )) -gt 330 ]; then echo "port $port not healthy after 330 s"; tail -30 "$OUT"/server-*.log; break; fi
    sleep 3
  done
done
echo "servers up after $(( $(date +%s) - t0 )) s"
META=$(python3 -c "import json, torch, vllm, os; print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__,
  'device': torch.cuda.get_device_name(), 'runner_v2_env': os.environ.get('VLLM_USE_V2_MODEL_RUNNER'),
  'command': 'bash benchmarks/gpu/acceptance.sh $LABEL (servers: see server-*.log)'}))")
timeout 400 python3 benchmarks/gpu/acceptance.py --meta "$META" --out "$OUT/acceptance-$LABEL.json" \
  --target budgetforce-serve http://127.0.0.1:8001 r1 $MODEL \
  --target vllm-serve+flags http://127.0.0.1:8002 r1 $MODEL \
  --target student http://127.0.0.1:8003 budgetforce /root/bf/budgetforce/student/model \
  2>&1 | grep -v -i "warn" | tee "$OUT/acceptance-$LABEL.log"
grep -h -i "runner\|budgetforce\|Traceback\|Error" "$OUT"/server-*.log | grep -v "^\s*$" | sort | uniq -c | sort -rn | head -40 > "$OUT/server-grep-$LABEL.txt"
curl -s http://127.0.0.1:8001/metrics | grep "^budgetforce" > "$OUT/metrics-$LABEL.txt"
