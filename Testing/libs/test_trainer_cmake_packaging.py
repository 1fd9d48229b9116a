"""RepUXTrainer's CMakeLists.txt installs every file of the module next to RepUXSegment (and the engine it
installs), and the installed tree imports as Slicer would import it.

The extension is configured with the stub ``find_package(Slicer)`` of test_segment_cmake_packaging.py (its
``slicerMacroBuildScriptedModule`` places files by CTK's rules); only its constants are imported here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from test_segment_cmake_packaging import SCRIPTED, SLICER_CONFIG, USE_SLICER
from trainer_fixtures import REPO, TRAINER_DIR

pytestmark = pytest.mark.slicer


@pytest.fixture(scope="module")
def installedTree(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (apt-get install cmake)")
    root = tmp_path_factory.mktemp("cmake-trainer")
    stub = root / "SlicerStub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text(USE_SLICER.replace("@SCRIPTED@", SCRIPTED))
    (stub / "Empty.cmake").write_text("")
    build, prefix = root / "build", root / "install"
    configure = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={stub}"], capture_output=True, text=True, timeout=300, check=False)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    install = subprocess.run([cmake, "--install", str(build), "--prefix", str(prefix)], capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    log = [line.split("|") for line in (build / "stub-log.txt").read_text().splitlines()]
    return prefix / SCRIPTED, log


def test_every_trainer_file_is_installed_and_its_test_registered(installedTree):
    tree, log = installedTree
    expected = {
        p.relative_to(TRAINER_DIR).as_posix() for p in TRAINER_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }
    assert {"RepUXTrainer.py", "RepUXTrainerLib/finetune.py", "Resources/UI/RepUXTrainer.ui", "Resources/Icons/RepUXTrainer.png"} <= expected
    missing = sorted(f for f in expected if not (tree / f).is_file())
    assert not missing, f"files of RepUXTrainer/ that its CMakeLists.txt does not list: {missing}"
    assert ["module", "RepUXTrainer", "generic-tests=TRUE"] in log
    assert ["unittest", str(TRAINER_DIR / "RepUXTrainer.py")] in log
    # the engine is installed once, by RepUXSegment
    engineScripts = [f for kind, f, *_ in log if kind == "script" and f.startswith("repux/")]
    assert len(engineScripts) == len(set(engineScripts)) > 10


def test_installed_tree_imports_like_slicer(installedTree, tmp_path):
    tree, _log = installedTree
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(tree)  # Slicer puts qt-scripted-modules on sys.path
    probe = (
        "import RepUXTrainerLib.logic as l, RepUXTrainerLib.finetune as f, RepUXSegmentLib.process as p, repux; "
        "print(l.__file__); print(repux.__file__); print(p.repuxPackageParent())"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    logicFile, engineFile, parent = proc.stdout.split()
    assert logicFile.startswith(str(tree)) and engineFile.startswith(str(tree)) and parent == str(tree)
