"""The extension's CMake files configure and install a complete module, engine included.

A real Slicer build tree is not available here, so ``find_package(Slicer)`` finds a small stub
written by this test.  Its ``slicerMacroBuildScriptedModule`` places files by the rules of CTK's
``ctkMacroCompilePythonScript`` (which the real macro calls), as read in CTK's CMake sources:

* a relative script or resource ``f`` is copied from ``<module source dir>/f`` to ``<dest>/f``;
* an absolute script ``/x/f`` is copied to ``<dest>/<path of /x/f relative to CMAKE_CURRENT_BINARY_DIR>``;
* ``<dest>`` is ``<build>/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}``, installed with
  ``install(DIRECTORY <dest>/ DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR})``.

The stub copies at configure time instead of build time; everything else (the extension's own
CMake code, globbing the engine, its data files, the install rules) runs for real.  The installed
tree is then used as Slicer would: ``import repux`` and ``python -m repux`` from that folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTED = "lib/Slicer-5.9/qt-scripted-modules"

SLICER_CONFIG = """
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
"""

USE_SLICER = """
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "@SCRIPTED@")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "@SCRIPTED@")
set(BUILD_TESTING ON)
set(STUB_LOG "${CMAKE_BINARY_DIR}/stub-log.txt")
file(WRITE "${STUB_LOG}" "")

function(slicer_add_python_unittest)
  cmake_parse_arguments(ARG "" "SCRIPT" "" ${ARGN})
  file(APPEND "${STUB_LOG}" "unittest|${CMAKE_CURRENT_SOURCE_DIR}/${ARG_SCRIPT}\\n")
endfunction()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(STUB "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(STUB_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${STUB_UNPARSED_ARGUMENTS}")
  endif()
  set(_dest "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  foreach(_f IN LISTS STUB_SCRIPTS)
    get_filename_component(_ext "${_f}" EXT)
    if(NOT "${_ext}" MATCHES "py")
      set(_f "${_f}.py")
    endif()
    if(IS_ABSOLUTE "${_f}")
      set(_src "${_f}")
      file(RELATIVE_PATH _tgt "${CMAKE_CURRENT_BINARY_DIR}" "${_f}")
    else()
      set(_src "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
      set(_tgt "${_f}")
    endif()
    if(NOT EXISTS "${_src}")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(SCRIPTS) given nonexistent file '${_f}'")
    endif()
    configure_file("${_src}" "${_dest}/${_tgt}" COPYONLY)
    file(APPEND "${STUB_LOG}" "script|${_tgt}\\n")
  endforeach()
  foreach(_f IN LISTS STUB_RESOURCES)
    if(IS_ABSOLUTE "${_f}")
      message(FATAL_ERROR "absolute RESOURCES are copied to <dest>/<absolute path> by CTK: '${_f}'")
    endif()
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(RESOURCES) given nonexistent file '${_f}'")
    endif()
    configure_file("${CMAKE_CURRENT_SOURCE_DIR}/${_f}" "${_dest}/${_f}" COPYONLY)
    file(APPEND "${STUB_LOG}" "resource|${_f}\\n")
  endforeach()
  install(DIRECTORY "${_dest}/" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
  file(APPEND "${STUB_LOG}" "module|${STUB_NAME}|generic-tests=${STUB_WITH_GENERIC_TESTS}\\n")
endmacro()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (apt-get install cmake)")
    root = tmp_path_factory.mktemp("cmake")
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


def sourceFiles(folder: Path, pattern: str) -> set[str]:
    return {p.relative_to(folder.parent).as_posix() for p in folder.rglob(pattern) if "__pycache__" not in p.parts}


def test_every_module_file_is_installed(installed):
    tree, log = installed
    moduleDir = REPO / "RepUXSegment"
    expected = {
        p.relative_to(moduleDir).as_posix() for p in moduleDir.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }
    assert {
        "RepUXSegment.py",
        "RepUXSegmentLib/process.py",
        "Resources/UI/RepUXSegment.ui",
        "Resources/Icons/RepUXSegment.png",
        "Resources/requirements.txt",
    } <= expected
    missing = sorted(f for f in expected if not (tree / f).is_file())
    assert not missing, f"files of RepUXSegment/ that CMakeLists.txt does not list: {missing}"
    assert ["module", "RepUXSegment", "generic-tests=TRUE"] in log
    assert ["unittest", str(moduleDir / "RepUXSegment.py")] in log


def test_the_engine_package_is_installed_beside_the_module(installed):
    tree, log = installed
    engine = sourceFiles(REPO / "repux", "*.py")
    assert "repux/__main__.py" in engine and "repux/cli/main.py" in engine
    missing = sorted(f for f in engine if not (tree / f).is_file())
    assert not missing, f"engine files not installed: {missing}"
    assert {f for kind, f, *_ in log if kind == "script" and f.startswith("repux/")} == engine  # listed as module scripts
    catalog = tree / "repux" / "resources" / "catalog.json"
    assert catalog.read_bytes() == (REPO / "Resources" / "catalog.json").read_bytes()
    data = {
        p.relative_to(REPO).as_posix() for p in (REPO / "repux").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert all((tree / f).is_file() for f in data)


def test_installed_tree_runs_the_engine_like_slicer(installed, tmp_path):
    tree, _ = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REPUX_CATALOG")}
    env["PYTHONPATH"] = str(tree)  # what RepUXSegmentLib.process.childEnvironment() does inside Slicer
    env["REPUX_HOME"] = str(tmp_path / "home")
    probe = "import repux, repux.models.store as s, RepUXSegmentLib.process as p; print(repux.__file__); print(s._catalog_location()); print(p.repuxPackageParent())"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    engineFile, catalogPath, parent = proc.stdout.split()
    assert Path(engineFile).is_relative_to(tree) and Path(catalogPath) == tree / "repux" / "resources" / "catalog.json"
    assert Path(parent) == tree
    proc = subprocess.run(
        [sys.executable, "-m", "repux", "models", "list", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert '"store"' in proc.stdout and str(tmp_path / "home") in proc.stdout
