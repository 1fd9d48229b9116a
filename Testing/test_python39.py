"""The engine and the Slicer modules load on Python 3.9 (Slicer 5.8 ships Python 3.9; RepUX supports Slicer 5.8 and later).

CI runs a newer Python, so nothing else would notice a ``match`` statement, ``zip(strict=...)`` or a PEP 604 union
evaluated at run time (``isinstance(x, int | None)``, an annotation in a module without
``from __future__ import annotations``, a module-level ``Alias = int | None``) until Slicer 5.8 failed to load the
module.  Every ``.py`` of ``repux/``, ``RepUXSegment/`` and ``RepUXTrainer/`` is parsed with the Python 3.9 grammar
(``ast.parse(feature_version=(3, 9))``) and checked for the run-time uses the grammar does not catch.  Cheap: no
3.9 interpreter needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("repux", "RepUXSegment", "RepUXTrainer") for p in (REPO / folder).rglob("*.py"))
OLDEST = (3, 9)

#: names that are not in the standard library of Python 3.9, by module
NEWER_NAMES = {
    "typing": {
        "TypeAlias",
        "ParamSpec",
        "Concatenate",
        "TypeGuard",
        "Self",
        "LiteralString",
        "Never",
        "assert_never",
        "assert_type",
        "reveal_type",
        "Required",
        "NotRequired",
        "Unpack",
        "TypeVarTuple",
        "dataclass_transform",
        "override",
        "is_typeddict",
    },
    "itertools": {"pairwise", "batched"},
    "enum": {"StrEnum", "verify", "member", "nonmember", "property", "global_enum", "ReprEnum", "EnumCheck", "FlagBoundary"},
    "datetime": {"UTC"},
    "contextlib": {"aclosing", "chdir"},
    "dataclasses": {"KW_ONLY"},
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_BUILTINS = {"aiter", "anext", "ExceptionGroup", "BaseExceptionGroup", "EncodingWarning"}
#: attributes of the standard library added after Python 3.9 (by name: none of them is a RepUX name)
NEWER_ATTRIBUTES = {"packages_distributions", "stdlib_module_names", "orig_argv", "file_digest", "getLevelNamesMapping", "hardlink_to", "bit_count"}
TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "complex", "list", "dict", "tuple", "set", "frozenset", "type", "object", "Path", "Any"}


def looksLikeAType(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper() and not node.id.isupper()
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper() and not node.attr.isupper()
    if isinstance(node, ast.Subscript):
        return looksLikeAType(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return looksLikeAType(node.left) and looksLikeAType(node.right)
    return False


def annotationNodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (annotations are strings under ``from __future__ import annotations``)."""
    inside = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations = [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg] if a is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            if annotation is not None:
                inside |= {id(n) for n in ast.walk(annotation)}
    return inside


def runtimeProblems(path: Path, root: Path = REPO) -> list[str]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names) for n in tree.body)
    inAnnotation = annotationNodes(tree)
    problems = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and looksLikeAType(node):
            if id(node) not in inAnnotation or not future:
                problems.append(f"{where}: PEP 604 union '{ast.unparse(node)}' evaluated at run time (Python 3.10+)")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name == "zip" and any(k.arg == "strict" for k in node.keywords):
                problems.append(f"{where}: zip(strict=...) is Python 3.10+")
            if name == "dataclass" or (isinstance(node.func, ast.Attribute) and node.func.attr == "dataclass"):
                newer = [k.arg for k in node.keywords if k.arg in ("slots", "kw_only", "match_args", "weakref_slot")]
                if newer:
                    problems.append(f"{where}: dataclass({', '.join(newer)}=...) is Python 3.10+")
            if name in NEWER_BUILTINS:
                problems.append(f"{where}: {name}() is Python 3.10+")
        elif isinstance(node, ast.ImportFrom) and node.module in NEWER_NAMES:
            newer = sorted({a.name for a in node.names} & NEWER_NAMES[node.module])
            if newer:
                problems.append(f"{where}: from {node.module} import {', '.join(newer)} is not in Python 3.9")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"{where}: module {m} is not in Python 3.9" for m in modules if m in NEWER_MODULES]
        elif isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            problems.append(f"{where}: .{node.attr} is Python 3.10+")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in NEWER_NAMES and node.attr in NEWER_NAMES[node.value.id] and node.attr != "property":
                problems.append(f"{where}: {node.value.id}.{node.attr} is not in Python 3.9")
    return problems


def test_there_are_sources_to_check():
    names = {p.name for p in SOURCES}
    assert len(SOURCES) > 60 and {"RepUXSegment.py", "RepUXTrainer.py", "mrml.py", "store.py", "__main__.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_with_the_python_3_9_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=OLDEST)


def test_no_python_3_10_run_time_features():
    problems = [problem for path in SOURCES for problem in runtimeProblems(path)]
    assert problems == [], "\n".join(problems)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The detectors flag each construct (so a passing run above means something)."""
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=OLDEST)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TypeAlias\n"
        "from dataclasses import dataclass\n"
        "Alias = int | None\n"
        "def f(x: str | None) -> None:\n"
        "    return isinstance(x, int | str) or list(zip([1], [2], strict=True))\n"
        "@dataclass(slots=True)\n"
        "class C:\n"
        "    a: int = 0\n"
        "flags = 1 | 2\n"
        "n = (5).bit_count()\n"
    )
    text = "\n".join(runtimeProblems(bad, tmp_path))
    assert "TypeAlias" in text and "'int | None'" in text and "'str | None'" in text and "'int | str'" in text
    assert "zip(strict" in text and "dataclass(slots" in text and ".bit_count" in text and "1 | 2" not in text
    good = tmp_path / "good.py"
    good.write_text("from __future__ import annotations\ndef f(x: str | None) -> int | None:\n    y: list[int] | None = None\n    return y\n")
    assert runtimeProblems(good, tmp_path) == []
