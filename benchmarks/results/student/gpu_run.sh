#!/usr/bin/env bash
# Train student variants on the lent GPU (torch + transformers only, no vLLM there) and score them
# with the transformers backend of benchmarks/student_scaling.py. Usage: bash gpu_run.sh NAME:ARGS ...
# e.g. bash benchmarks/results/student/gpu_run.sh "A:--hidden 256 --layers 8"
# The package is imported from a clean copy so that only budgetforce.student is needed. Results
# come back as at most 8 files: each model folder as a tar split into 15 MB parts, logs in one tar.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$(pwd)
OUT=${OUT:-/tmp/out}
WORK=/tmp/work; mkdir -p $WORK
PK=/tmp/pk
rm -rf $PK && mkdir -p $PK/budgetforce && touch $PK/budgetforce/__init__.py
cp -r budgetforce/student $PK/budgetforce/
export PYTHONPATH=$PK
nvidia-smi -L
python -c "import sys, torch, transformers, tokenizers; print(sys.version.split()[0], torch.__version__, transformers.__version__, tokenizers.__version__)"
pids=()
for spec in "$@"; do
  name=${spec%%:*}; args=${spec#*:}
  (cd $PK && python -m budgetforce.student.train --out $WORK/$name --device cuda $args \
      > $WORK/train_$name.log 2>&1) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p || echo "a training run failed"; done
for spec in "$@"; do
  name=${spec%%:*}
  grep -v Writing $WORK/train_$name.log | tail -4
  (cd /tmp && python $REPO/benchmarks/student_scaling.py --backend hf --device cuda --model $WORK/$name --n 500 \
      --out $WORK/eval_$name > $WORK/eval_$name.log 2>&1 && tail -11 $WORK/eval_$name.log) || tail -20 $WORK/eval_$name.log
  (cd $WORK && tar cf - $name | split -b 15M - $OUT/model_$name.tar.part_)
done
(cd $WORK && tar czf $OUT/logs.tgz train_*.log eval_* */train_log.csv */train_record.json)
ls -la $OUT
