"""Cases from the scene to the training set folder and back (MRML, no Qt).

:func:`addCase` writes a volume and its (corrected) segmentation as one case:

* the image with Slicer's NRRD storage node, in the volume's own geometry;
* the label map exported by ``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode``
  with the volume as reference geometry, so a segmentation on another grid (coarser,
  shifted, rotated) is resampled onto the volume's voxels (nearest neighbour) and the
  difference is reported; label values are those of the training set's label set
  (:class:`~RepUXTrainerLib.mapping.LabelMapping` says which segment goes where);
* then the case is recorded in the manifest.

:func:`loadCase` brings a case back for review: the volume, and a segmentation with
one named, coloured, terminology-tagged segment per class (RepUXSegmentLib.mrml).

The scene is left as it was by :func:`addCase` (only attributes are set on the volume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import vtk
from RepUXSegmentLib.mrml import checkScalarVolume, removeNode, writeNodeNrrd
from RepUXSegmentLib.segmentation import MODEL_ATTRIBUTE  # the segmentation attribute naming its source model

from .mapping import LabelMapping, labelForNewSegment, segmentsOf
from .trainingset import TrainingSet, TrainingSetError

__all__ = [
    "CASE_ID_ATTRIBUTE",
    "MODEL_ATTRIBUTE",
    "TRAINING_SET_ATTRIBUTE",
    "CaseExport",
    "addCase",
    "exportLabelmap",
    "geometryDifference",
    "loadCase",
    "writeScalarVolume",
]

logger = logging.getLogger(__name__)

#: attributes set on a volume node that is a case of a training set
CASE_ID_ATTRIBUTE = "RepUXTrainer.CaseId"
TRAINING_SET_ATTRIBUTE = "RepUXTrainer.TrainingSet"


@dataclass
class CaseExport:
    """What :func:`addCase` wrote.

    Attributes:
        caseId: id of the new case.
        imagePath, labelPath: the two files.
        organs: classes with at least one voxel.
        voxels: voxel count per class.
        resampled: how the segmentation's grid differed from the volume's ("" when it did not).
        newClasses: classes added to the training set for unknown segments.
        ignoredSegments: segments that were not exported (unknown or ignored).
        mapping: the mapping used.
    """

    caseId: str
    imagePath: Path
    labelPath: Path
    organs: list[str] = field(default_factory=list)
    voxels: dict[str, int] = field(default_factory=dict)
    resampled: str = ""
    newClasses: list[str] = field(default_factory=list)
    ignoredSegments: list[str] = field(default_factory=list)
    mapping: LabelMapping | None = None

    def messages(self) -> list[str]:
        """Human-readable report lines."""
        lines = [f"case '{self.caseId}': {', '.join(f'{o} ({self.voxels[o]} voxels)' for o in self.organs) or 'no organ voxels'}"]
        if self.resampled:
            lines.append(f"the segmentation was resampled onto the volume's grid: {self.resampled}")
        if self.newClasses:
            lines.append(f"new classes added to the training set: {', '.join(self.newClasses)}")
        if self.ignoredSegments:
            lines.append(f"segments not exported (unknown or ignored): {', '.join(self.ignoredSegments)}")
        return lines


# ----------------------------------------------------------------------------- helpers


def _matrixArray(matrix: Any) -> list[list[float]]:
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]


def _ijkToRAS(volumeNode: Any) -> list[list[float]]:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return _matrixArray(m)


def writeScalarVolume(volumeNode: Any, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write a scalar volume as NRRD in its own geometry (parent transforms are not applied).

    Raises:
        ValueError: not a scalar volume with voxels.
        OSError: the file could not be written.
    """
    checkScalarVolume(volumeNode)
    return writeNodeNrrd(volumeNode, Path(path), compress)


def _segmentImages(segmentationNode: Any, segmentIds: Sequence[str]) -> list[tuple[str, Any]]:
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentationNode.GetSegmentation()
    out = []
    for segmentId in segmentIds:
        segment = segmentation.GetSegment(segmentId)
        image = segment.GetRepresentation(name) if segment is not None else None
        if image is None:
            continue
        extent = image.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            continue  # empty segment: no grid to compare
        out.append((segment.GetName(), image))
    return out


