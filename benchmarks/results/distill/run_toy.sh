#!/usr/bin/env bash
# The CPU toy run of `budgetforce distill` recorded in README.md here. Run from the repository root
# with the teacher (the bundled student) already serving:
#   budgetforce serve --port 8571 --enforce-eager --max-num-batched-tokens 65536 --max-model-len 1024
set -euo pipefail
RUN=${RUN:-runs/distill-toy}
TEACHER=${TEACHER:-http://127.0.0.1:8571/v1}
STEPS=${STEPS:-150}

# 1. teacher traces: the bundled student on its own task (train split), 4 samples per problem,
#    rejection by exact answer; a second run with budget forcing (one forced "Wait")
budgetforce distill generate --base-url "$TEACHER" --dataset student -n 300 -k 4 \
  --temperature 0.6 --top-p 0.95 --max-tokens 512 --out "$RUN/generate" --no-progress
budgetforce distill generate --base-url "$TEACHER" --dataset student -n 300 -k 4 \
  --temperature 0.6 --top-p 0.95 --max-tokens 768 --min-thinking-tokens 400 --max-waits 1 \
  --out "$RUN/generate-wait1" --no-progress
# 2. the three targets over the problems with a kept trace
budgetforce distill build --from "$RUN/generate" --out "$RUN/targets"
budgetforce distill build --from "$RUN/generate-wait1" --out "$RUN/targets-wait1"
# 3. LoRA on the bundled student, one adapter per target; a fresh 2-layer student on the teacher target
for target in direct human teacher; do
  budgetforce distill train --data "$RUN/targets/$target.jsonl" --out "$RUN/students/$target" \
    --steps "$STEPS" --batch-size 8 --lr 5e-4 --lora-r 16 --device cpu
done
budgetforce distill train --data "$RUN/targets-wait1/teacher.jsonl" --out "$RUN/students/teacher-wait1" \
  --steps "$STEPS" --batch-size 8 --lr 5e-4 --lora-r 16 --device cpu
budgetforce distill init --out "$RUN/fresh" --hidden 128 --layers 2
budgetforce distill train --base "$RUN/fresh" --data "$RUN/targets/teacher.jsonl" --out "$RUN/students/fresh-teacher" \
  --steps "$STEPS" --batch-size 8 --lr 3e-3 --lora-r 16 --device cpu
# 4. the seed's table on the task's held-out split (greedy), the untuned student as the reference row;
#    each model folder is served by `budgetforce serve` in turn (the teacher server can be stopped first)
budgetforce distill eval --eval student -n 200 --max-tokens 512 --out "$RUN/eval" --no-progress \
  -t bundled-untuned=budgetforce/student/model \
  -t direct="$RUN/students/direct/merged" -t human="$RUN/students/human/merged" \
  -t teacher="$RUN/students/teacher/merged" -t teacher-wait1="$RUN/students/teacher-wait1/merged" \
  -t fresh-teacher="$RUN/students/fresh-teacher/merged"
