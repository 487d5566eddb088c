"""The bundled tiny R1-style student: a Qwen2 decoder distilled from a programmatic teacher.

`STUDENT_PATH` is the model folder (weights, tokenizer, R1-Distill chat template) that
`budgetforce serve` uses when no model is given. See `budgetforce.student.train` for how it is
made and `benchmarks/student_scaling.py` for what it shows.
"""

import logging
from pathlib import Path

STUDENT_PATH: Path = Path(__file__).resolve().parent / "model"
TINY_CACHE: Path = Path.home() / ".cache" / "budgetforce" / "tiny-r1"

__all__ = ["STUDENT_PATH", "TINY_CACHE", "default_model"]
log = logging.getLogger("budgetforce.student")


def default_model() -> Path:
    """What a server serves without `--model`: the bundled student; until it exists, a tiny
    random-weight R1-style model (built once, cached in `TINY_CACHE`)."""
    import budgetforce.student as here  # read through the module, so both paths can be pointed elsewhere

    if (here.STUDENT_PATH / "config.json").exists():
        return here.STUDENT_PATH
    cache = here.TINY_CACHE
    if not (cache / "config.json").exists():
        from budgetforce.tinymodel import build_tiny_model

        log.warning("the bundled student is not built yet; building a tiny random-weight model in %s", cache)
        build_tiny_model(cache, "r1", seed=0)
    log.warning("no --model given and no bundled student: serving the tiny random-weight model %s", cache)
    return cache