def geometryDifference(segmentationNode: Any, volumeNode: Any, segmentIds: Sequence[str] | None = None) -> str:
    """How the segments' label-map grid differs from the volume's ("" when every voxel centre coincides).

    Only the grids are compared (a segment may cover part of the volume, that is no difference).
    """
    import numpy as np

    if segmentIds is None:
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    differences: list[str] = []
    if (segmentationNode.GetTransformNodeID() or "") != (volumeNode.GetTransformNodeID() or ""):
        differences.append("the segmentation and the volume are under different transforms")
    volume = np.array(_ijkToRAS(volumeNode))
    volumeSpacing = np.linalg.norm(volume[:3, :3], axis=0)
    for segmentName, image in _segmentImages(segmentationNode, segmentIds):
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        grid = np.array(_matrixArray(m))
        parts = []
        spacing = np.linalg.norm(grid[:3, :3], axis=0)
        if not np.allclose(spacing, volumeSpacing, rtol=1e-4, atol=1e-5):
            parts.append(f"spacing {' x '.join(f'{s:.3g}' for s in spacing)} mm instead of {' x '.join(f'{s:.3g}' for s in volumeSpacing)} mm")
        if not np.allclose(grid[:3, :3] / spacing, volume[:3, :3] / volumeSpacing, atol=1e-4):
            parts.append("another orientation")
        if not parts:
            offset = np.linalg.solve(volume[:3, :3], grid[:3, 3] - volume[:3, 3])  # in volume voxels
            if np.abs(offset - np.rint(offset)).max() > 1e-3:
                shift = grid[:3, 3] - volume[:3, 3] - volume[:3, :3] @ np.rint(offset)
                parts.append(f"voxel centres shifted by ({', '.join(f'{s:.3g}' for s in shift)}) mm")
        if parts:
            text = f"'{segmentName}': " + ", ".join(parts)
            if text.split(": ", 1)[1] not in [d.split(": ", 1)[-1] for d in differences]:
                differences.append(text)
    return "; ".join(differences)


def _arrayFromImage(image: Any) -> Any:
    from vtkmodules.util import numpy_support

    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def exportLabelmap(
    context: Any, volumeNode: Any, segmentationNode: Any, segmentIdsByValue: dict[int, list[str]], path: str | os.PathLike[str]
) -> dict[int, int]:
    """Export segments to a label map on the volume's grid and write it; returns voxels per label value.

    ``segmentIdsByValue`` maps label values to the segments that get them (several segments may
    share a value).  ``ExportSegmentsToLabelmapNode`` numbers the exported segments 1..M in order;
    they are then renumbered to the label values (overlaps: the later segment wins, as in Slicer).

    Raises:
        ValueError: no segment to export.
        RuntimeError: Slicer could not export, or the export is not on the volume's grid.
    """
    import numpy as np
    from vtkmodules.util import numpy_support

    checkScalarVolume(volumeNode)
    ordered: list[str] = []
    lookup = [0]
    for value, ids in sorted(segmentIdsByValue.items()):
        for segmentId in ids:
            ordered.append(segmentId)
            lookup.append(int(value))
    if not ordered:
        raise ValueError("no segment to export.")
    segmentation = segmentationNode.GetSegmentation()
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(binary) and not segmentation.CreateRepresentation(binary):
        raise RuntimeError(f"segmentation '{segmentationNode.GetName()}' cannot be converted to a label map.")
    scene = context.scene
    nodesBefore = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    exported = slicer.vtkMRMLLabelMapVolumeNode()
    exported.SetName(scene.GenerateUniqueName("RepUXTrainer export"))
    scene.AddNode(exported)
    try:
        ok = context.segmentations().ExportSegmentsToLabelmapNode(
            segmentationNode, ordered, exported, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not ok or exported.GetImageData() is None:
            raise RuntimeError(f"Slicer could not export segmentation '{segmentationNode.GetName()}' onto volume '{volumeNode.GetName()}'.")
        if exported.GetImageData().GetDimensions() != volumeNode.GetImageData().GetDimensions() or not np.allclose(
            _ijkToRAS(exported), _ijkToRAS(volumeNode), atol=1e-6
        ):
            raise RuntimeError("the exported label map is not on the volume's grid.")
        indices = _arrayFromImage(exported.GetImageData())
        ijkToRAS = vtk.vtkMatrix4x4()
        exported.GetIJKToRASMatrix(ijkToRAS)
    finally:
        # the export node and what Slicer made for it (display node, colour table)
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n.GetID() not in nodesBefore]):
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)
    table = np.array(lookup, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(table)):
        raise RuntimeError(f"unexpected values {int(indices.min())}..{int(indices.max())} in the exported label map.")
    dtype = np.uint8 if max(lookup) < 256 else np.uint16
    labels = table[indices].astype(dtype)
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName("labels")
    image = vtk.vtkImageData()
    dims = volumeNode.GetImageData().GetDimensions()
    image.SetDimensions(dims)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(ijkToRAS)
    writeNodeNrrd(node, Path(path), compress=True)
    counts = np.bincount(labels.ravel(), minlength=max(lookup) + 1)
    return {int(v): int(counts[v]) for v in sorted(set(lookup[1:]))}


