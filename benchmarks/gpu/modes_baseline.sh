#!/usr/bin/env bash
# Copy the forcing slots as they were at a commit (default 330fbb9, before the thinking modes) into a
# package `budgetforce_base` under $1, for benchmarks/modes_step_cost.py.
#   bash benchmarks/gpu/modes_baseline.sh DIR [COMMIT]   (a2cdfe7: before the logit-margin exit)
set -euo pipefail
dest=${1:?usage: modes_baseline.sh DIR [COMMIT]}
commit=${2:-330fbb9}
mkdir -p "$dest/budgetforce_base"
touch "$dest/budgetforce_base/__init__.py"
for f in slots slots_kernel; do
  path=budgetforce/vllm/$f.py
  git cat-file -e "$commit:$path" 2> /dev/null || path=budgetforce/$f.py  # before the layers
  git show "$commit:$path" | sed -e 's/from budgetforce\(\.vllm\)\{0,1\}\.slots import/from budgetforce_base.slots import/' \
    -e 's/from budgetforce\(\.vllm\)\{0,1\}\.slots_kernel import/from budgetforce_base.slots_kernel import/' > "$dest/budgetforce_base/$f.py"
done
