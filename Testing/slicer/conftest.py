"""Fixtures for the headless RepUXSegment tests (real Slicer MRML logic from slicer-core, no Qt).

Two catches are handled here.

1. This folder is called ``slicer`` and pytest puts its parent (``Testing/``) on ``sys.path``.
   slicer-core's ``slicer/__init__.py`` extends its package path with *every* ``slicer/`` folder on
   ``sys.path`` and imports all the modules it finds there, so a plain ``import slicer`` would import
   these files as ``slicer.*`` submodules.  slicer-core is therefore imported here, before any test
   module, with ``Testing/`` hidden from ``sys.path``, and this folder is kept out of
   ``slicer.__path__``.  Should it be scanned anyway (a test elsewhere importing ``slicer`` first),
   the modules of this folder import cleanly: this file is imported first (names are scanned in
   sorted order) and puts ``RepUXSegment/`` on ``sys.path``; no module here has side effects.
2. pytest imports every ``conftest.py`` outside a package under the module name ``conftest``; the
   last one imported wins in ``sys.modules``.  The project's tests use ``from conftest import
   shared_file`` (Testing/conftest.py), so this file hands that name back to Testing/conftest.py.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_DIR = REPO / "RepUXSegment"
ROOT_CONFTEST = HERE.parent / "conftest.py"


def _isThisFolder(entry: str) -> bool:
    try:
        return (Path(entry or os.getcwd()).resolve() / "slicer") == HERE
    except OSError:
        return False


def importSlicerCore():
    """Import slicer-core's ``slicer`` package without picking up this test folder; None if not installed."""
    module = sys.modules.get("slicer")
    if module is None:
        saved = list(sys.path)
        sys.path[:] = [p for p in saved if not _isThisFolder(p)]
        try:
            module = importlib.import_module("slicer")
        except ImportError:
            return None
        finally:
            sys.path[:] = saved
    path = getattr(module, "__path__", None)
    if isinstance(path, list):
        path[:] = [p for p in path if Path(p).resolve() != HERE]
    return module


def pytest_plugin_registered(plugin, manager):
    """Once pytest has imported and registered a ``conftest`` module, give the name back to Testing/conftest.py.

    (Doing it while this file is being imported would trip pytest's own module-path check.)
    """
    current = sys.modules.get("conftest")
    if current is None or Path(getattr(current, "__file__", "") or ".").resolve() == ROOT_CONFTEST:
        return
    for candidate in manager.get_plugins():
        if isinstance(candidate, types.ModuleType) and Path(getattr(candidate, "__file__", "") or ".").resolve() == ROOT_CONFTEST:
            sys.modules["conftest"] = candidate
            return


if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # RepUXSegmentLib and RepUXSegment.py, as inside Slicer

if __name__ == "conftest":  # imported by pytest (not by slicer-core's scan as slicer.conftest)
    importSlicerCore()


@pytest.fixture
def slicerCore():
    module = importSlicerCore()
    if module is None or not hasattr(module, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed (pip install slicer-core)")
    return module


class MRMLTestScene(SimpleNamespace):
    """A real MRML scene with the module logics Slicer's application would create (no Qt)."""

    def nodeIDs(self) -> set[str]:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    def loadVolume(self, path: str | os.PathLike[str], name: str = "volume", study: str = "study"):
        """Load a volume the way Slicer does (archetype storage node, ITK reader) under a patient/study item."""
        node = self.volumesLogic.AddArchetypeVolume(str(path), name)
        if node is None:
            raise OSError(f"Slicer could not load {path}")
        sh = self.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
        studyItem = sh.CreateStudyItem(patient, study)
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, studyItem)
        else:
            sh.CreateItem(studyItem, node)
        return node

    def addVolumeFromArray(self, array, ijkToRAS, name: str = "volume"):
        """A scalar volume from a ``(k, j, i)`` array and a 4x4 IJK->RAS matrix, with a subject-hierarchy item."""
        import vtk
        from vtkmodules.util import numpy_support

        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        image = vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
        node.SetAndObserveImageData(image)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRAS[r][c]))
        node.SetIJKToRASMatrix(matrix)
        node.CreateDefaultDisplayNodes()
        sh = self.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        sh.CreateItem(sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study"), node)
        return node

    def context(self):
        from RepUXSegmentLib.mrml import MRMLContext

        return MRMLContext(self.scene, self.segmentationsLogic, self.volumesLogic, str(self.tempDirectory))


@pytest.fixture
def mrml(slicerCore, tmp_path) -> MRMLTestScene:
    """Scene + application, colors, volumes, segmentations and subject-hierarchy logics, and a job temp folder."""
    slicer = slicerCore
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = appLogic.GetColorLogic()
    colorLogic.SetMRMLScene(scene)
    colorLogic.AddDefaultColorNodes()
    appLogic.SetModuleLogic("Colors", colorLogic)

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(appLogic)
        appLogic.SetModuleLogic(name, logic)
        return logic

    volumesLogic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    segmentationsLogic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    subjectHierarchyLogic = register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    tempDirectory = tmp_path / "jobs"
    tempDirectory.mkdir()
    ns = MRMLTestScene(
        slicer=slicer,
        scene=scene,
        appLogic=appLogic,
        volumesLogic=volumesLogic,
        segmentationsLogic=segmentationsLogic,
        subjectHierarchyLogic=subjectHierarchyLogic,
        tempDirectory=tempDirectory,
    )
    yield ns
    scene.Clear(1)
