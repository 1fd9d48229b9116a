"""Fixtures for the headless Slicer-module tests: the real Slicer MRML library (slicer-core), no Qt.

(The folder is not called ``slicer``: slicer-core's ``slicer/__init__.py`` imports every module of
every ``slicer/`` folder on ``sys.path`` into its namespace.)
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULE_DIR = REPO / "RepUXSegment"


def importSlicerCore():
    """slicer-core's ``slicer`` package, or None if it is not installed."""
    try:
        return importlib.import_module("slicer")
    except ImportError:
        return None


if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # RepUXSegmentLib and RepUXSegment.py, as inside Slicer


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
    from RepUXSegmentLib.mrml import MRMLContext

    slicer = slicerCore
    tempDirectory = tmp_path / "jobs"
    tempDirectory.mkdir()
    context = MRMLContext.headless(str(tempDirectory))
    scene = context.scene
    ns = MRMLTestScene(
        slicer=slicer,
        scene=scene,
        appLogic=context.applicationLogic,
        volumesLogic=context.volumesLogic,
        segmentationsLogic=context.segmentationsLogic,
        subjectHierarchyLogic=context.moduleLogics["SubjectHierarchy"],
        tempDirectory=tempDirectory,
    )
    yield ns
    scene.Clear(1)
