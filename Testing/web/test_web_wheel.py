"""Packaging of the front ends: the wheel carries the engine, both Qt-free Libs and RepUX Web once each, as top-level
packages, and ``repux web`` is found through the ``repux.commands`` entry point, from a wheel and from the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _sources(folder: Path) -> set[str]:
    return {p.relative_to(folder.parent).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def test_the_wheel_carries_each_package_once_and_serves_repux_web(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600
    )
    if built.returncode != 0:
        pytest.skip(f"could not build the wheel here (build backend from PyPI unavailable?): {built.stderr.strip()[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("repux-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in (REPO / "repux", REPO / "RepUXSegment" / "RepUXSegmentLib", REPO / "RepUXTrainer" / "RepUXTrainerLib", REPO / "RepUXWeb"):
        assert _sources(folder) <= names, f"{folder.name} is not complete in the wheel"
    assert not any(n.startswith(("repux/_libs/", "repux/web/", "RepUXSegment/", "RepUXTrainer/")) for n in names), "a copy or a module file in the wheel"
    assert not any(n.endswith(("RepUXSegment.py", "RepUXTrainer.py")) for n in names), "the Slicer module files run only in Slicer"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "web = RepUXWeb.cli:register" in zipfile.ZipFile(wheel).read(entry_points).decode()
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # what 'pip install' puts in site-packages (pure-Python wheel)
    code = "import RepUXSegmentLib.process, RepUXTrainerLib.trainingset, RepUXWeb.controller; print(RepUXTrainerLib.trainingset.__file__)"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site / "RepUXTrainerLib"))
    helped = subprocess.run([sys.executable, "-m", "repux", "web", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert helped.returncode == 0 and "--max-upload-mb" in helped.stdout, helped.stderr


def test_the_checkout_serves_repux_web_through_its_entry_point():
    """An editable install (the test environment) registers ``repux web`` the same way, without sys.path code."""
    from repux.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "web" in sub.choices
    assert sub.choices["web"].get_default("func").__module__ == "RepUXWeb.cli"
