"""The Triton kernel (run by Triton's interpreter on the CPU) equals the torch path, step for step.

Same random batches (R1 and s1 delimiters, multi-token waits, greedy and sampled rows, rows
without a budget, prompts that open the thinking or not), same state, logits and stats after
every step. On a GPU the kernel is what runs; this keeps its rules tied to the tested ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).parent / "scripts" / "kernel_vs_torch.py"


@pytest.mark.parametrize(
    ("seed", "layout", "variant"),
    [(0, "history", "modes"), (1, "history", "s1-only"), (2, "window", "modes"), (3, "window", "s1-only")],
)
def test_kernel_equals_torch_path(seed: int, layout: str, variant: str) -> None:
    """History: runner V2's device token table. Window: runner V1's new tokens per row. The kernel
    is compiled without the modes' code until a request uses one (`s1-only`)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(SCRIPT), str(seed), layout, variant]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK 80")
