"""MRML helpers of RepUXSegment: volume to file, label map to segmentation (no Qt).

Every function takes the scene and the module logics it needs explicitly
(:class:`MRMLContext`); inside Slicer :meth:`MRMLContext.fromSlicer` fills them
from ``slicer.mrmlScene`` and ``slicer.modules``.  Headless tests pass a plain
``vtkMRMLScene`` with real ``vtkSlicerVolumesLogic`` and
``vtkSlicerSegmentationsModuleLogic`` objects (slicer-core).

Geometry: the input volume is written with Slicer's own NRRD storage node and
the label map the engine writes in that same grid is read back with the same
(teem) reader, which keeps the file's voxel order; so the label map's IJK grid is
the volume's, left-handed volumes included.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer
import vtk

__all__ = [
    "MRMLContext",
    "SegmentSpec",
    "checkScalarVolume",
    "formatRoiRas",
    "importLabelmap",
    "placeBeside",
    "readLabelmapNrrd",
    "removeNode",
    "roiBoundsInVolumeSpace",
    "segmentSpecs",
    "segmentSpecsFromModel",
    "subjectHierarchyParent",
    "writeNodeNrrd",
    "writeVolumeNrrd",
]

logger = logging.getLogger(__name__)


@dataclass
class MRMLContext:
    """The scene and module logics the RepUXSegment functions work with.

    Attributes:
        scene: the ``vtkMRMLScene``.
        segmentationsLogic: a ``vtkSlicerSegmentationsModuleLogic`` set to that scene.
        volumesLogic: a ``vtkSlicerVolumesLogic`` (optional; used for display defaults).
        temporaryDirectory: parent folder of the per-job temporary folders (default: the system's).
    """

    scene: Any
    segmentationsLogic: Any = None
    volumesLogic: Any = None
    temporaryDirectory: str | None = None

    @classmethod
    def fromSlicer(cls) -> MRMLContext:
        """The running application's scene and logics (``slicer.mrmlScene``, ``slicer.modules``)."""
        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise RuntimeError("no MRML scene: pass an MRMLContext(scene=..., segmentationsLogic=...) outside the Slicer application.")
        modules = getattr(slicer, "modules", None)
        segmentationsLogic = modules.segmentations.logic() if modules is not None and hasattr(modules, "segmentations") else None
        volumesLogic = modules.volumes.logic() if modules is not None and hasattr(modules, "volumes") else None
        app = getattr(slicer, "app", None)
        temporaryDirectory = str(app.temporaryPath) if app is not None and getattr(app, "temporaryPath", None) else None
        return cls(scene, segmentationsLogic, volumesLogic, temporaryDirectory)

    @classmethod
    def headless(cls, temporaryDirectory: str | None = None) -> MRMLContext:
        """A new scene with the application, colour, volumes, segmentations and subject-hierarchy logics Slicer would
        create (no Qt): for scripts, RepUX Web and tests outside the Slicer application (slicer-core).
        ``context.applicationLogic`` and ``context.moduleLogics`` (by module name) keep them alive with the context."""
        scene = slicer.vtkMRMLScene()
        appLogic = slicer.vtkSlicerApplicationLogic()
        appLogic.SetMRMLScene(scene)
        colorLogic = appLogic.GetColorLogic()
        colorLogic.SetMRMLScene(scene)
        colorLogic.AddDefaultColorNodes()
        appLogic.SetModuleLogic("Colors", colorLogic)
        logics = {}
        for name, logicClass in (
            ("Volumes", slicer.vtkSlicerVolumesLogic),
            ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
            ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ):
            logic = logicClass()
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(appLogic)
            appLogic.SetModuleLogic(name, logic)
            logics[name] = logic
        context = cls(scene, logics["Segmentations"], logics["Volumes"], temporaryDirectory)
        context.applicationLogic = appLogic  # keeps the logics alive with the context
        context.moduleLogics = logics
        return context

    def segmentations(self) -> Any:
        """The segmentations logic, created for this scene when none was given."""
        if self.segmentationsLogic is None:
            self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
            self.segmentationsLogic.SetMRMLScene(self.scene)
        return self.segmentationsLogic


@dataclass(frozen=True)
class SegmentSpec:
    """How one label value becomes a segment: value in the label map, name, colour (0..1), terminology tag."""

    value: int
    name: str
    color: tuple[float, float, float] = (0.8, 0.6, 0.4)
    terminology: str = ""


def segmentSpecs(labels: Iterable[Any]) -> list[SegmentSpec]:
    """One :class:`SegmentSpec` per label of a ``repux.labels.LabelSet`` (name, colour, SNOMED terminology)."""
    return [SegmentSpec(lab.value, lab.name, tuple(lab.color_float), lab.slicer_terminology()) for lab in labels]


def segmentSpecsFromModel(model: str | os.PathLike[str]) -> tuple[Any, list[SegmentSpec]]:
    """The model card (``repux.models.store.resolve_model``) and one :class:`SegmentSpec` per label, by value.

    Raises:
        repux.errors.ModelFileError: unknown model id or not a model folder.
    """
    from repux.models.store import resolve_model

    card = resolve_model(str(model))
    return card, segmentSpecs(card.labels)


def checkScalarVolume(volumeNode: Any) -> None:
    """Raise ValueError unless ``volumeNode`` is a scalar (not label map) volume with voxels and one component."""
    if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"the input must be a scalar volume node; got {volumeNode.GetClassName() if volumeNode is not None else None}.")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"'{volumeNode.GetName()}' is a label map; choose the CT volume as input.")
    image = volumeNode.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(f"volume '{volumeNode.GetName()}' has no voxels.")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; RepUX needs a scalar CT volume.")


