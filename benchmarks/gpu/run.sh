#!/usr/bin/env bash
# One measurement call on the lent GPU, after the vLLM bundle's parts were carried (../shared/gpu/README.md).
# Usage: bash benchmarks/gpu/run.sh BUNDLE_DIR "STAGE [STAGE ...]"   (stages run in order; STAGE: kernel | image | serve-up | serve-bench | v2-children | step | tp256 | tp-rest | tp-conc | tp7b | modes; v2-step | v2-tp256 | v2-greedy | tp-longtail;
#        accept: the serving acceptance run, benchmarks/gpu/acceptance.sh, on either bundle)
# A bundle whose name holds 026 (033) unpacks into /tmp/site026 (/tmp/site033; its unpack.sh edited so), so the stacks fit one machine.
# Logs and JSON go to $OUT.
set -uo pipefail
BUNDLE="$1"; STAGES="$2"
export PYTHONUNBUFFERED=1 VLLM_LOGGING_LEVEL=WARNING TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SITE=/tmp/site; case "$BUNDLE" in *026*) SITE=/tmp/site026 ;; *033*) SITE=/tmp/site033 ;; esac
export SITE
bash "$BUNDLE/unpack/unpack.sh" > "$OUT/unpack.log" 2>&1 || { tail -20 "$OUT/unpack.log"; exit 3; }
export PYTHONPATH=$SITE:$PWD
python3 -c "import torch, triton, vllm; print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())" 2>&1 | tail -1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
SHAPE=benchmarks/shapes/r1-distill-qwen-1.5b.json
v032_fixes() {  # measurement glue for a carried torch (2.13 for vLLM 0.32, 2.14 for 0.33) on this image (../shared/gpu/README.md)
  python3 -m pip uninstall -y -q torchvision torchaudio > /dev/null 2>&1 || true
  export LD_PRELOAD="$(bash benchmarks/gpu/nccl_shim.sh)"
  chmod +x $SITE/triton/backends/nvidia/bin/* 2>/dev/null || true  # the archive dropped the exec bits
  mkdir -p /tmp/vllmfix && printf 'import sys, types\nfor name in ("minimax_m3_msa_warmup", "qwen_vl_triton_warmup", "step5_dsa_warmup"):\n    m = types.ModuleType("vllm.model_executor.warmup." + name)\n    setattr(m, name, lambda *a, **k: None)\n    sys.modules[m.__name__] = m\n' > /tmp/vllmfix/sitecustomize.py
  export EXTRA_PYTHONPATH=/tmp/vllmfix
}
gpu_quiet() {  # wait (up to 2 min) until the GPU holds < 2 GB: the driver frees an exited process's memory a while later
  for _ in $(seq 60); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    [ -z "$used" ] || [ "$used" -lt 2000 ] && break
    sleep 2
  done
  echo "GPU memory used: ${used:-?} MiB; processes: $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null | tr '\n' ' ')"
}
for STAGE in $STAGES; do
echo "== stage $STAGE ($(date -u +%H:%M:%S))"
case "$STAGE" in
  kernel)  # the compiled Triton kernel against the torch path (tests/scripts/kernel_vs_torch.py on cuda), then
    # what the modes cost the step for requests without them (benchmarks/modes_step_cost.py; needs .gpu-base carried)
    [ "$SITE" != /tmp/site026 ] && v032_fixes
    for args in "0 history" "1 history s1-only" "2 window" "3 window s1-only"; do  # the CPU test's four cases
      echo "kernel_vs_torch $args cuda: $(timeout 120 python3 tests/scripts/kernel_vs_torch.py $args cuda 2>&1 | grep -v -i warn | tail -3)"
    done 2>&1 | tee "$OUT/kernel_vs_torch_cuda.log"
    for b in ${STEP_BATCHES:-256}; do
      timeout 150 python3 -m benchmarks.modes_step_cost --baseline-dir .gpu-base --batch $b --json "$OUT/modes_step_cost_$b.json" \
        2>&1 | grep -v -i warn | tee "$OUT/modes_step_cost_$b.log" | tail -10
    done ;;
  accept)
    [ "$SITE" != /tmp/site026 ] && v032_fixes
    LABEL="$(python3 -c 'import vllm; print(vllm.__version__)' 2>/dev/null | tail -1)"
    SITE=$SITE TOK=.gpu-tok bash benchmarks/gpu/acceptance.sh "$LABEL" ;;
  image)  # the GPU image's install recipe without a container engine (benchmarks/gpu/image_recipe.sh, docker/Dockerfile)
    [ "$SITE" != /tmp/site026 ] && v032_fixes
    M=/root/r1-image && mkdir -p $M && cp .gpu-tok/* $M/ && cp $SHAPE $M/config.json
    gpu_quiet  # vLLM counts what other processes take while it profiles as its own: start on an idle GPU
    # eager: the recipe's point is the install, the entrypoint and a budgeted answer, not compiled speed.
    # DEBUG: vLLM's memory accounting (initial free, requested, after profiling) lands in the server log.
    for who in "" root; do  # a second try as root only when the unprivileged one fails: says whether the user is the cause
      OUT=/tmp/image-recipe/out RECIPE_USER=$who VLLM_LOGGING_LEVEL=DEBUG SITE=$SITE HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-240} \
        SERVE_ARGS="${SERVE_ARGS:---load-format dummy --gpu-memory-utilization 0.3 --max-model-len 2048 --enforce-eager}" \
        timeout ${RECIPE_S:-360} bash benchmarks/gpu/image_recipe.sh $M 2>&1 | grep -v -i "warn" > "$OUT/image_recipe${who:+_$who}.log"
      ok=${PIPESTATUS[0]}
      tail -c 3000000 /tmp/image-recipe/out/image-recipe/server.log > "$OUT/image_server${who:+_$who}.log" 2>/dev/null
      for f in response.json acceptance-checks.json; do cp /tmp/image-recipe/out/image-recipe/$f "$OUT/image_$f" 2>/dev/null; done
      grep -i "memory\|GiB\|KV cache" "$OUT/image_server${who:+_$who}.log" | grep -v -i "warn" | head -20
      tail -25 "$OUT/image_recipe${who:+_$who}.log"; nvidia-smi --query-gpu=memory.used --format=csv,noheader
      [ "$ok" = 0 ] && break
    done ;;
  serve-up|serve-bench)  # the HTTP benchmark (benchmarks/gpu/serve_bench.sh): start the servers, then measure
    [ "$SITE" != /tmp/site026 ] && v032_fixes
    SITE=$SITE TOK=.gpu-tok bash benchmarks/gpu/serve_bench.sh "${STAGE#serve-}" ;;
  v2-children)  # n > 1 on runner V2: a trace of the adapter inside one in-process engine (v2_children.py)
    [ "$SITE" != /tmp/site026 ] && v032_fixes
    export PYTHONPATH=$PYTHONPATH${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
    M=/root/r1-children && mkdir -p $M && cp .gpu-tok/* $M/ && cp $SHAPE $M/config.json
    VLLM_USE_V2_MODEL_RUNNER=1 timeout 300 python3 benchmarks/gpu/v2_children.py --model $M --out "$OUT/v2_children.json" \
      2>&1 | tee "$OUT/v2_children.log" | grep -v -i "warn\|info" | tail -20 ;;
  v2-step)
    python3 -m pip uninstall -y -q torchvision torchaudio > /dev/null 2>&1 || true
    export LD_PRELOAD="$(bash benchmarks/gpu/nccl_shim.sh)"
    chmod +x /tmp/site/triton/backends/nvidia/bin/* 2>/dev/null || true  # the archive dropped the exec bits
    python3 -c "import torch; print(torch.cuda.is_available(), torch.randn(4, device='cuda').sum().item())" 2>&1 | tail -3
    python3 -m benchmarks.processor_step --device cuda --batch 1 32 256 --v1 --json "$OUT/processor_step_032.json" 2>&1 | grep -v -i warn | tee "$OUT/processor_step_032.log" | tail -32 ;;
  v2-tp256)  # engine level, runner V2, concurrency 256, on whichever carried vLLM the bundle holds
    v032_fixes
    export PYTHONPATH=$PYTHONPATH:$EXTRA_PYTHONPATH
    V="$(python3 -c 'import vllm; print(vllm.__version__)' 2>/dev/null | tail -1)"
    VLLM_USE_V2_MODEL_RUNNER=1 timeout 570 python3 -m benchmarks.throughput --shape $SHAPE --tokenizer .gpu-tok --concurrency 256 --new-tokens 1024 --reps 3 \
      --configs plain idle engine engine-max native --out "$OUT/tp_1.5b_c256_v2_$V.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp256_v2_$V.log" | tail -14 ;;
  v2-greedy)
    python3 -m pip uninstall -y -q torchvision torchaudio > /dev/null 2>&1 || true
    export LD_PRELOAD="$(bash benchmarks/gpu/nccl_shim.sh)"
    chmod +x /tmp/site/triton/backends/nvidia/bin/* 2>/dev/null || true
    mkdir -p /tmp/vllmfix && printf 'import sys, types\nfor name in ("minimax_m3_msa_warmup", "qwen_vl_triton_warmup", "step5_dsa_warmup"):\n    m = types.ModuleType("vllm.model_executor.warmup." + name)\n    setattr(m, name, lambda *a, **k: None)\n    sys.modules[m.__name__] = m\n' > /tmp/vllmfix/sitecustomize.py
    export PYTHONPATH=/tmp/vllmfix:$PYTHONPATH
    python3 benchmarks/gpu/v1_v2_greedy.py --shape $SHAPE --tokenizer .gpu-tok 2>&1 | tee "$OUT/v1_v2_greedy.log" | grep -v -i "warn\|info" | tail -22 ;;
  modes)
    python3 benchmarks/gpu/modes_check.py --n 24 2>&1 | tee "$OUT/modes_check.log" | grep -v -i "warn\|info" | tail -14 ;;
  step)
    python3 -m benchmarks.processor_step --device cuda --batch 1 32 256 --v1 --json "$OUT/processor_step.json" 2>&1 | grep -v -i warn | tee "$OUT/processor_step.log" | tail -32 ;;
  tp256)
    python3 -m benchmarks.throughput --shape $SHAPE --tokenizer .gpu-tok --concurrency 256 --new-tokens 1024 --reps 3 \
      --configs plain idle engine engine-max --out "$OUT/tp_1.5b_c256.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp256.log" | tail -12 ;;
  tp-rest)
    python3 -m benchmarks.throughput --shape $SHAPE --tokenizer .gpu-tok --concurrency 256 --new-tokens 1024 --reps 3 \
      --configs plain engine rounds s1loop native --out "$OUT/tp_1.5b_c256_rest.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp_rest.log" | tail -12 ;;
  tp-longtail)  # engine level, the long-tailed workload: budgetforce's strategies against s1's offline loop
    v032_fixes
    export PYTHONPATH=$PYTHONPATH:$EXTRA_PYTHONPATH
    VLLM_USE_V2_MODEL_RUNNER=1 timeout 570 python3 -m benchmarks.throughput --shape $SHAPE --tokenizer .gpu-tok --concurrency 256 \
      --new-tokens 1024 --reps 3 --workload longtail --configs plain engine rounds s1loop \
      --out "$OUT/tp_longtail.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp_longtail.log" | tail -12 ;;
  tp-conc)
    python3 -m benchmarks.throughput --shape $SHAPE --tokenizer .gpu-tok --concurrency 1 32 --new-tokens 512 --reps 3 \
      --configs plain idle engine engine-max --out "$OUT/tp_1.5b_c1_32.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp_conc.log" | tail -12 ;;
  tp7b)
    python3 -m benchmarks.throughput --shape benchmarks/shapes/r1-distill-qwen-7b.json --tokenizer .gpu-tok --concurrency 256 \
      --new-tokens 1024 --reps 3 --configs plain idle engine --out "$OUT/tp_7b_c256.json" 2>&1 | grep -v -i "warn\|info" | tee "$OUT/tp7b.log" | tail -12 ;;
esac
done