# ----------------------------------------------------------------------------- cases


def _dedupeNewLabels(trainingSet: TrainingSet, mapping: LabelMapping) -> list[Any]:
    """Labels for the segments to add as new classes (one per distinct name), values after the set's."""
    from repux.labels import normalize_name

    labels: list[Any] = []
    seen: dict[str, Any] = {}
    for entry in mapping.newClasses():
        key = normalize_name(entry.segment.name)
        if key not in seen:
            label = labelForNewSegment(entry.segment, len(trainingSet.labels) + len(labels) + 1)
            seen[key] = label
            labels.append(label)
    return labels


def _clicksMeta(segmentationNode: Any, valueOf: dict[str, int], labels: Any) -> dict[str, Any]:
    """``{"clicks": {class: [click, ...]}}`` from the segments' click tags (RepUX Segment's click tool), or {}."""
    from RepUXSegmentLib.clicksession import segmentClicks

    segmentation = segmentationNode.GetSegmentation()
    clicks: dict[str, list[dict[str, Any]]] = {}
    for segmentId, value in valueOf.items():
        recorded = segmentClicks(segmentation.GetSegment(segmentId))
        if recorded:
            clicks.setdefault(labels.by_value(value).name, []).extend(recorded)
    return {"clicks": clicks} if clicks else {}


def addCase(
    context: Any,
    trainingSet: TrainingSet,
    volumeNode: Any,
    segmentationNode: Any,
    mapping: LabelMapping | None = None,
    name: str | None = None,
    sourceModel: str | None = None,
    addNewClasses: bool | None = None,
    split: str | None = None,
) -> CaseExport:
    """Write ``volumeNode`` and ``segmentationNode`` as a new case of ``trainingSet``.

    Args:
        context: scene and logics (``RepUXSegmentLib.mrml.MRMLContext``).
        mapping: segment -> class (default: :meth:`LabelMapping.build` on the training set's labels).
        name: case name in the table (default: the volume's name).
        sourceModel: model that produced the segmentation (default: the segmentation's
            ``RepUX.Model`` attribute, else "").
        addNewClasses: True/False to add/ignore all unknown segments (default: as marked in ``mapping``).
        split: pin the case to ``train``/``val``/``test`` (default: the engine draws).

    Raises:
        ValueError: unusable volume or segmentation, or no segment maps to a class.
        RuntimeError, OSError: export or writing failed (nothing is left behind).
    """
    checkScalarVolume(volumeNode)
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise ValueError("choose the (corrected) segmentation of the volume.")
    if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError(f"segmentation '{segmentationNode.GetName()}' has no segments.")
    if mapping is None:
        mapping = LabelMapping.build(segmentsOf(segmentationNode), trainingSet.labels)
    elif not mapping.matches(segmentsOf(segmentationNode)):
        raise ValueError(f"the segments of '{segmentationNode.GetName()}' changed since their mapping was made; map them again.")
    if addNewClasses is not None:
        mapping.addUnknownAsNewClasses(addNewClasses)
    from repux.labels import LabelSet, normalize_name

    newLabels = _dedupeNewLabels(trainingSet, mapping)
    labelsAfter = LabelSet([*trainingSet.labels, *newLabels], name=trainingSet.labels.name) if newLabels else trainingSet.labels
    valueOf: dict[str, int] = {}
    for entry in mapping.entries:
        if entry.label is not None:
            label = labelsAfter.find(entry.label)
            if label is None:
                raise ValueError(
                    f"segment '{entry.segment.name}' is mapped to {entry.label!r}, which is not a class of the training set ({', '.join(labelsAfter.names)})."
                )
            valueOf[entry.segment.id] = label.value
        elif entry.addAsNew:
            valueOf[entry.segment.id] = next(lab.value for lab in newLabels if normalize_name(lab.name) == normalize_name(entry.segment.name))
    if not valueOf:
        raise ValueError(
            f"none of the segments of '{segmentationNode.GetName()}' ({', '.join(e.segment.name for e in mapping.entries)}) maps to a class of the training set "
            f"({', '.join(trainingSet.labels.names)}); map them, or add them as new classes."
        )
    byValue: dict[int, list[str]] = {}
    for segmentId, value in valueOf.items():
        byValue.setdefault(value, []).append(segmentId)

    caseId = trainingSet.uniqueCaseId(name or volumeNode.GetName())
    imagePath, labelPath = trainingSet.imagePath(caseId), trainingSet.labelPath(caseId)
    resampled = geometryDifference(segmentationNode, volumeNode, list(valueOf))
    try:
        counts = exportLabelmap(context, volumeNode, segmentationNode, byValue, labelPath)
        writeScalarVolume(volumeNode, imagePath)
        voxels = {labelsAfter.by_value(v).name: n for v, n in counts.items()}
        organs = [n for n, c in voxels.items() if c > 0]
        previousLabels = trainingSet.labels
        trainingSet.labels = labelsAfter
        try:
            trainingSet.registerCase(
                caseId,
                name or volumeNode.GetName(),
                organs,
                sourceModel if sourceModel is not None else (segmentationNode.GetAttribute(MODEL_ATTRIBUTE) or ""),
                meta={
                    "source_volume": volumeNode.GetName(),
                    "source_segmentation": segmentationNode.GetName(),
                    "resampled": resampled,
                    "voxels": voxels,
                    "segments": {e.segment.name: (e.label or (e.segment.name if e.addAsNew else None)) for e in mapping.entries},
                    **_clicksMeta(segmentationNode, valueOf, labelsAfter),
                },
                split=split,
            )
        except (TrainingSetError, OSError):
            trainingSet.labels = previousLabels
            raise
    except BaseException:
        for p in (imagePath, labelPath):
            if p.exists():
                p.unlink()
        raise
    volumeNode.SetAttribute(CASE_ID_ATTRIBUTE, caseId)
    volumeNode.SetAttribute(TRAINING_SET_ATTRIBUTE, str(trainingSet.root))
    if resampled:
        logger.info("case %s: segmentation resampled onto the volume grid (%s)", caseId, resampled)
    return CaseExport(
        caseId=caseId,
        imagePath=imagePath,
        labelPath=labelPath,
        organs=organs,
        voxels=voxels,
        resampled=resampled,
        newClasses=[lab.name for lab in newLabels],
        ignoredSegments=[e.segment.name for e in mapping.ignored()],
        mapping=mapping,
    )


