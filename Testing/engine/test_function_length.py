"""No function or method of the engine (``repux/``) is longer than :data:`MAX_LINES` lines (issue 21, step 5).

A function's length is counted from its ``def`` line to the last line of its body (decorators not counted;
docstring, comments and blank lines counted; a nested function counts in its own right and in the function
around it).  The few that are still longer are in :data:`ALLOWED`, each with the reason: split one, and its
entry must go (the test fails on an entry that is no longer needed, so the list only shrinks).  Cheap: the
sources are parsed with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "repux"
MAX_LINES = 80

#: ``"path/from/repo.py::Qualified.name"`` -> why it is still longer than MAX_LINES
ALLOWED: dict[str, str] = {
    # one straight list of random draws in a fixed order: splitting it risks changing every phantom of a seed
    "repux/data/phantom.py::_Anatomy.__init__": "the seeded draws of a phantom's anatomy, in an order the datasets depend on",
    "repux/cli/commands_session.py::cmd_session": "the JSON-lines session loop and its nested command handlers: not split yet",
    "repux/cli/commands_infer.py::register": "argparse declarations of `repux segment` (one add_argument per option, no logic)",
    "repux/io/dicomseg.py::write_dicom_seg": "one DICOM SEG dataset built attribute by attribute: not split yet",
}


def _lengths(path: Path) -> dict[str, int]:
    """Qualified name -> line count of every function and method of ``path``."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                # the same name twice (a property setter, a conditional definition): keep the longer
                out[name] = max(out.get(name, 0), child.end_lineno - child.lineno + 1)
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "")
    return out


def _all_lengths() -> dict[str, int]:
    out = {}
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        out.update({f"{rel}::{name}": n for name, n in _lengths(path).items()})
    return out


def test_no_engine_function_is_longer_than_the_limit():
    lengths = _all_lengths()
    assert lengths, f"no functions found under {ENGINE}"
    too_long = {k: n for k, n in lengths.items() if n > MAX_LINES and k not in ALLOWED}
    assert not too_long, f"functions over {MAX_LINES} lines (split them into named helpers): " + ", ".join(
        f"{k} ({n} lines)" for k, n in sorted(too_long.items(), key=lambda kv: -kv[1])
    )


def test_the_allow_list_holds_only_functions_still_too_long():
    lengths = _all_lengths()
    missing = sorted(k for k in ALLOWED if k not in lengths)
    assert not missing, f"allow-listed functions that do not exist (renamed or moved?): {missing}"
    short = sorted(f"{k} ({lengths[k]} lines)" for k in ALLOWED if lengths[k] <= MAX_LINES)
    assert not short, f"allow-listed functions now within {MAX_LINES} lines: remove them from ALLOWED: {short}"
    assert all(reason.strip() for reason in ALLOWED.values()), "every allow-list entry needs its reason"
