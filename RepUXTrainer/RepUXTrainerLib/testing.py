"""Synthetic cases for the RepUXTrainer self-test and the headless tests (no Qt).

A case is a CT-like volume with a liver, two kidneys and a spleen, and its label map
(FLARE values: liver 1, kidney 2, spleen 3); :func:`addSegmentationFromLabels` makes a
segmentation node from a label map (any grid), with chosen names, colours and
terminology tags, as a user's corrected segmentation would look.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from RepUXSegmentLib.mrml import SegmentSpec  # the one SegmentSpec (value, name, colour, terminology)

__all__ = ["SegmentSpec", "addSegmentationFromLabels", "coarseGrid", "flareLikeSegments", "labelsOnGrid", "syntheticCase", "terminologyTag"]

_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY = "Anatomic codes - DICOM master list"


def terminologyTag(typeCode: str, typeMeaning: str, modifierCode: str = "", modifierMeaning: str = "") -> str:
    """A serialized ``TerminologyEntry`` of category *Anatomical Structure*."""
    modifier = f"SCT^{modifierCode}^{modifierMeaning}" if modifierCode else "^^"
    return f"{_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^{typeCode}^{typeMeaning}~{modifier}~{_ANATOMY}~^^~^^"


def _ellipsoid(i: Any, j: Any, k: Any, center: Sequence[float], radius: Sequence[float]) -> Any:
    return ((i - center[0]) / radius[0]) ** 2 + ((j - center[1]) / radius[1]) ** 2 + ((k - center[2]) / radius[2]) ** 2 < 1.0


def syntheticCase(shape: tuple[int, int, int] = (30, 40, 48), seed: int = 0) -> tuple[Any, Any]:
    """``(ct, labels)``: int16 HU and uint8 labels, both ``(k, j, i)``; organs jitter with ``seed``.

    Labels: 1 liver, 2 kidneys (both), 3 spleen, 4 a small "lesion" inside the liver.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    jitter = rng.uniform(-0.05, 0.05, 8)
    ct = np.full(shape, -1000.0)
    labels = np.zeros(shape, dtype=np.uint8)
    body = (i / 0.92) ** 2 + (j / 0.8) ** 2 < 1.0
    ct[body] = 30.0
    liver = body & _ellipsoid(i, j, k, (-0.35 + jitter[0], 0.1 + jitter[1], 0.0), (0.4, 0.32, 0.6))
    ct[liver], labels[liver] = 60.0, 1
    for side in (-0.42, 0.42):
        kidney = body & _ellipsoid(i, j, k, (side + jitter[2], -0.35, -0.2 + jitter[3]), (0.13, 0.16, 0.32))
        ct[kidney], labels[kidney] = 35.0 + 150.0 * (side > 0), 2
    spleen = body & _ellipsoid(i, j, k, (0.5 + jitter[4], 0.2, 0.15 + jitter[5]), (0.16, 0.2, 0.25))
    ct[spleen], labels[spleen] = 110.0, 3
    lesion = liver & _ellipsoid(i, j, k, (-0.4 + jitter[6], 0.12, 0.1 + jitter[7]), (0.1, 0.1, 0.12))
    ct[lesion], labels[lesion] = 5.0, 4
    ct[body & ((i / 0.1) ** 2 + ((j + 0.6) / 0.1) ** 2 < 1.0)] = 700.0  # spine
    ct += rng.normal(0.0, 8.0, shape)
    return np.clip(ct, -1024, 3071).astype(np.int16), labels


def coarseGrid(ijkToRAS: Any, factor: int = 2, shiftVoxels: Sequence[float] = (0.3, 0.2, 0.4)) -> Any:
    """The IJK->RAS of a grid ``factor`` times coarser, its origin shifted by ``shiftVoxels`` fine voxels
    (fractions: no coarse voxel centre falls on a fine one, so nearest-neighbour resampling has no ties)."""
    import numpy as np

    fine = np.asarray(ijkToRAS, dtype=float)
    coarse = fine.copy()
    coarse[:3, :3] = fine[:3, :3] * factor
    coarse[:3, 3] = fine[:3, 3] + fine[:3, :3] @ np.asarray(shiftVoxels, dtype=float)
    return coarse


def labelsOnGrid(labels: Any, ijkToRAS: Any, targetShape: Sequence[int], targetIJKToRAS: Any) -> Any:
    """Nearest-neighbour resampling of ``labels`` (``(k, j, i)`` on ``ijkToRAS``) onto another grid, in physical space."""
    import numpy as np

    nk, nj, ni = targetShape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.vstack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ras = np.asarray(targetIJKToRAS, dtype=float) @ ijk
    source = np.linalg.solve(np.asarray(ijkToRAS, dtype=float), ras)[:3]
    index = np.floor(source + 0.5).astype(int)
    shape = labels.shape
    inside = (index[0] >= 0) & (index[0] < shape[2]) & (index[1] >= 0) & (index[1] < shape[1]) & (index[2] >= 0) & (index[2] < shape[0])
    out = np.zeros(index.shape[1], dtype=labels.dtype)
    out[inside] = labels[index[2, inside], index[1, inside], index[0, inside]]
    return out.reshape(tuple(targetShape))


def addSegmentationFromLabels(context: Any, labels: Any, ijkToRAS: Any, segments: Sequence[SegmentSpec], name: str = "segmentation") -> Any:
    """A segmentation node whose segments are the label values of ``labels`` (on its own grid ``ijkToRAS``).

    Values not listed in ``segments`` are dropped; listed values absent from the array give empty segments.
    """
    import numpy as np
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    scene = context.scene
    keep = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint8)
    ordered = sorted(segments, key=lambda s: s.value)
    for index, spec in enumerate(ordered, start=1):
        if spec.value < len(keep):
            keep[spec.value] = index
    relabelled = keep[labels].astype(np.uint8)
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(relabelled.ravel(), deep=True))
    labelmap.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijkToRAS[r][c]))
    labelmap.SetIJKToRASMatrix(matrix)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for spec in ordered:
        segmentId = segmentation.GenerateUniqueSegmentID(spec.name)
        segmentation.AddEmptySegment(segmentId, spec.name, list(spec.color))
        if spec.terminology:
            segmentation.GetSegment(segmentId).SetTag("TerminologyEntry", spec.terminology)
        ids.InsertNextValue(segmentId)
    if not context.segmentations().ImportLabelmapToSegmentationNode(labelmap, node, ids):
        scene.RemoveNode(node)
        raise RuntimeError("could not import the test label map")
    return node


def flareLikeSegments() -> list[SegmentSpec]:
    """Segments as a user's corrected segmentation names them: a name match, a terminology match, an unknown one."""
    return [
        SegmentSpec(1, "Liver", (0.86, 0.51, 0.4)),
        SegmentSpec(2, "Segment_2", (0.73, 0.4, 0.33), terminologyTag("64033007", "Kidney")),
        SegmentSpec(3, "spleen", (0.62, 0.42, 0.64)),
        SegmentSpec(4, "Lesion", (0.9, 0.9, 0.2)),
    ]
