"""The seed's three training targets from the same problems: direct answer, human CoT, teacher CoT.

- ``direct``: an empty thinking block, then the answer ("The answer is N.").
- ``human``: the data set's own worked solution as the thinking (GSM8K's rationale without its
  calculator annotations; the student task's reference steps), then the answer. Unavailable for
  sets without rationales (a JSONL file without ``--rationale-field``, MATH-500, AIME).
- ``teacher``: the teacher traces `generate` kept.

With a `generate` run, the three sets cover the same problems: those with at least one kept
teacher trace (``--all-problems`` gives direct/human every problem). Without one, `build` makes
the direct and human sets for the problems the options name. Each target gets ``<target>.jsonl``
in the output folder; ``targets.json`` records counts and mean lengths.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from budgetforce.bench.store import read_samples
from budgetforce.bench.types import BenchError
from budgetforce.distill.generate import SFT_FILE, sft_record
from budgetforce.distill.problems import ProblemSet

logger = logging.getLogger(__name__)

TARGETS = ("direct", "human", "teacher")
TARGETS_FILE = "targets.json"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as sink:
        for record in records:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_targets(
    problems: ProblemSet, out_dir: Path, generate_dir: Path | None = None, all_problems: bool = False
) -> dict[str, Any]:
    """Write `direct.jsonl`, `human.jsonl` (when rationales exist), `teacher.jsonl` (with a run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher: list[dict[str, Any]] = []
    if generate_dir is not None:
        path = generate_dir / SFT_FILE
        if not path.is_file():
            raise BenchError(f"{generate_dir} has no {SFT_FILE}; run `budgetforce distill generate` first")
        teacher = read_samples(path)
    covered = {r["id"] for r in teacher}
    examples = [ex for ex in problems.examples if all_problems or generate_dir is None or ex.id in covered]
    sets: dict[str, list[dict[str, Any]]] = {}
    sets["direct"] = [
        sft_record(ex.id, problems.eval.messages(ex), "", problems.answer_template.format(answer=ex.answer), "direct",
                   reference=ex.answer)
        for ex in examples
    ]  # fmt: skip
    if problems.rationales:
        sets["human"] = [
            sft_record(ex.id, problems.eval.messages(ex), problems.rationales[ex.id],
                       problems.answer_template.format(answer=ex.answer), "human", reference=ex.answer)
            for ex in examples
        ]  # fmt: skip
    else:
        logger.warning("%s has no human rationales: the `human` target is unavailable", problems.eval.name)
    if teacher:
        sets["teacher"] = [{**r, "target": "teacher"} for r in teacher]
    summary: dict[str, Any] = {"problems": len(examples), "targets": {}}
    for target, records in sets.items():
        path = out_dir / f"{target}.jsonl"
        write_jsonl(path, records)
        lengths = [len(r["messages"][-1]["content"]) for r in records]
        summary["targets"][target] = {
            "path": str(path),
            "records": len(records),
            "problems": len({r["id"] for r in records}),
            "mean_target_chars": statistics.fmean(lengths) if lengths else None,
        }
    summary["unavailable"] = [t for t in TARGETS if t not in sets]
    (out_dir / TARGETS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
