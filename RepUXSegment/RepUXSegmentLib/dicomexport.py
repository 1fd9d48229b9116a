"""Export a segmentation as DICOM SEG for a volume loaded from Slicer's DICOM database (no Qt).

The volume node's ``DICOM.instanceUIDs`` attribute (set by Slicer's DICOM scalar-volume plugin) names
the source instances; ``dicomDatabase.fileForInstance(uid)`` gives their files.  The segments are
exported as a label map on the volume's grid (values 1..N in segment order) with their names, colours
and terminology codes, and the engine writes the SEG with the same writer as
``repux segment --format dicom-seg`` (``repux dicom-seg``), so the SEG references the source series and
every source instance, and a series without its UIDs is refused in one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DicomSegExportError", "dicomSegArguments", "dicomSourceFiles", "exportDicomSeg", "segmentLabels"]

logger = logging.getLogger(__name__)


class DicomSegExportError(RuntimeError):
    """The DICOM SEG could not be written (the message is one line for the user)."""


def dicomSourceFiles(volumeNode: Any, dicomDatabase: Any) -> list[str]:
    """The files of the DICOM instances ``volumeNode`` was loaded from.

    Raises:
        DicomSegExportError: the volume does not come from the DICOM database, or files are missing.
    """
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise DicomSegExportError(
            f"volume '{volumeNode.GetName()}' was not loaded from Slicer's DICOM database (it has no DICOM.instanceUIDs); "
            "load the series with the DICOM module to export a DICOM SEG, or save the segmentation as .seg.nrrd."
        )
    if dicomDatabase is None:
        raise DicomSegExportError("Slicer's DICOM database is not open; open it in the DICOM module.")
    files, missing = [], []
    for uid in uids:
        path = dicomDatabase.fileForInstance(uid) or ""
        (files if path and os.path.isfile(path) else missing).append(path or uid)
    if missing:
        raise DicomSegExportError(
            f"{len(missing)} of the {len(uids)} source instances of '{volumeNode.GetName()}' are not in the DICOM database any more "
            f"(first: {missing[0]}); import the series again in the DICOM module."
        )
    return files


def _terminologyCodes(tag: str) -> dict[str, Any]:
    """Category, type and modifier codes of a segment's ``TerminologyEntry`` tag (``~``-separated ``scheme^value^meaning``)."""
    parts = tag.split("~") if tag else []

    def code(text: str) -> dict[str, str] | None:
        fields = text.split("^")
        if len(fields) >= 3 and fields[0] and fields[1]:
            return {"value": fields[1], "scheme": fields[0], "meaning": fields[2]}
        return None

    out: dict[str, Any] = {}
    for key, index in (("category", 1), ("type", 2), ("modifier", 3)):
        if len(parts) > index and code(parts[index]):
            out[key] = code(parts[index])
    return out


def _tag(segment: Any, key: str) -> str:
    """A segment tag's value ('' when absent); vtkSegment.GetTag fills a reference."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def segmentLabels(segmentationNode: Any, segmentIds: Sequence[str]) -> list[dict[str, Any]]:
    """The engine's label list for the segments: value 1..N in ``segmentIds`` order, name, colour, codes."""
    segmentation = segmentationNode.GetSegmentation()
    labels = []
    for value, segmentId in enumerate(segmentIds, start=1):
        segment = segmentation.GetSegment(segmentId)
        color = [max(0, min(255, round(c * 255))) for c in segment.GetColor()]
        entry = {"value": value, "name": segment.GetName() or f"segment {value}", "color": color}
        entry.update(_terminologyCodes(_tag(segment, "TerminologyEntry")))
        labels.append(entry)
    return labels


def dicomSegArguments(labelmapPath: str, labelsPath: str, sourceListPath: str, outputPath: str, seriesDescription: str, algorithm: str) -> list[str]:
    """``repux dicom-seg`` arguments."""
    return [
        "dicom-seg",
        "--input",
        str(labelmapPath),
        "--labels",
        str(labelsPath),
        "--source",
        f"@{sourceListPath}",
        "--output",
        str(outputPath),
        "--series-description",
        seriesDescription,
        "--algorithm-name",
        algorithm,
    ]


def exportDicomSeg(
    segmentationNode: Any,
    volumeNode: Any,
    outputPath: str | os.PathLike[str],
    dicomDatabase: Any,
    context: Any,
    pythonExecutable: str | None = None,
    segmentIds: Sequence[str] | None = None,
    seriesDescription: str = "RepUX segmentation",
    algorithm: str = "RepUX",
    timeout: float | None = 600,
) -> Path:
    """Write the segmentation (all segments, or ``segmentIds``) as a DICOM SEG of ``volumeNode``'s DICOM series.

    Raises:
        DicomSegExportError: no DICOM source, no segment, or the engine refused (its one-line message).
    """
    from .mrml import writeNodeNrrd
    from .widgethelpers import startRepuxCommand

    files = dicomSourceFiles(volumeNode, dicomDatabase)
    ids = list(segmentIds) if segmentIds else list(segmentationNode.GetSegmentation().GetSegmentIDs())
    if not ids:
        raise DicomSegExportError(f"segmentation '{segmentationNode.GetName()}' has no segments to export.")
    import slicer

    work = Path(tempfile.mkdtemp(prefix="repux-dicomseg-", dir=getattr(context, "temporaryDirectory", None) or None))
    labelmapNode = slicer.vtkMRMLLabelMapVolumeNode()
    scene = context.scene
    scene.AddNode(labelmapNode)
    try:
        import vtk

        idArray = vtk.vtkStringArray()
        for segmentId in ids:
            idArray.InsertNextValue(segmentId)
        if not context.segmentations().ExportSegmentsToLabelmapNode(
            segmentationNode, idArray, labelmapNode, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        ):
            raise DicomSegExportError("Slicer could not export the segments to a label map on the volume's grid.")
        labelmapPath = writeNodeNrrd(labelmapNode, work / "labels.nrrd")
        labelsPath = work / "labels.json"
        labelsPath.write_text(json.dumps(segmentLabels(segmentationNode, ids), indent=1))
        sourceList = work / "sources.txt"
        sourceList.write_text("".join(f"{f}\n" for f in files))
        runner = startRepuxCommand(
            dicomSegArguments(str(labelmapPath), str(labelsPath), str(sourceList), str(outputPath), seriesDescription, algorithm), pythonExecutable
        )
        runner.wait(timeout=timeout)
        if not runner.succeeded:
            raise DicomSegExportError(runner.errorMessage or f"repux dicom-seg failed (exit code {runner.returncode}).")
    finally:
        scene.RemoveNode(labelmapNode)
        shutil.rmtree(work, ignore_errors=True)
    logger.info("wrote DICOM SEG %s (%d segments, %d source instances)", outputPath, len(ids), len(files))
    return Path(outputPath)
