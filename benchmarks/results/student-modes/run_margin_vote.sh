#!/usr/bin/env bash
# Issue 22's two dials on the bundled student: the logit-margin exit and the vote over n thinkings,
# beside s1's points (natural, min/max, forced waits at equal total thinking tokens).
# Server (one terminal), the one server (vLLM's own, with budgetforce's budget layer):
#   budgetforce serve --port 8011 --dtype float32 --max-num-seqs 512 --max-model-len 2048 \
#     --max-num-batched-tokens 65536
set -euo pipefail
OUT=${OUT:-benchmarks/results/student-modes/margin-vote}
BF=${BF:-.venv/bin/budgetforce}
N=${N:-500}
COMMON=(--eval student -n "$N" --base-url http://127.0.0.1:8011/v1 --temperature 0.6 --top-p 0.95 -c 64
        --no-progress --max-tokens 1024
        --tokenizer budgetforce/student/model)  # unbudgeted requests carry no thinking count: count those here
MARGINS=${MARGINS:-"1 4 16"}
margin_points=()
for m in $MARGINS; do
  margin_points+=(--point "{\"exit_margin\": $m, \"exit_breaks\": [\".\\n\"]}")
  margin_points+=(--point "{\"min_thinking_tokens\": 128, \"max_thinking_tokens\": 256, \"exit_margin\": $m, \"exit_breaks\": [\".\\n\"]}")
done
# 1. the logit-margin exit, each beside the same request without it
"$BF" bench accuracy "${COMMON[@]}" --out "$OUT/margin" --baseline --min-max 128:256 "${margin_points[@]}"
# 2. the vote at n = 2, 4, 8 beside s1's forced waits (1, 3, 7 waits: about the same total thinking)
"$BF" bench accuracy "${COMMON[@]}" --out "$OUT/vote" --baseline --waits 1,3,7 --waits-min 896 --votes 2,4,8
