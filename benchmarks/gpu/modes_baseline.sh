#!/usr/bin/env bash
# Copy the forcing slots as they were before the thinking modes (commit 330fbb9) into a package
# `budgetforce_base` under $1, for benchmarks/modes_step_cost.py.
set -euo pipefail
dest=${1:?usage: modes_baseline.sh DIR}
mkdir -p "$dest/budgetforce_base"
touch "$dest/budgetforce_base/__init__.py"
for f in slots slots_kernel; do
  git show 330fbb9:budgetforce/$f.py | sed -e 's/from budgetforce\.slots import/from budgetforce_base.slots import/' \
    -e 's/from budgetforce\.slots_kernel import/from budgetforce_base.slots_kernel import/' > "$dest/budgetforce_base/$f.py"
done
