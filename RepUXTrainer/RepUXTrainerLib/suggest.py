"""Which case to annotate next: rank volumes by the model's uncertainty (no Qt).

:class:`UncertaintyRanking` runs ``repux segment --uncertainty unc.nrrd --summary summary.json``
on each candidate in turn, in a background process, and reads the summary's
``mean_entropy`` (normalised entropy of the predicted probabilities, 0..1, averaged over
the voxels the model calls organ).  The most uncertain volume is where a correction
teaches the model most.  Candidates are the volumes of the scene that are not cases of
the training set yet (:func:`unannotatedVolumes`) or the images of a folder
(:func:`imagesInFolder`).

:func:`loadUncertaintyOverlay` shows a candidate's voxel-wise uncertainty map over its
volume (foreground layer, colour map, low values transparent), so the worst regions
are corrected first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from RepUXSegmentLib.jobs import BackgroundJob, JobState
from RepUXSegmentLib.panel import isCTVolume

__all__ = [
    "IMAGE_SUFFIXES",
    "UNCERTAINTY_ATTRIBUTE",
    "Candidate",
    "UncertaintyRanking",
    "imagesInFolder",
    "loadUncertaintyOverlay",
    "showForeground",
    "unannotatedVolumes",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: attribute of uncertainty-map volumes (never candidates themselves)
UNCERTAINTY_ATTRIBUTE = "RepUXTrainer.Uncertainty"
#: colour maps tried in order for the overlay (desktop Slicer has the first ones; slicer-core the last)
OVERLAY_COLOR_NODES = (
    "vtkMRMLColorTableNodeFileInferno.txt",
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLPETProceduralColorNodePET-Heat",
    "vtkMRMLColorTableNodeIron",
    "vtkMRMLColorTableNodeRainbow",
)

#: candidate (and ranking) states (RepUXSegmentLib.jobs.JobState)
PENDING, RUNNING, DONE, FAILED, CANCELLED = JobState.PENDING, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELLED


@dataclass
class Candidate:
    """A volume to rank.

    Attributes:
        name: display name.
        volumeNode: the scene volume (None for a file).
        path: the image file (None for a scene volume).
        meanEntropy: the model's mean uncertainty, 0..1 (None until ranked).
        volumesMl: organ volumes the model found.
        uncertaintyPath: the voxel-wise uncertainty map (in the candidate's grid).
        status: pending, running, done, failed or cancelled.
        errorMessage: why it failed.
    """

    name: str
    volumeNode: Any = None
    path: Path | None = None
    meanEntropy: float | None = None
    volumesMl: dict[str, float] = field(default_factory=dict)
    uncertaintyPath: Path | None = None
    status: str = PENDING
    errorMessage: str = ""

    @classmethod
    def fromNode(cls, volumeNode: Any) -> Candidate:
        return cls(volumeNode.GetName(), volumeNode=volumeNode)

    @classmethod
    def fromFile(cls, path: str | os.PathLike[str]) -> Candidate:
        p = Path(path)
        name = p.name
        for suffix in IMAGE_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        return cls(name, path=p)


def unannotatedVolumes(scene: Any, trainingSet: Any = None) -> list[Any]:
    """Scalar volumes of the scene that are not cases of ``trainingSet`` (label maps and uncertainty maps excluded).

    A volume counts as annotated when it was added to (or loaded from) that training set,
    or when a case records its name as source volume.
    """
    from .curation import CASE_ID_ATTRIBUTE, TRAINING_SET_ATTRIBUTE

    caseIds, sourceNames, root = set(), set(), None
    if trainingSet is not None:
        caseIds = set(trainingSet.caseIds)
        sourceNames = {str(c.meta.get("source_volume", "")) for c in trainingSet.cases}
        root = str(trainingSet.root)
    out = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if not isCTVolume(node) or node.GetAttribute(UNCERTAINTY_ATTRIBUTE) or node.GetImageData() is None:
            continue  # label maps, vector/tensor volumes, overlays, volumes without voxels
        if trainingSet is not None:
            if node.GetAttribute(TRAINING_SET_ATTRIBUTE) == root and node.GetAttribute(CASE_ID_ATTRIBUTE) in caseIds:
                continue
            if node.GetName() in sourceNames:
                continue
        out.append(node)
    return out


def imagesInFolder(folder: str | os.PathLike[str], trainingSet: Any = None) -> list[Path]:
    """Image files of ``folder`` (not recursive), without those a case of ``trainingSet`` came from.

    Raises:
        ValueError: not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder.")
    taken = set()
    if trainingSet is not None:
        taken = {str(c.meta.get("source_file", "")) for c in trainingSet.cases} | {
            Path(c.image).name for c in trainingSet.cases if Path(c.image).parent == root
        }
    files = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and str(p) not in taken and p.name not in taken]
    return files


