"""Click to segment (Qt-free): a markups point list drives a resident ``repux session`` process.

:class:`ClickSegmentTool` observes a point list (``PointPositionDefinedEvent``: a point placed
in a view, or ``AddControlPoint`` in a script or test), maps the point through the volume's
parent transform into the volume's own RAS space, and sends it to the session process
(``<python> -m repux session``, JSON lines; see the README).  The engine answers with the
organ under the point and the changed box of its label map; the tool writes only the voxels of
that organ's segment that changed, inside that box (``SetBinaryLabelmapToSegment`` with the box
as extent): other segments, and the rest of the segment, are untouched.  :meth:`undo` restores
the segment's previous content in that box (or removes a segment the click created).

The owner calls :meth:`processEvents` from its event loop (a ``qt.QTimer`` in the module);
nothing here blocks: a click only writes one line to the child's stdin.  A click sent while
another computes supersedes it: the engine abandons the older one (its answer is "cancelled"); answers
arrive in the order of the clicks, so an older result never lands on top of a newer one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from .mrml import MRMLContext, SegmentSpec, checkScalarVolume, placeBeside, readLabelmapNrrd, segmentSpecs, writeVolumeNrrd
from .process import ProcessRunner, childEnvironment, findPythonExecutable, repuxCommand

__all__ = ["CLICKS_TAG", "CLICK_POINTS_NAME", "ClickOutcome", "ClickSegmentTool", "clickPointList", "segmentClicks", "volumeRasFromWorld"]

#: segment tag holding the clicks that made or corrected the segment: JSON list of {"ras": [R, A, S] (the volume's own
#: RAS, mm), "positive": bool, "organ": name or null}; it travels with the segment (.seg.nrrd) and into curated cases
CLICKS_TAG = "RepUX.Clicks"

#: name of the markups point list whose placed points are clicks (one per scene, shared by RepUX Segment and RepUX Web)
CLICK_POINTS_NAME = "RepUX clicks"

logger = logging.getLogger(__name__)


def volumeRasFromWorld(volumeNode: Any, worldPosition: Any) -> list[float]:
    """A world (scene) RAS point in the volume's own RAS space: through the inverse of its parent transform(s)."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), transform)
    return [float(v) for v in transform.TransformPoint([float(c) for c in worldPosition])]


def segmentClicks(segment: Any) -> list[dict[str, Any]]:
    """The clicks recorded on a vtkSegment (:data:`CLICKS_TAG`); [] when none or unreadable."""
    value = vtk.reference("")
    if segment is None or not segment.GetTag(CLICKS_TAG, value):
        return []
    try:
        clicks = json.loads(str(value))
    except ValueError:
        return []
    return [c for c in clicks if isinstance(c, dict) and isinstance(c.get("ras"), list) and len(c["ras"]) == 3] if isinstance(clicks, list) else []


def _setSegmentClicks(segment: Any, clicks: list[dict[str, Any]]) -> None:
    if clicks:
        segment.SetTag(CLICKS_TAG, json.dumps(clicks))
    else:
        segment.RemoveTag(CLICKS_TAG)


def clickPointList(scene: Any, name: str = CLICK_POINTS_NAME) -> Any:
    """The scene's click point list (a markups fiducial node named ``name``), created with its display node if absent."""
    points = scene.GetFirstNodeByName(name)
    if points is None or not points.IsA("vtkMRMLMarkupsFiducialNode"):
        points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        points.CreateDefaultDisplayNodes()
        display = points.GetDisplayNode()
        if display is not None:  # small unlabelled dots: the organ under them is what matters
            display.SetPointLabelsVisibility(False)
            display.SetGlyphScale(1.5)
    return points


#: outcome statuses of a click that changed (or deliberately kept) a segment: the status line shows their latency
CLICK_RESULT_STATUSES = ("added", "grown", "corrected", "removed", "unchanged")


