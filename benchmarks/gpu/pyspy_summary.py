"""Summaries of py-spy's collapsed stacks (`py-spy record -f raw`): where a process spends its samples.

For each file: the samples, the share with a budgetforce frame anywhere on the stack, the frames
with the most self time, and budgetforce's frames by inclusive time. Writes one markdown file.

    python3 benchmarks/gpu/pyspy_summary.py PROFILE_DIR... --out summary.md
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def read(path: Path) -> list[tuple[list[str], int]]:
    """(frames root first, samples) per line; py-spy's `process N:"..."` and thread frames dropped."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        out.append((frames, int(count)))
    return out


def short(frame: str) -> str:
    """`fn (path/to/module.py:123)` -> `fn (module.py)`: lines of one function counted together."""
    m = re.match(r"(.*?) \((?:.*/)?([^/]+?)(?::\d+)?\)$", frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def summary(path: Path, top: int = 12) -> str:
    stacks = read(path)
    total = sum(n for _, n in stacks) or 1
    ours = sum(n for f, n in stacks if any("budgetforce" in x for x in f))
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        if frames:
            self_time[short(frames[-1])] += n
        for name in {short(f) for f in frames if "budgetforce" in f}:
            inclusive[name] += n
    lines = [f"### {path.parent.name}/{path.name}", "",
             f"{total:,} samples; a budgetforce frame on the stack in {ours:,} ({100 * ours / total:.1f}%)", "",
             "| self % | frame |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in self_time.most_common(top)]
    if inclusive:
        lines += ["", "| inclusive % | budgetforce frame |", "|---|---|"]
        lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    parts = [summary(f) for d in a.dirs for f in sorted(d.glob("*.txt"))]
    a.out.write_text("# py-spy summaries\n\n" + "\n".join(parts))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