def writeNodeNrrd(node: Any, path: str | os.PathLike[str], compress: bool = False) -> Path:
    """Write a volume or label map node with Slicer's NRRD storage node, in its own geometry.

    Written to a temporary name and renamed (never half-written); the storage node is not added to
    the scene, so the scene is not modified.

    Raises:
        OSError: the file could not be written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.stem}.partial{out.suffix}")
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(temporary))
    storage.SetUseCompression(bool(compress))
    try:
        if not storage.WriteData(node) or not temporary.is_file():
            raise OSError(f"could not write '{node.GetName()}' to {out}.")
        os.replace(temporary, out)
    finally:
        if temporary.exists():
            temporary.unlink()
    return out


def writeVolumeNrrd(volumeNode: Any, path: str | os.PathLike[str], compress: bool = False) -> Path:
    """Write a scalar volume as NRRD (uncompressed by default, geometry as in the scene).

    Raises:
        ValueError: not a scalar volume, no voxels, or more than one component.
        OSError: the file could not be written.
    """
    checkScalarVolume(volumeNode)
    return writeNodeNrrd(volumeNode, path, compress)


def readLabelmapNrrd(path: str | os.PathLike[str]) -> Any:
    """Read a label map file into a ``vtkMRMLLabelMapVolumeNode`` that is not added to any scene.

    The teem NRRD reader keeps the voxel order of the file (no right-handed flip).

    Raises:
        OSError: missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise OSError(f"the label map {p} was not written.")
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLNRRDStorageNode()
    storage.SetFileName(str(p))
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise OSError(f"could not read the label map {p}.")
    return node


def roiBoundsInVolumeSpace(roiNode: Any, volumeNode: Any) -> list[float]:
    """RAS bounds ``[r0, a0, s0, r1, a1, s1]`` of a markups ROI in the volume's own (untransformed) space.

    The engine works in the coordinates of the file written from the volume, which
    ignore the volume's parent transform; the ROI's world bounds are mapped there.

    Raises:
        ValueError: the ROI is undefined (no control point / empty).
    """
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)  # world coordinates: [xmin, xmax, ymin, ymax, zmin, zmax]
    if any(not bounds[2 * i + 1] > bounds[2 * i] for i in range(3)):
        raise ValueError(f"ROI '{roiNode.GetName()}' is empty; place it on the volume first.")
    corners = [[x, y, z] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]]
    parent = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    if parent is not None:
        worldToVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToVolume)
        corners = [list(worldToVolume.TransformPoint(c)) for c in corners]
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    return [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]]


def formatRoiRas(bounds: Sequence[float]) -> str:
    """``"r0,a0,s0,r1,a1,s1"`` for ``repux segment --roi-ras``.

    Raises:
        ValueError: not 6 finite numbers.
    """
    values = [float(v) for v in bounds]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"an ROI needs 6 finite numbers r0,a0,s0,r1,a1,s1; got {list(bounds)}.")
    return ",".join(f"{v:.4f}" for v in values)