class UncertaintyRanking(BackgroundJob):
    """Rank candidates by the model's mean uncertainty, one background ``repux segment`` at a time.

    Args:
        candidates: :class:`Candidate` objects (scene volumes or files).
        model: model id or folder (normally the latest fine-tuned model).
        device: ``auto``, ``cpu``, ``cuda``...
        quality: ``fast`` (default: ranking needs no best-quality labels), ``standard`` or ``best``.
        workDirectory: parent of the temporary folder holding inputs and uncertainty maps.
        onProgress: ``(done, total, candidate)`` after each candidate.
        onLog: ``(level, text)``.
        onFinished: called with this object when all candidates ran (or it was cancelled).

    The uncertainty maps stay in :attr:`folder` until :meth:`cleanup`.
    """

    def __init__(
        self,
        candidates: Iterable[Candidate],
        model: str,
        *,
        device: str = "auto",
        quality: str = "fast",
        workDirectory: str | None = None,
        pythonExecutable: str | None = None,
        environment: Mapping[str, str] | None = None,
        extraArguments: Sequence[str] = (),
        onProgress: Callable[[int, int, Candidate], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[UncertaintyRanking], None] | None = None,
    ) -> None:
        self.candidates = list(candidates)
        if not self.candidates:
            raise ValueError("there is no volume to rank: every volume is already a case of the training set.")
        if not str(model).strip():
            raise ValueError("choose the model whose uncertainty ranks the volumes.")
        from repux.config import QUALITIES

        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}; got {quality!r}.")
        super().__init__(onLog=onLog)
        self.onRankingFinished = onFinished
        self.model = str(model)
        self.device = device
        self.quality = quality
        self.workDirectory = workDirectory
        self.pythonExecutable = pythonExecutable
        self.environment = dict(environment) if environment is not None else None
        self.extraArguments = [str(a) for a in extraArguments]
        self.onProgress = onProgress
        self.folder: Path | None = None
        self.current = -1
        self.cancelled = False
        self.finished = False
        self._modelPath = ""

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Resolve the model and start the first candidate.

        Raises:
            repux.errors.ModelFileError: unknown model.
        """
        from repux.models.store import resolve_model

        self._modelPath = str(resolve_model(self.model).path)
        self.folder = Path(tempfile.mkdtemp(prefix="RepUX-rank-", dir=self.workDirectory))
        self.state = RUNNING
        self._next()

    def _next(self) -> None:
        from RepUXSegmentLib.mrml import writeVolumeNrrd

        from repux.protocol import CONTROL_ARGUMENTS

        self.runner = None
        while True:
            self.current += 1
            if self.cancelled or self.current >= len(self.candidates):
                self._complete()
                return
            candidate = self.candidates[self.current]
            work = self.folder / f"{self.current:03d}"
            work.mkdir()
            try:
                inputPath = Path(candidate.path) if candidate.volumeNode is None else writeVolumeNrrd(candidate.volumeNode, work / "input.nrrd")
                if not inputPath.exists():
                    raise OSError(f"{inputPath} does not exist.")
            except (ValueError, OSError) as err:
                candidate.status, candidate.errorMessage = FAILED, str(err)
                self._log("WARNING", f"{candidate.name}: {err}")
                self._reportProgress(candidate)
                continue
            arguments = [
                "segment",
                "--input",
                str(inputPath),
                "--model",
                self._modelPath,
                "--output",
                str(work / "labels.nrrd"),
                "--uncertainty",
                str(work / "uncertainty.nrrd"),
                "--summary",
                str(work / "summary.json"),
                "--device",
                str(self.device),
                "--quality",
                self.quality,
                "--progress",
                "json",
                *CONTROL_ARGUMENTS,
                *self.extraArguments,
            ]
            candidate.status = RUNNING
            self._log("INFO", f"estimating the uncertainty of {candidate.name} ({self.current + 1}/{len(self.candidates)})")
            self._startEngine(arguments, cwd=work, logPrefix=None)
            return

    def _onRunnerLog(self, message: Any) -> None:
        if self.onLog is not None and message.level in ("WARNING", "ERROR"):
            self.onLog(message.level, f"{self.candidates[self.current].name}: {message.text}")

    def _reportProgress(self, candidate: Candidate) -> None:
        if self.onProgress is not None:
            self.onProgress(self.current + 1, len(self.candidates), candidate)

    def processEvents(self) -> bool:
        """Deliver output, collect finished candidates, start the next. True while running."""
        if not self.running:
            return False
        if self.runner is not None and not self.runner.processEvents():
            self._collect()
            self._next()
        return self.running

    def _collect(self) -> None:
        candidate = self.candidates[self.current]
        work = self.folder / f"{self.current:03d}"
        runner = self.runner
        if self.cancelled or runner.cancelled:
            candidate.status = CANCELLED
        elif runner.returncode != 0:
            candidate.status, candidate.errorMessage = FAILED, runner.errorMessage or f"exit code {runner.returncode}"
            self._log("WARNING", f"{candidate.name}: {candidate.errorMessage}")
        else:
            try:
                summary = json.loads((work / "summary.json").read_text(encoding="utf-8"))
                candidate.meanEntropy = float(summary["mean_entropy"])
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                candidate.status, candidate.errorMessage = FAILED, f"no mean_entropy in the engine's summary ({err})"
            else:
                candidate.volumesMl = {str(k): float(v) for k, v in summary.get("volumes_ml", {}).items()}
                candidate.uncertaintyPath = work / "uncertainty.nrrd"
                candidate.status = DONE
                self._log("INFO", f"{candidate.name}: mean uncertainty {candidate.meanEntropy:.4f}")
        for name in ("input.nrrd", "labels.nrrd"):
            (work / name).unlink(missing_ok=True)
        self._reportProgress(candidate)

    def _complete(self) -> None:
        self.finished = True
        self.runner = None
        self.state = CANCELLED if self.cancelled else DONE
        if self.onRankingFinished is not None:
            self.onRankingFinished(self)

    def cancel(self) -> None:
        """Stop the current run; the remaining candidates are skipped."""
        if self.running:
            self.cancelled = True
            if self.runner is not None:
                self.runner.cancel()

    timeoutMessage = "ranking did not finish within {timeout} s and was cancelled."

    def wait(self, timeout: float | None = None, pollInterval: float = 0.05) -> list[Candidate]:
        """Block until every candidate ran (starting if needed); returns :meth:`ranked`.

        Raises:
            TimeoutError: after ``timeout`` seconds (the ranking is cancelled first).
        """
        super().wait(timeout, pollInterval)
        return self.ranked()

    def ranked(self) -> list[Candidate]:
        """Ranked candidates, most uncertain first (failed ones last)."""
        done = sorted((c for c in self.candidates if c.meanEntropy is not None), key=lambda c: c.meanEntropy, reverse=True)
        return done + [c for c in self.candidates if c.meanEntropy is None]

    def cleanup(self) -> None:
        """Delete the temporary folder (uncertainty maps already loaded into the scene stay there)."""
        if self.running:
            self.cancel()
            while self.processEvents():
                time.sleep(0.05)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        for c in self.candidates:
            c.uncertaintyPath = None


def loadUncertaintyOverlay(context: Any, candidate: Candidate, opacity: float = 0.5, threshold: float = 0.1) -> tuple[Any, Any]:
    """Load the candidate (if it is a file) and its uncertainty map; show the map over it.

    Returns ``(volume node, uncertainty volume node)``.  The map uses a colour map, window
    0..1 and hides values under ``threshold``; it is the foreground of every slice view.

    Raises:
        ValueError: the candidate has no uncertainty map (not ranked, failed or cleaned up).
        OSError: a file cannot be read.
    """
    import slicer

    if candidate.uncertaintyPath is None or not Path(candidate.uncertaintyPath).is_file():
        raise ValueError(f"{candidate.name} has no uncertainty map; rank the volumes first.")
    scene = context.scene
    volumeNode = candidate.volumeNode
    if volumeNode is None or not scene.IsNodePresent(volumeNode):
        volumeNode = context.volumesLogic.AddArchetypeVolume(str(candidate.path), candidate.name) if context.volumesLogic is not None else None
        if volumeNode is None:
            raise OSError(f"could not load {candidate.path}.")
        candidate.volumeNode = volumeNode
    overlay = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{candidate.name} uncertainty"))
    storage = slicer.vtkMRMLNRRDStorageNode()  # teem reader: the file's voxel order, like the volume it was computed on
    storage.SetFileName(str(candidate.uncertaintyPath))
    if not storage.ReadData(overlay):
        scene.RemoveNode(overlay)
        raise OSError(f"could not read {candidate.uncertaintyPath}.")
    overlay.SetAttribute(UNCERTAINTY_ATTRIBUTE, "1")
    overlay.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    overlay.CreateDefaultDisplayNodes()
    display = overlay.GetDisplayNode()
    for colorId in OVERLAY_COLOR_NODES:
        if scene.GetNodeByID(colorId) is not None:
            display.SetAndObserveColorNodeID(colorId)
            break
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(1.0)
    from RepUXSegmentLib.mrml import placeBeside

    placeBeside(scene, overlay, volumeNode)
    showForeground(scene, overlay, volumeNode, opacity)
    return volumeNode, overlay


def showForeground(scene: Any, foregroundVolume: Any, backgroundVolume: Any = None, opacity: float = 0.5) -> int:
    """Show ``foregroundVolume`` over ``backgroundVolume`` in every slice view (their composite nodes); returns how many views."""
    count = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if backgroundVolume is not None:
            composite.SetBackgroundVolumeID(backgroundVolume.GetID())
        composite.SetForegroundVolumeID(foregroundVolume.GetID() if foregroundVolume is not None else None)
        composite.SetForegroundOpacity(float(opacity))
        count += 1
    return count
