"""The package's shape: no import cycle among its modules, the kernel names its columns, one
vocabulary of modes. (Module-level imports only: an import inside a function or under
`TYPE_CHECKING` runs late or never, so it closes no cycle at import time.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "budgetforce"
SERVER = REPO / "server"  # installed as budgetforce.server (pyproject's package-dir)


def _module(path: Path) -> str:
    base, prefix = (SERVER, ("budgetforce", "server")) if path.is_relative_to(SERVER) else (ROOT, ("budgetforce",))
    rel = path.relative_to(base).with_suffix("")
    parts = prefix + (rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module(p): p for d in (ROOT, SERVER) for p in d.rglob("*.py")}


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
    modules = _sources()
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
    source = (ROOT / "vllm" / "slots_kernel.py").read_text()
    assert not re.search(r"\b(sp|stp) \+ \d", source), "literal column offsets in the kernel"
    assert not re.search(r"modes & \d", source), "literal mode bits in the kernel"
    assert "from budgetforce.vllm.slots import" not in source.split("if TYPE_CHECKING:")[0]


def test_one_vocabulary_of_modes() -> None:
    from budgetforce.core.budget import Mode as RequestMode
    from budgetforce.core.layout import Mode

    assert {m.name.lower() for m in Mode} == set(get_args(RequestMode))


LAYERS = {  # a layer may import itself and the layers listed for it, never the ones above it
    "budgetforce.core": (),
    "budgetforce.vllm": ("budgetforce.core",),
    "budgetforce.server": ("budgetforce.core", "budgetforce.vllm"),
    "budgetforce.bench": ("budgetforce.core", "budgetforce.vllm", "budgetforce.student"),
    "budgetforce.distill": ("budgetforce.core", "budgetforce.vllm", "budgetforce.bench", "budgetforce.student"),
    "budgetforce.student": ("budgetforce.core", "budgetforce.vllm", "budgetforce.tinymodel"),
}


def _all_imports(path: Path) -> set[str]:
    """Every import of the file, at any depth (a lazy import is a dependency too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_dependencies_point_one_way() -> None:
    """core -> engine adapters (vllm/) -> server/, bench/, distill/ -> cli: no import goes back up,
    and the core imports neither vLLM nor torch."""
    for module, path in _sources().items():
        layer = next((name for name in LAYERS if module == name or module.startswith(name + ".")), None)
        if layer is None:  # budgetforce, budgetforce.cli, budgetforce.tinymodel: the top, free to import
            continue
        allowed = (layer, *LAYERS[layer])
        for dep in _all_imports(path):
            if dep.startswith("budgetforce.") or dep == "budgetforce":
                assert dep != "budgetforce" and any(dep == a or dep.startswith(a + ".") for a in allowed), (
                    f"{module} imports {dep}"
                )
            if layer == "budgetforce.core":
                assert dep.split(".")[0] not in ("vllm", "torch", "triton"), f"the core module {module} imports {dep}"