def subjectHierarchyParent(scene: Any, node: Any) -> int:
    """Subject-hierarchy item that holds ``node`` (its parent), or the scene item."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return 0
    item = sh.GetItemByDataNode(node)
    if not item:
        return sh.GetSceneItemID()
    return sh.GetItemParent(item) or sh.GetSceneItemID()


def placeBeside(scene: Any, node: Any, referenceNode: Any) -> None:
    """Put ``node`` under the same subject-hierarchy parent as ``referenceNode`` (creating its item if needed)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    parent = subjectHierarchyParent(scene, referenceNode)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def _addEmptySegments(segmentation: Any, specs: Sequence[SegmentSpec]) -> Any:
    ids = vtk.vtkStringArray()
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for spec in specs:
        segmentId = segmentation.GenerateUniqueSegmentID(spec.name)
        segmentation.AddEmptySegment(segmentId, spec.name, list(spec.color))
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag(tag, spec.terminology)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        ids.InsertNextValue(segmentId)
    return ids


def _setReferenceGeometryInVolumeSpace(segNode: Any, volumeNode: Any) -> None:
    """The segmentation's reference geometry: the volume's IJK grid in the volume's own (untransformed) space."""
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijkToRAS, volumeNode.GetImageData())
    segNode.GetSegmentation().SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry)
    segNode.SetNodeReferenceID(segNode.GetReferenceImageGeometryReferenceRole(), volumeNode.GetID())


def importLabelmap(
    context: MRMLContext,
    labelmapNode: Any,
    specs: Sequence[SegmentSpec],
    volumeNode: Any,
    outputSegmentation: Any = None,
    name: str | None = None,
) -> Any:
    """Turn a label map (in the volume's grid) into one named, coloured, tagged segment per label.

    Label value ``spec.value`` goes to the segment of ``spec`` (labels absent from
    the map give empty segments, so the segmentation always lists the model's
    organs).  The segmentation's reference geometry is the volume, its parent
    transform is the volume's (set after the import: the label map is in the
    volume's untransformed space), and it sits beside the volume in the subject
    hierarchy.  An existing ``outputSegmentation`` has its segments replaced; a new
    node is added to the scene only when the import succeeded.

    Raises:
        RuntimeError: the import failed (the scene is left as it was).
    """
    scene = context.scene
    logic = context.segmentations()
    specs = sorted(specs, key=lambda s: s.value)
    if [s.value for s in specs] != list(range(1, len(specs) + 1)):
        raise ValueError(f"label values must be 1..N; got {[s.value for s in specs]}.")
    created = outputSegmentation is None
    backup = None
    backupTransformID = None
    if created:
        segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or f"{volumeNode.GetName()} segmentation"))
        segNode.CreateDefaultDisplayNodes()
    else:
        segNode = outputSegmentation
        backup = slicer.vtkSegmentation()
        backup.DeepCopy(segNode.GetSegmentation())
        backupTransformID = segNode.GetTransformNodeID()
    wasModifying = segNode.StartModify()
    try:
        # The label map read from the engine is in the volume's own (untransformed) space and has no parent
        # transform.  Slicer's import maps it from its parent (the world) into the segmentation's parent
        # transform, so the segmentation must not be under a transform yet: import untransformed, then put the
        # segmentation under the volume's transform, where its voxels coincide with the volume's (linear and
        # non-linear transforms alike; no resampling through the transform).  The reference geometry is the
        # volume's own grid too (SetReferenceImageGeometryParameterFromVolumeNode would move it by the transform
        # between the volume's and the segmentation's parents).
        segNode.SetAndObserveTransformNodeID(None)
        _setReferenceGeometryInVolumeSpace(segNode, volumeNode)
        segmentation = segNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        ids = _addEmptySegments(segmentation, specs)
        if not logic.ImportLabelmapToSegmentationNode(labelmapNode, segNode, ids):
            raise RuntimeError("Slicer could not import the label map into the segmentation.")
        segNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    except Exception:
        if created:
            removeNode(scene, segNode)
        elif backup is not None:
            segNode.GetSegmentation().DeepCopy(backup)
            segNode.SetAndObserveTransformNodeID(backupTransformID)
        raise
    finally:
        if scene.IsNodePresent(segNode):
            segNode.EndModify(wasModifying)
    if segNode.GetDisplayNode() is None:
        segNode.CreateDefaultDisplayNodes()
    placeBeside(scene, segNode, volumeNode)
    return segNode


def removeNode(scene: Any, node: Any) -> None:
    """Remove ``node`` with its display and storage nodes (nothing happens when it is not in the scene)."""
    if node is None or not scene.IsNodePresent(node):
        return
    for i in reversed(range(node.GetNumberOfDisplayNodes())):
        display = node.GetNthDisplayNode(i)
        if display is not None and scene.IsNodePresent(display):
            scene.RemoveNode(display)
    storage = node.GetStorageNode()
    if storage is not None and scene.IsNodePresent(storage):
        scene.RemoveNode(storage)
    scene.RemoveNode(node)
