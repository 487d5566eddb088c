#!/usr/bin/env bash
# torch 2.13/2.14 (carried for vLLM 0.32/0.33; $SITE, default /tmp/site) links NCCL symbols newer than the GPU image's NCCL. One GPU
# never calls them, so a stub library that defines each missing symbol (returning ncclInternalError)
# lets torch load there. Measurement glue only: never for multi-GPU runs. Prints the LD_PRELOAD path.
set -euo pipefail
SITE="${SITE:-/tmp/site}"
LIB=$SITE/torch/lib/libtorch_cuda.so
NCCL="$(python3 - "$SITE" <<'PY'
import glob, os, sys
cands = [p for d in sys.path if d and d != sys.argv[1] for p in glob.glob(os.path.join(d, "nvidia/nccl/lib/libnccl.so*"))]
print(cands[0] if cands else "")
PY
)"
[ -n "$NCCL" ] || { echo "no NCCL in the image" >&2; exit 3; }
comm -23 <(nm -D --undefined-only "$LIB" | awk '{print $2}' | grep -E '^nccl' | sed 's/@.*//' | sort -u) \
         <(nm -D --defined-only "$NCCL" | awk '{print $3}' | sed 's/@.*//' | sort -u) > /tmp/nccl_missing.txt
{ echo '/* stubs for NCCL symbols the image lacks */'; while read -r s; do echo "int $s(void) { return 3; }"; done < /tmp/nccl_missing.txt; } > /tmp/nccl_stub.c
gcc -shared -fPIC -o /tmp/libnccl_stub.so /tmp/nccl_stub.c
echo "stubbed: $(tr '\n' ' ' < /tmp/nccl_missing.txt)" >&2
echo /tmp/libnccl_stub.so