def loadCase(context: Any, trainingSet: TrainingSet, caseId: str) -> tuple[Any, Any]:
    """Load a case into the scene for review: ``(volume node, segmentation node)``.

    The segmentation has one segment per class of the training set, named, coloured and
    tagged with its terminology; both nodes sit in a subject-hierarchy folder named after
    the training set.

    Raises:
        TrainingSetError: unknown case or missing files.
        OSError: a file cannot be read.
    """
    from RepUXSegmentLib.mrml import importLabelmap, readLabelmapNrrd, segmentSpecs

    row = trainingSet.row(caseId)
    case = trainingSet.case(caseId)
    for p in (Path(case.image), Path(case.label)):
        if not p.is_file():
            raise TrainingSetError(f"case {caseId!r}: {p} is missing; remove the case or restore the file.")
    scene = context.scene
    volumeNode = None
    if context.volumesLogic is not None:
        volumeNode = context.volumesLogic.AddArchetypeVolume(str(case.image), row.name)
    if volumeNode is None:
        volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(row.name))
        storage = slicer.vtkMRMLNRRDStorageNode()
        storage.SetFileName(str(case.image))
        if not storage.ReadData(volumeNode):
            scene.RemoveNode(volumeNode)
            raise OSError(f"could not read {case.image}.")
        volumeNode.CreateDefaultDisplayNodes()
    volumeNode.SetAttribute(CASE_ID_ATTRIBUTE, caseId)
    volumeNode.SetAttribute(TRAINING_SET_ATTRIBUTE, str(trainingSet.root))
    _placeInFolder(scene, volumeNode, f"Training set: {trainingSet.name}")
    labelmap = readLabelmapNrrd(case.label)
    specs = segmentSpecs(trainingSet.labels)
    try:
        segmentationNode = importLabelmap(context, labelmap, specs, volumeNode, name=f"{row.name} segmentation")
    except Exception:
        removeNode(scene, volumeNode)
        raise
    segmentationNode.SetAttribute(CASE_ID_ATTRIBUTE, caseId)
    segmentationNode.SetAttribute(TRAINING_SET_ATTRIBUTE, str(trainingSet.root))
    return volumeNode, segmentationNode


def _placeInFolder(scene: Any, node: Any, folderName: str) -> None:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    sceneItem = sh.GetSceneItemID()
    folder = sh.GetItemChildWithName(sceneItem, folderName)
    if not folder:
        folder = sh.CreateFolderItem(sceneItem, folderName)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)
