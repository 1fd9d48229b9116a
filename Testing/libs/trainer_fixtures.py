"""Fixtures and helpers of the RepUXTrainer headless tests (real MRML from slicer-core, no Qt).

pytest does not pick fixtures up from a plain module: the test files import the ones they use
(``from trainer_fixtures import trainer  # noqa: F401``).  Importing this module puts
``RepUXTrainer/`` on ``sys.path`` (``RepUXTrainerLib`` and ``RepUXTrainer.py``, as inside Slicer;
conftest.py does the same for ``RepUXSegment/``).  Nothing else happens at import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAINER_DIR = REPO / "RepUXTrainer"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

if str(TRAINER_DIR) not in sys.path:
    sys.path.insert(0, str(TRAINER_DIR))


# ----------------------------------------------------------------------------- helpers


def ijkToRASArray(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayFromVolumeNode(node) -> np.ndarray:
    from vtkmodules.util import numpy_support

    image = node.GetImageData()
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()


def sampleFileOnGrid(path: Path, shape, ijkToRAS: np.ndarray) -> np.ndarray:
    """Values of the image file ``path`` (read with SimpleITK, independent of Slicer) at the voxel centres of
    a Slicer grid ``(shape (k, j, i), IJK->RAS)``; asserts the grids coincide (same physical voxel centres)."""
    import SimpleITK as sitk

    reference = sitk.ReadImage(str(path))
    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ras = (np.asarray(ijkToRAS) @ np.vstack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)]))[:3]
    lps = LPS_TO_RAS @ ras
    direction = np.array(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    continuous = np.linalg.solve(direction, lps - np.array(reference.GetOrigin())[:, None])
    index = np.rint(continuous)
    assert np.abs(continuous - index).max() < 1e-3, f"{path.name}: not on the volume's grid"
    assert (index >= 0).all() and (index < np.array(reference.GetSize())[:, None]).all(), f"{path.name}: smaller than the volume"
    assert tuple(reference.GetSize()) == (ni, nj, nk), f"{path.name}: size {reference.GetSize()} instead of {(ni, nj, nk)}"
    index = index.astype(int)
    return sitk.GetArrayFromImage(reference)[index[2], index[1], index[0]].reshape(shape)


def addVolume(mrml, array: np.ndarray, ijkToRAS: np.ndarray, name: str):
    return mrml.addVolumeFromArray(array, ijkToRAS, name)


def addCaseNodes(mrml, name: str, seed: int, ijkToRAS: np.ndarray, segmentationGrid: np.ndarray | None = None, shape=(24, 32, 36), segments=None):
    """A synthetic CT volume and a segmentation of it (on ``segmentationGrid`` when given, else the volume's grid).

    Returns ``SimpleNamespace(volume, segmentation, ct, labels, segmentationLabels, segmentationGrid)``;
    ``labels`` are on the volume grid (what the segmentation means there, nearest neighbour).
    """
    from RepUXTrainerLib.testing import addSegmentationFromLabels, flareLikeSegments, labelsOnGrid, syntheticCase

    ct, labels = syntheticCase(shape, seed=seed)
    volume = addVolume(mrml, ct, ijkToRAS, name)
    if segmentationGrid is None:
        segmentationGrid, segmentationLabels = ijkToRAS, labels
    else:
        coarseShape = tuple(int(np.ceil(n / 2)) for n in shape)
        segmentationLabels = labelsOnGrid(labels, ijkToRAS, coarseShape, segmentationGrid)
    segmentation = addSegmentationFromLabels(mrml.context(), segmentationLabels, segmentationGrid, segments or flareLikeSegments(), f"{name} segmentation")
    onVolume = labelsOnGrid(segmentationLabels, segmentationGrid, shape, ijkToRAS)
    return SimpleNamespace(
        volume=volume, segmentation=segmentation, ct=ct, labels=onVolume, segmentationLabels=segmentationLabels, segmentationGrid=segmentationGrid
    )


def tinyBaseLabels():
    from repux.labels import FLARE

    return FLARE


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def trainer(mrml):
    """A TrainerLogic on the test scene, running the engine with this interpreter (PythonSlicer in Slicer)."""
    from RepUXTrainerLib.logic import TrainerLogic

    logic = TrainerLogic(context=mrml.context(), pythonExecutable=sys.executable)
    yield logic
    logic.shutdown()


def loadStandinInstaller():
    spec = importlib.util.spec_from_file_location("repux_standins_install", HERE / "standins" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trainerModuleFile(slicerCore, monkeypatch):
    """RepUXTrainer.py imported as in Slicer (RepUXSegment.py too: the trainer calls its logic), with the
    project's qt/ctk/ScriptedLoadableModule/parameterNodeWrapper stand-ins registered for this test only."""
    loadStandinInstaller().installStandins(monkeypatch.setitem)
    modules = {}
    for name, path in (("RepUXSegment", REPO / "RepUXSegment" / "RepUXSegment.py"), ("RepUXTrainer", TRAINER_DIR / "RepUXTrainer.py")):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["RepUXTrainer"]


@pytest.fixture
def slicerApp(mrml, monkeypatch):
    """What the Slicer application adds to the ``slicer`` module, on top of the real scene and logics:
    ``slicer.mrmlScene``, ``slicer.modules.<name>.logic()``, ``slicer.app.temporaryPath``/``processEvents``,
    and ``slicer.util.addVolumeFromArray`` creating the subject-hierarchy item (Slicer's plugins do that)."""
    slicer = mrml.slicer
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)
    modules = SimpleNamespace(segmentations=SimpleNamespace(logic=lambda: mrml.segmentationsLogic), volumes=SimpleNamespace(logic=lambda: mrml.volumesLogic))
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(temporaryPath=str(mrml.tempDirectory), processEvents=lambda: None), raising=False)
    addVolumeFromArray = slicer.util.addVolumeFromArray

    def addVolumeWithItem(*args, **kwargs):
        node = addVolumeFromArray(*args, **kwargs)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
        sh.CreateItem(sh.GetSceneItemID(), node)
        return node

    monkeypatch.setattr(slicer.util, "addVolumeFromArray", addVolumeWithItem)
    return mrml
