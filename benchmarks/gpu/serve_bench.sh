#!/usr/bin/env bash
# The HTTP benchmark a user would run: `vllm bench serve` against `vllm serve` and `budgetforce
# serve` on one GPU (benchmarks/gpu/serve_bench.py). Two steps, each one call of run.sh:
#   up     start three servers with setsid (they outlive the call; ~4 min to healthy) and return:
#          8101 `vllm serve` (--reasoning-parser deepseek_r1: vLLM's native thinking_token_budget),
#          8102 `budgetforce serve`, 8103 `budgetforce serve --api-server-count 4`;
#          all on the R1-Distill-Qwen-1.5B shape, dummy weights, the real tokenizer, 0.18 of the GPU each
#   bench  wait until they are healthy, then run serve_bench.py (RUNS, CONC, REPS, CALL_S, PROFILE;
#          CHECKS: acceptance.py's checks named so, on the budgetforce server, before the runs);
#          its state stays in /root/sb/state.json, so a later bench call adds to the same table
# Usage (after the bundle was carried, see run.sh):  bash benchmarks/gpu/run.sh BUNDLE serve-up | serve-bench
set -uo pipefail
STEP="$1"
SB=/root/sb
export PYTHONUNBUFFERED=1 VLLM_LOGGING_LEVEL=WARNING TOKENIZERS_PARALLELISM=false
case "$STEP" in
  up)
    # [v]llm: the pattern must not match this shell's own command line
    pkill -f "[v]llm.entrypoints.openai.api_server" 2>/dev/null; pkill -f "[b]udgetforce.server.vllm_cli" 2>/dev/null
    pkill -f "[E]ngineCore" 2>/dev/null; sleep 3
    for _ in $(seq 60); do  # the driver frees their memory a while after they exit
      used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
      [ -z "$used" ] || [ "$used" -lt 2000 ] && break
      sleep 2
    done
    # the servers run from a copy outside the working tree: the next call lays the tree anew
    rm -rf $SB && mkdir -p $SB/logs && cp -r budgetforce benchmarks $SB/ && cp -r "${TOK:-.gpu-tok}" $SB/tok \
      && cp -r server $SB/budgetforce/server  # where the wheel puts it (budgetforce.server)
    cd $SB || exit 1
    export PYTHONPATH="${SITE:-/tmp/site}:$SB${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}"
    M=$SB/r1-1.5b && mkdir -p $M && cp tok/* $M/ && cp benchmarks/shapes/r1-distill-qwen-1.5b.json $M/config.json
    COMMON=(--model $M --served-model-name r1 --load-format dummy --max-model-len 2048 --max-num-seqs 256
            --gpu-memory-utilization "${MEM:-0.18}" --kv-cache-memory-bytes "${KV_BYTES:-10737418240}" --seed 0)
    # A fixed KV cache (10 GiB; 256 sequences of 128 + 1,024 tokens of the 1.5B shape need 8.5 GB): three servers
    # profiling at once each count the others' growing memory as their own, and on an 80 GB H100 the
    # third found none left at 0.18 (2026-12-06); with the size given, vLLM skips that accounting.
    setsid python3 -m budgetforce.cli serve --port 8102 "${COMMON[@]}" > $SB/logs/server-bf.log 2>&1 < /dev/null &
    sleep 15
    setsid python3 -m vllm.entrypoints.openai.api_server --port 8101 "${COMMON[@]}" --reasoning-parser deepseek_r1 \
      > $SB/logs/server-vllm.log 2>&1 < /dev/null &
    sleep 15
    setsid python3 -m budgetforce.cli serve --port 8103 "${COMMON[@]}" --api-server-count 4 \
      > $SB/logs/server-bf4.log 2>&1 < /dev/null &
    echo "three servers starting (logs in $SB/logs)" ;;
  bench)
    cd $SB || { echo "no $SB: run the up step first"; exit 1; }
    export PYTHONPATH="${SITE:-/tmp/site}:$SB${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}"
    # py-spy's binary, carried in the bundle: pip --target leaves it in the wheel's data scripts, not executable
    SPY=$(find "${SITE:-/tmp/site}" -maxdepth 3 -name py-spy -type f 2>/dev/null | head -1)
    [ -n "$SPY" ] && chmod +x "$SPY" && export PATH="$(dirname "$SPY"):$PATH"
    t0=$(date +%s)  # CALL_S: seconds this step may take in all (the call's limit less the unpack); the runs get what is left
    # Each server until healthy, or gone (its log names the failure), or 400 s: the runs go on with
    # the healthy ones (a server that failed to start must not cost the others' measurements).
    TARGETS=()
    for spec in vllm:8101:server-vllm bf:8102:server-bf bf4:8103:server-bf4; do
      IFS=: read -r name port log <<< "$spec"
      until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
        if [ $(( $(date +%s) - t0 )) -gt 400 ] || ! pgrep -f "[-]-port $port" > /dev/null; then
          echo "$name (port $port) not healthy after $(( $(date +%s) - t0 )) s: its runs are left out"
          grep -E "Error|error:" "$SB/logs/$log.log" | tail -3; port=""; break
        fi
        sleep 3
      done
      [ -n "$port" ] && TARGETS+=(--target "$name" "http://127.0.0.1:$port" r1)
    done
    [ ${#TARGETS[@]} -eq 0 ] && { echo "no server healthy"; tail -n 20 $SB/logs/*.log; exit 1; }
    echo "healthy after $(( $(date +%s) - t0 )) s: ${TARGETS[*]}"
    if [ -n "${CHECKS:-}" ]; then  # CHECKS="logit-margin,vote": those acceptance checks on `budgetforce serve` first
      timeout 120 python3 benchmarks/gpu/acceptance.py --only "$CHECKS" --out "$OUT/acceptance-modes.json" \
        --target budgetforce-serve http://127.0.0.1:8102 r1 $SB/tok 2>&1 | grep -v -i "warn" | tee "$OUT/acceptance-modes.log"
    fi
    api() { pgrep -f "[v]llm.entrypoints.openai.api_server.*--port $1" | head -1; }
    core() { pgrep -f "[E]ngineCore" | while read -r p; do
               [ "$(ps -o sid= -p "$p" | tr -d ' ')" = "$(ps -o sid= -p "$1" | tr -d ' ')" ] && echo "$p"; done | head -1; }
    BF=$(api 8102); VL=$(api 8101)
    PROFILE_ARGS=()
    if [ -n "${PROFILE:-}" ] && [ -n "$BF" ]; then  # PROFILE="bf:min:256 bf:none:256": py-spy on API server and engine core
      for spec in $PROFILE; do PROFILE_ARGS+=("$spec:api=$BF,core=$(core "$BF")"); done
    fi
    META=$(python3 -c "import json, torch, vllm, datetime; print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__,
      'device': torch.cuda.get_device_name(), 'date': datetime.date.today().isoformat(),
      'command': 'bash benchmarks/gpu/run.sh BUNDLE serve-up; bash benchmarks/gpu/run.sh BUNDLE serve-bench',
      'servers': {'vllm': 'vllm serve (api_server) --reasoning-parser deepseek_r1', 'bf': 'budgetforce serve',
                  'bf4': 'budgetforce serve --api-server-count 4'},
      'common': '--load-format dummy --max-model-len 2048 --max-num-seqs 256 --gpu-memory-utilization ${MEM:-0.18} --kv-cache-memory-bytes ${KV_BYTES:-10737418240} --seed 0'}))" 2>/dev/null | tail -1)
    LEFT=$(( ${CALL_S:-560} - ($(date +%s) - t0) ))
    echo "$LEFT s left for the runs"
    timeout "$(( LEFT - 10 ))" python3 benchmarks/gpu/serve_bench.py --tokenizer $SB/r1-1.5b --state $SB/state.json --out "$OUT" \
      "${TARGETS[@]}" \
      --concurrency ${CONC:-256} --reps "${REPS:-3}" --deadline-s "$(( LEFT - 30 ))" --meta "$META" \
      --runs ${RUNS:-vllm:none vllm:native bf:none bf:min bf:max bf:worst bf4:none@256 bf4:min@256} \
      ${PROFILE_ARGS[@]:+--profile "${PROFILE_ARGS[@]}"} 2>&1 | grep -v -i "warn" > "$OUT/serve_bench.log"
    tail -40 "$OUT/serve_bench.log"
    mkdir -p "$OUT/logs" && for f in $SB/logs/*.log; do tail -c 2000000 "$f" > "$OUT/logs/$(basename "$f")"; done
    for port in 8102 8103; do curl -s "http://127.0.0.1:$port/metrics" | grep "^budgetforce" > "$OUT/metrics-$port.txt"; done ;;
esac
