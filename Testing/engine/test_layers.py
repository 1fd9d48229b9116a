"""The layers, checked: the engine imports no front end and no GUI toolkit, and the import graph of the engine and
the front ends has no cycle (imports inside functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: top-level packages and where their sources are
PACKAGES = {
    "repux": REPO / "repux",
    "RepUXSegmentLib": REPO / "RepUXSegment" / "RepUXSegmentLib",
    "RepUXTrainerLib": REPO / "RepUXTrainer" / "RepUXTrainerLib",
    "RepUXWeb": REPO / "RepUXWeb",
}
#: what the engine must never import (GUI toolkits, Slicer, the web server, any front end)
FORBIDDEN_IN_ENGINE = ("slicer", "qt", "ctk", "vtk", "mrml", "trame", "trame_slicer", "RepUXSegment", "RepUXSegmentLib", "RepUXTrainer", "RepUXTrainerLib", "RepUXWeb")
#: which front end may import which (the arrows of the layer diagram in the README's Development section)
ALLOWED = {
    "repux": {"repux"},
    "RepUXSegmentLib": {"repux", "RepUXSegmentLib"},
    "RepUXTrainerLib": {"repux", "RepUXSegmentLib", "RepUXTrainerLib"},
    "RepUXWeb": {"repux", "RepUXSegmentLib", "RepUXTrainerLib", "RepUXWeb"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, is_package: bool) -> list[tuple[str, int]]:
    """Every module ``path`` imports, absolute, with its line (``from a import b`` names ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, node.lineno))
            out += [(f"{module}.{a.name}", node.lineno) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(name, path, path.name == "__init__.py"):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_engine_imports_no_gui_no_slicer_and_no_front_end():
    bad = []
    for name, path in _modules().items():
        if not name.startswith("repux"):
            continue
        for target, line in _imports(name, path, path.name == "__init__.py"):
            top = target.split(".")[0]
            if top.lower() in {f.lower() for f in FORBIDDEN_IN_ENGINE} or top.lower().startswith(("vtk", "qt", "pyqt", "pyside")):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bad, "the engine must not import a GUI, Slicer or a front end:\n" + "\n".join(bad)


def test_each_front_end_imports_only_the_layers_below_it():
    bad = []
    for name, path in _modules().items():
        top = name.split(".")[0]
        for target, line in _imports(name, path, path.name == "__init__.py"):
            other = target.split(".")[0]
            if other in PACKAGES and other not in ALLOWED[top]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({top}) imports {target}")
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 60 and graph["repux.cli.main"], "the graph was not built"
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    """The check above could fail: a two-module circle and a longer one are found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
