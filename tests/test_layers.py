"""The package's shape: no import cycle among its modules, the kernel names its columns, one
vocabulary of modes. (Module-level imports only: an import inside a function or under
`TYPE_CHECKING` runs late or never, so it closes no cycle at import time.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1] / "budgetforce"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _top_level_imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:  # top level only; `if TYPE_CHECKING:` blocks are skipped
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Try):  # `try: import x` guards count
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    out.add(sub.module)
    return {m for m in out if m.startswith("budgetforce")}


def test_no_import_cycle_inside_budgetforce() -> None:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {m: {d for d in _top_level_imports(p, m) if d in modules and d != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_kernel_names_its_columns() -> None:
    source = (ROOT / "slots_kernel.py").read_text()
    assert not re.search(r"\b(sp|stp) \+ \d", source), "literal column offsets in the kernel"
    assert not re.search(r"modes & \d", source), "literal mode bits in the kernel"
    assert "from budgetforce.slots import" not in source.split("if TYPE_CHECKING:")[0]


def test_one_vocabulary_of_modes() -> None:
    from budgetforce.budget import Mode as RequestMode
    from budgetforce.layout import Mode

    assert {m.name.lower() for m in Mode} == set(get_args(RequestMode))
