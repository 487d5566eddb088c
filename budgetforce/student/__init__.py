"""The bundled tiny R1-style student: a Qwen2 decoder distilled from a programmatic teacher.

`STUDENT_PATH` is the model folder (weights, tokenizer, R1-Distill chat template) that
`budgetforce serve` uses when no model is given. See `budgetforce.student.train` for how it is
made and `benchmarks/student_scaling.py` for what it shows.
"""

from pathlib import Path

STUDENT_PATH: Path = Path(__file__).resolve().parent / "model"

__all__ = ["STUDENT_PATH"]
