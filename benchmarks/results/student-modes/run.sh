#!/usr/bin/env bash
# The thinking modes on the bundled student: accuracy vs mean thinking tokens beside s1's points.
# Server (one terminal): budgetforce serve --legacy-server --port 8011 --engine-arg dtype=float32 \
#   --engine-arg max_num_seqs=512 --engine-arg max_model_len=2048 --engine-arg max_num_batched_tokens=65536
# (the legacy server runs budgetforce's Python engine, the only HTTP path for early exit).
set -euo pipefail
OUT=${OUT:-benchmarks/results/student-modes}
BF=${BF:-.venv/bin/budgetforce}
COMMON=(--eval student -n 500 --base-url http://127.0.0.1:8011/v1 --temperature 0.6 --top-p 0.95 -c 64 --no-progress)
LEAD='"probe_lead": "\n\nThe answer is", "probe_max_tokens": 8'
"$BF" bench accuracy "${COMMON[@]}" --out "$OUT/cap1024" --max-tokens 1024 \
  --baseline --max 24,48,72 --waits 1,2 --waits-min 896 --min-max 128:256 \
  --point '{"banned_thinking_strings": ["Wait"]}' \
  --point '{"alpha_moment_tokens": 150, "wait_probability": 0.5, "wait_decay": "linear", "paragraph_breaks": ["\n"]}' \
  --point '{"alpha_moment_tokens": 100, "wait_probability": 0.5, "wait_decay": "constant", "paragraph_breaks": [".\n"]}' \
  --point "{\"probe_every\": 16, \"probe_agree\": 2, $LEAD}" \
  --point "{\"min_thinking_tokens\": 128, \"max_thinking_tokens\": 256, \"probe_every\": 16, \"probe_agree\": 2, $LEAD}" \
  --point '{"max_answer_tokens": 16}' \
  --point '{"thinking_intervention": "Let me check each step carefully.\n"}'
"$BF" bench accuracy "${COMMON[@]}" --out "$OUT/cap100" --max-tokens 100 \
  --baseline --point '{"max_answer_tokens": 16}'