@dataclass
class ClickOutcome:
    """What the tool reports for one reply: status, organ, the segment written, latency (s), message."""

    status: str
    organ: str | None = None
    segmentId: str | None = None
    seconds: float = 0.0
    engineSeconds: float = 0.0
    message: str = ""
    clickId: int | None = None

    def describe(self) -> str:
        """One status line: the engine's message, with the click's round-trip latency for a click result."""
        if self.status in CLICK_RESULT_STATUSES:
            return f"{self.message or self.status} - {self.seconds:.2f} s"
        return self.message or self.status


class ClickSegmentTool:
    """Click to segment one volume with a resident engine session.

    Args:
        context: the scene and logics (:class:`~RepUXSegmentLib.mrml.MRMLContext`).
        volumeNode: the CT volume.
        pointListNode: the markups point list whose placed points are clicks.
        segmentationNode: where segments go (default: a new "<volume> clicks" segmentation).
        model: model id or folder for the session (default: the engine's built-in model).
        device: ``--device`` of the session.
        pythonExecutable: interpreter (default: PythonSlicer inside Slicer, else this Python).
        environment: child environment (default: :func:`childEnvironment`).
        onOutcome: called with a :class:`ClickOutcome` for every click, undo and error.
        onProgress: called with the engine's progress updates (open, background pass).
        extraArguments: more ``repux session`` options (``--threads 2``...).
    """

    def __init__(
        self,
        context: MRMLContext,
        volumeNode: Any,
        pointListNode: Any,
        segmentationNode: Any = None,
        *,
        model: str | None = None,
        device: str = "auto",
        pythonExecutable: str | None = None,
        environment: dict[str, str] | None = None,
        onOutcome: Callable[[ClickOutcome], None] | None = None,
        onProgress: Callable[[Any], None] | None = None,
        extraArguments: list[str] | None = None,
    ) -> None:
        checkScalarVolume(volumeNode)
        self.context = context
        self.scene = context.scene
        self.volumeNode = volumeNode
        self.pointListNode = pointListNode
        self.segmentationNode = segmentationNode
        self.model = model
        self.device = device
        self.pythonExecutable = pythonExecutable
        self.environment = environment
        self.onOutcome = onOutcome
        self.onProgress = onProgress
        self.extraArguments = list(extraArguments or [])
        self.positive = True
        #: a positive click's organ: None selects the organ under the click; a name grows it there (select mode) or,
        #: with a click-guidance model, feeds the click to the network as a correction
        self.organ: str | None = None
        self.runner: ProcessRunner | None = None
        self.ready = False
        self.opened = False
        self.specs: dict[int, SegmentSpec] = {}
        self.lastOutcome: ClickOutcome | None = None
        self.outcomes: list[ClickOutcome] = []
        self.failure: str | None = None
        self._nextId = 0
        self._latestClick: int | None = None
        self._sent: dict[int, tuple[str, float]] = {}
        self._mirror: np.ndarray | None = None  # the engine's label map (k, j, i), as far as its replies told
        self._history: list[list[tuple[str, bool, tuple[int, ...], np.ndarray]]] = []
        self._clickInfo: dict[int, dict[str, Any]] = {}  # sent click id -> the click (recorded on the segments it changes)
        self._taggedHistory: list[list[str]] = []  # per history entry: the segments whose click list got the click
        self._observers: list[tuple[Any, int]] = []
        self._volumeChanged = False
        self._stopping = False
        self._workdir = Path(tempfile.mkdtemp(prefix="repux-click-", dir=context.temporaryDirectory))

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def start(self) -> None:
        """Start the session process, open the volume in it and observe the point list."""
        args = ["session", "--device", self.device, *self.extraArguments]
        if self.model:
            args += ["--model", str(self.model)]
        command = repuxCommand(args, self.pythonExecutable or findPythonExecutable())
        env = self.environment if self.environment is not None else childEnvironment()
        self.runner = ProcessRunner(command, env=env, onProgress=self._onProgress, onLog=self._onLog, onFinished=self._onFinished, control=True)
        self.runner.start()
        self.failure = None
        self._stopping = False
        self._openVolume()
        if not self._observers:
            event = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
            self._observers.append((self.pointListNode, self.pointListNode.AddObserver(event, self._onPointDefined)))
            self._observers.append((self.volumeNode, self.volumeNode.AddObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onVolumeModified)))

    def _openVolume(self) -> None:
        path = writeVolumeNrrd(self.volumeNode, self._workdir / "volume.nrrd")
        self.opened = False
        self._volumeChanged = False
        self._mirror = None
        self._send({"command": "open", "input": str(path)})

    def stop(self) -> None:
        """End the session process (stop line, then kill after the grace period) and the observations."""
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers = []
        self._stopping = True
        if self.runner is not None and self.runner.running:
            self.runner.cancel(block=True)
            self.runner.processEvents()
        import shutil

        shutil.rmtree(self._workdir, ignore_errors=True)

    # ------------------------------------------------------------------ the child
    def _send(self, command: dict[str, Any]) -> int:
        if self.runner is None or self.runner.process is None or self.runner.process.stdin is None:
            raise RuntimeError("the click session is not running; press Initialize.")
        self._nextId += 1
        command["id"] = self._nextId
        self._sent[self._nextId] = (command["command"], time.perf_counter())
        try:
            self.runner.process.stdin.write(json.dumps(command) + "\n")
            self.runner.process.stdin.flush()
        except (OSError, ValueError) as err:
            raise RuntimeError(f"the click session process is gone ({err}); press Initialize to restart it.") from err
        return self._nextId

    def processEvents(self) -> bool:
        """Deliver the engine's replies (call from the event loop); True while the session runs."""
        if self.runner is None:
            return False
        return self.runner.processEvents()

    def waitFor(self, predicate: Callable[[], bool], timeout: float = 120.0) -> bool:
        """Scripts and tests: process events until ``predicate()`` or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.processEvents()
            if predicate():
                return True
            if self.runner is not None and self.runner.finished:
                return predicate()
            time.sleep(0.01)
        return False

    def _onProgress(self, update: Any) -> None:
        if self.onProgress is not None:
            self.onProgress(update)

    def _onFinished(self, runner: ProcessRunner) -> None:
        self.ready = self.opened = False
        if not runner.cancelled:
            self.failure = f"the click session process ended (exit code {runner.returncode}): {runner.errorMessage or 'no message'}; press Initialize to restart it. The scene is unchanged."
            self._report(ClickOutcome("failed", message=self.failure))

    def _onLog(self, message: Any) -> None:
        if message.stream != "stdout" or not message.text.startswith("{"):
            if message.level in ("WARNING", "ERROR"):
                logger.warning("click session: %s", message.text)
            return
        try:
            reply = json.loads(message.text)
        except ValueError:
            return
        if isinstance(reply, dict) and "reply" in reply:
            self._onReply(reply)

    def _onReply(self, reply: dict[str, Any]) -> None:
        if self._stopping:
            return
        kind = reply.get("reply")
        sent = self._sent.pop(reply.get("id"), None)
        latency = time.perf_counter() - sent[1] if sent else 0.0
        if kind == "ready":
            from repux.labels import LabelSet

            self.specs = {s.value: s for s in segmentSpecs(LabelSet.from_list(reply["labels"]))}
            self.ready = True
            return
        if not reply.get("ok", False):
            self._report(ClickOutcome("error", message=str(reply.get("error")), seconds=latency, clickId=reply.get("id")))
            return
        if kind == "open":
            self.opened = True
            self._report(ClickOutcome("opened", seconds=latency, message=f"session open: {reply.get('windows')} windows"))
            return
        if kind in ("click", "undo", "reset"):
            # replies come in the order of the clicks: a click the engine finished before a newer one arrived is applied
            # (then the newer one on top); one it abandoned for the newer click answers "cancelled" and changes nothing
            if reply.get("labels"):
                try:
                    deltas = self._updateMirror(reply)
                    if kind != "undo":
                        self._applyDeltas(deltas, reply)
                except (OSError, RuntimeError) as err:
                    self._report(ClickOutcome("error", message=f"could not apply the click: {err}", clickId=reply.get("id")))
                    return
                finally:
                    try:
                        os.remove(reply["labels"])
                    except OSError:
                        pass
            self._clickInfo.pop(reply.get("id"), None)
            status = reply.get("status", "")
            self._report(
                ClickOutcome(
                    status,
                    organ=reply.get("organ"),
                    segmentId=self._segmentIdOf(reply.get("organ")) if reply.get("organ") else None,
                    seconds=latency,
                    engineSeconds=float(reply.get("seconds") or 0.0),
                    message=reply.get("message", ""),
                    clickId=reply.get("id"),
                )
            )

    def _report(self, outcome: ClickOutcome) -> None:
        self.lastOutcome = outcome
        self.outcomes.append(outcome)
        if self.onOutcome is not None:
            self.onOutcome(outcome)

    # ------------------------------------------------------------------ clicks
    def _onVolumeModified(self, caller: Any, event: Any) -> None:
        self._volumeChanged = True

    @vtk.calldata_type(vtk.VTK_INT)
    def _onPointDefined(self, caller: Any, event: Any, index: int) -> None:
        position = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(int(index), position)
        self.clickWorld(position, self.positive)

    def clickWorld(self, worldPosition: Any, positive: bool = True) -> int | None:
        """Send a click at a world (scene) RAS position; returns its id (None when the session is not running)."""
        if not self.running:
            self._report(ClickOutcome("error", message=self.failure or "the click session is not running; press Initialize."))
            return None
        if self._volumeChanged:  # never answer for the old voxels
            self._report(ClickOutcome("reopening", message="the volume changed: the session re-opens it"))
            self._openVolume()
        ras = volumeRasFromWorld(self.volumeNode, worldPosition)
        command = {"command": "click", "ras": ras, "positive": bool(positive)}
        if positive and self.organ:
            command["organ"] = self.organ
        self._latestClick = self._send(command)
        self._clickInfo[self._latestClick] = {"ras": [round(v, 3) for v in ras], "positive": bool(positive), "organ": command.get("organ")}
        return self._latestClick

    def undo(self) -> bool:
        """Restore the segments as they were before the last change; False when there is nothing to undo."""
        if not self._history:
            return False
        tagged = self._taggedHistory.pop() if len(self._taggedHistory) == len(self._history) else []
        for segmentId, created, extent, previous in reversed(self._history.pop()):
            segNode = self.segmentationNode
            if created:
                segNode.GetSegmentation().RemoveSegment(segmentId)
            else:
                self._writeSegmentCrop(segmentId, extent, previous)
                if segmentId in tagged:
                    segment = segNode.GetSegmentation().GetSegment(segmentId)
                    _setSegmentClicks(segment, segmentClicks(segment)[:-1])
        if self.running:
            self._send({"command": "undo"})
        return True

    # ------------------------------------------------------------------ write-back
    def _updateMirror(self, reply: dict[str, Any]) -> list[tuple[int, tuple[int, ...], np.ndarray, np.ndarray]]:
        """Apply the reply's crop to the mirror of the engine's label map; per changed organ (value, extent, added, removed)."""
        node = readLabelmapNrrd(reply["labels"])
        from vtkmodules.util import numpy_support

        image = node.GetImageData()
        ni, nj, nk = image.GetDimensions()
        crop = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nk, nj, ni)
        i0, j0, k0 = (int(v) for v in reply["offset"])
        if self._mirror is None:
            dims = self.volumeNode.GetImageData().GetDimensions()
            self._mirror = np.zeros((dims[2], dims[1], dims[0]), np.uint8)
        box = (slice(k0, k0 + nk), slice(j0, j0 + nj), slice(i0, i0 + ni))
        previous = self._mirror[box].copy()
        self._mirror[box] = crop
        extent = (i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
        deltas = []
        for value in sorted(set(np.unique(previous)) | set(np.unique(crop))):
            if value == 0:
                continue
            added = (crop == value) & (previous != value)
            removed = (previous == value) & (crop != value)
            if added.any() or removed.any():
                deltas.append((int(value), extent, added, removed))
        return deltas

    def _ensureSegmentation(self) -> Any:
        if self.segmentationNode is None or not self.scene.IsNodePresent(self.segmentationNode):
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(f"{self.volumeNode.GetName()} segmentation"))
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
            node.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
            placeBeside(self.scene, node, self.volumeNode)
            self.segmentationNode = node
        return self.segmentationNode

    def _segmentIdOf(self, name: str | None) -> str | None:
        if name is None or self.segmentationNode is None:
            return None
        return self.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name) or None

    def _segmentFor(self, value: int) -> tuple[str, bool]:
        """The segment of organ ``value`` (found by name; created named, coloured and tagged as Apply makes it)."""
        segNode = self._ensureSegmentation()
        spec = self.specs[value]
        segmentation = segNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(spec.name)
        if segmentId:
            return segmentId, False
        segmentId = segmentation.GenerateUniqueSegmentID(spec.name)
        segmentation.AddEmptySegment(segmentId, spec.name, list(spec.color))
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), spec.terminology)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        return segmentId, True

    def _readSegmentCrop(self, segmentId: str, extent: tuple[int, ...]) -> np.ndarray:
        """The segment's voxels inside ``extent`` (volume IJK), ``(k, j, i)`` uint8 0/1."""
        from vtkmodules.util import numpy_support

        i0, i1, j0, j1, k0, k1 = extent
        out = np.zeros((k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1), np.uint8)
        image = slicer.vtkOrientedImageData()
        if not self.segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image):
            return out
        e = image.GetExtent()
        if e[1] < e[0] or e[3] < e[2] or e[5] < e[4]:
            return out
        self._checkGrid(image)
        arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        lo = [max(a, b) for a, b in zip((k0, j0, i0), (e[4], e[2], e[0]))]
        hi = [min(a, b) for a, b in zip((k1, j1, i1), (e[5], e[3], e[1]))]
        if any(h < low for low, h in zip(lo, hi)):
            return out
        src = tuple(slice(low - s, h - s + 1) for low, h, s in zip(lo, hi, (e[4], e[2], e[0])))
        dst = tuple(slice(low - s, h - s + 1) for low, h, s in zip(lo, hi, (k0, j0, i0)))
        out[dst] = arr[src] > 0
        return out

    def _checkGrid(self, image: Any) -> None:
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(a)
        self.volumeNode.GetIJKToRASMatrix(b)
        if not np.allclose([a.GetElement(r, c) for r in range(4) for c in range(4)], [b.GetElement(r, c) for r in range(4) for c in range(4)], atol=1e-4):
            raise RuntimeError("the segmentation's labelmap grid is not the volume's; choose a segmentation made on this volume.")

    def _writeSegmentCrop(self, segmentId: str, extent: tuple[int, ...], crop: np.ndarray) -> None:
        from vtkmodules.util import numpy_support

        image = slicer.vtkOrientedImageData()
        image.SetExtent(*extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(crop, np.uint8).ravel()
        matrix = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(matrix)
        image.SetImageToWorldMatrix(matrix)
        logic = self.context.segmentations()
        if not logic.SetBinaryLabelmapToSegment(image, self.segmentationNode, segmentId, logic.MODE_REPLACE, list(extent)):
            raise RuntimeError(f"Slicer could not write segment {segmentId!r}.")

    def _applyDeltas(self, deltas: list[tuple[int, tuple[int, ...], np.ndarray, np.ndarray]], reply: dict[str, Any]) -> None:
        entry = []
        for value, extent, added, removed in deltas:
            segmentId, created = self._segmentFor(value)
            previous = self._readSegmentCrop(segmentId, extent)
            new = previous.copy()
            new[added] = 1
            new[removed] = 0
            self._writeSegmentCrop(segmentId, extent, new)
            entry.append((segmentId, created, extent, previous))
        if entry:
            self._history.append(entry)
            click = self._clickInfo.pop(reply.get("id"), None) if reply.get("reply") == "click" else None
            tagged = []
            if click is not None:  # the click goes with every segment it changed
                segmentation = self.segmentationNode.GetSegmentation()
                for segmentId, *_ in entry:
                    segment = segmentation.GetSegment(segmentId)
                    _setSegmentClicks(segment, [*segmentClicks(segment), click])
                    tagged.append(segmentId)
            self._taggedHistory.append(tagged)
