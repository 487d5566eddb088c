#!/usr/bin/env bash
# Train student variants on the lent GPU (torch + transformers only, no vLLM there) and score them
# with the transformers backend of benchmarks/student_scaling.py. Usage: bash gpu_run.sh NAME:ARGS ...
# e.g. bash benchmarks/results/student/gpu_run.sh "A:--hidden 256 --layers 8"
# The package is imported from a clean copy so that only budgetforce.student is needed.
set -euo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/out}
PK=/tmp/pk
rm -rf $PK && mkdir -p $PK/budgetforce && touch $PK/budgetforce/__init__.py
cp -r budgetforce/student $PK/budgetforce/
export PYTHONPATH=$PK
nvidia-smi -L
python -c "import sys, torch, transformers, tokenizers; print(sys.version.split()[0], torch.__version__, transformers.__version__, tokenizers.__version__)"
pids=()
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  (cd $PK && python -m budgetforce.student.train --out $OUT/$name --device cuda --max-shard-size 12MB $args \
      > $OUT/train_$name.log 2>&1) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p || echo "a training run failed"; done
for spec in "$@"; do
  name=${spec%%:*}
  tail -3 $OUT/train_$name.log
  (cd /tmp && python $REPO/benchmarks/student_scaling.py --backend hf --device cuda --model $OUT/$name --n 500 \
      --out $OUT/eval_$name > $OUT/eval_$name.log 2>&1 && tail -12 $OUT/eval_$name.log) || tail -20 $OUT/eval_$name.log
done
