"""The RepUXTrainer workflow in one object, for the module widget and the Python console (no Qt).

:class:`TrainerLogic` ties the pieces together: a training-set folder (cases, label mapping),
a fine-tuning job with its live plot, re-segmentation with the new model, and the ranking
of not-yet-annotated volumes by uncertainty.  Every long operation has a non-blocking
``start...`` form (pump it with :meth:`TrainerLogic.processEvents`) and a blocking form.

The scene and module logics come from a ``RepUXSegmentLib.mrml.MRMLContext``: inside Slicer
:meth:`MRMLContext.fromSlicer` (the default), in headless tests a plain scene.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .curation import MODEL_ATTRIBUTE, CaseExport, addCase, loadCase
from .finetune import FinetuneError, FinetuneJob, FinetuneOptions, FinetuneOutcome, resumableRuns, suggestModelId
from .mapping import LabelMapping, segmentsOf
from .monitor import TrainingPlot, readProgressLog
from .suggest import Candidate, UncertaintyRanking, imagesInFolder, loadUncertaintyOverlay, unannotatedVolumes
from .trainingset import CaseRow, TrainingSet, TrainingSetError, isTrainingSet

__all__ = ["TrainerLogic"]

logger = logging.getLogger(__name__)

#: seconds the logic waits for a checkpoint when it is shut down during a run
SHUTDOWN_STOP_SECONDS = 120.0


class TrainerLogic:
    """Training set, fine-tuning, re-segmentation and next-case suggestion.

    Args:
        context: ``RepUXSegmentLib.mrml.MRMLContext`` (default: the running Slicer's scene and logics).
        pythonExecutable: interpreter for ``-m repux`` (default: PythonSlicer / this Python).

    Example (Python console)::

        logic = RepUXTrainerLogic()            # or TrainerLogic() outside the module
        logic.openTrainingSet("/data/my-liver-set", model="repux-amos")
        logic.addCase(getNode("CT 1"), getNode("CT 1 segmentation"))
        logic.addCase(getNode("CT 2"), getNode("CT 2 segmentation"), addNewClasses=True)
        outcome = logic.finetune(maxIterations=200, device="auto")   # blocks; see startFinetune()
        logic.resegment(getNode("CT 3"), outcome.modelId)
    """

    def __init__(self, context: Any = None, pythonExecutable: str | None = None) -> None:
        self._context = context
        self.pythonExecutable = pythonExecutable
        self.trainingSet: TrainingSet | None = None
        self.job: FinetuneJob | None = None
        self.plot: TrainingPlot | None = None
        self.ranking: UncertaintyRanking | None = None
        self.segmentationJobs: list[Any] = []
        self.lastModelId = ""
        self._onProgressCallback: Callable[[Any], None] | None = None

    @property
    def context(self) -> Any:
        if self._context is None:
            from RepUXSegmentLib.mrml import MRMLContext

            return MRMLContext.fromSlicer()
        return self._context

    # ------------------------------------------------------------ training set
    def openTrainingSet(self, folder: str | os.PathLike[str], model: str | None = None, name: str | None = None) -> TrainingSet:
        """Open the training set in ``folder``, or create it there with the organs of ``model``.

        Raises:
            TrainingSetError: no training set there and no model given, or the folder is not usable.
            repux.errors.ModelFileError: unknown model.
        """
        if not str(folder).strip():
            raise TrainingSetError("choose a folder for the training set.")
        if isTrainingSet(folder):
            self.trainingSet = TrainingSet.open(folder)
        else:
            if not model:
                raise TrainingSetError(f"{folder} holds no training set yet; choose a model first: its organs become the training set's classes.")
            from repux.models.store import resolve_model

            card = resolve_model(str(model))
            self.trainingSet = TrainingSet.create(folder, card.labels, name=name, referenceModel=card.id)
        return self.trainingSet

    def requireTrainingSet(self) -> TrainingSet:
        """The open training set.

        Raises:
            TrainingSetError: none is open.
        """
        if self.trainingSet is None:
            raise TrainingSetError("open or create a training set first (choose its folder).")
        return self.trainingSet

    def cases(self) -> list[CaseRow]:
        """The case table of the open training set ([] when none is open)."""
        return self.trainingSet.rows() if self.trainingSet is not None else []

    def mapSegments(self, segmentationNode: Any) -> LabelMapping:
        """How the segments of ``segmentationNode`` map to the training set's classes (unknown ones flagged)."""
        if segmentationNode is None:
            raise ValueError("choose a segmentation.")
        return LabelMapping.build(segmentsOf(segmentationNode), self.requireTrainingSet().labels)

    def addCase(
        self,
        volumeNode: Any,
        segmentationNode: Any,
        mapping: LabelMapping | None = None,
        name: str | None = None,
        sourceModel: str | None = None,
        addNewClasses: bool | None = None,
        split: str | None = None,
    ) -> CaseExport:
        """Write the volume and its segmentation as a new case (see :func:`RepUXTrainerLib.curation.addCase`)."""
        return addCase(self.context, self.requireTrainingSet(), volumeNode, segmentationNode, mapping, name, sourceModel, addNewClasses, split)

    def removeCase(self, caseId: str) -> None:
        self.requireTrainingSet().removeCase(caseId)

    def renameCase(self, caseId: str, newName: str) -> None:
        self.requireTrainingSet().renameCase(caseId, newName)

    def loadCase(self, caseId: str) -> tuple[Any, Any]:
        """Load a case into the scene for review: ``(volume, segmentation)``."""
        return loadCase(self.context, self.requireTrainingSet(), caseId)

    # ------------------------------------------------------------------ models
    @staticmethod
    def models(installedOnly: bool = True) -> list[Any]:
        """Models of the store (``RepUXSegmentLib.models.ModelInfo``), the ones that can be fine-tuned by default."""
        from RepUXSegmentLib.models import listModels

        return [m for m in listModels(catalog=not installedOnly) if m.installed or not installedOnly]  # installed only: no catalog read

    # -------------------------------------------------------------- fine-tune
    def finetuneOptions(self, baseModel: str | None = None, newModelId: str | None = None, **settings: Any) -> FinetuneOptions:
        """Options for fine-tuning on the open training set (``settings``: any :class:`FinetuneOptions` field).

        Raises:
            ValueError: no base model, fewer than two cases, or a bad option.
        """
        trainingSet = self.requireTrainingSet()
        trainingSet.reload()
        base = baseModel or trainingSet.referenceModel
        if not base:
            raise ValueError("choose the base model to fine-tune.")
        if len(trainingSet) < 2:
            raise ValueError(f"the training set has {len(trainingSet)} case(s); add at least 2 (one is held out for validation).")
        options = FinetuneOptions(baseModel=str(base), dataset=str(trainingSet.root), outModel=newModelId or suggestModelId(base), **settings)
        if not options.name:
            options.name = f"{base} fine-tuned on {trainingSet.name} ({len(trainingSet)} cases)"
        options.validate()
        return options

    def _attachPlot(self, job: FinetuneJob, name: str, onProgress: Callable[[Any], None] | None, continuePlot: bool) -> None:
        labels = self.trainingSet.labels if self.trainingSet is not None else []
        colors = {lab.name: lab.color_float for lab in labels}
        self._onProgressCallback = onProgress
        plotGone = self.plot is not None and not self.context.scene.IsNodePresent(self.plot.tableNode)
        if plotGone or not (continuePlot and self.plot is not None and self.plot.name == name):
            self.plot = TrainingPlot(self.context.scene, name, organs=[lab.name for lab in labels], organColors=colors)
            for data in readProgressLog(job.progressLogPath) if continuePlot else []:
                self.plot.add(data)
        plot = self.plot

        def forward(update: Any) -> None:
            plot.add(update.to_dict())
            if onProgress is not None:
                onProgress(update)

        job.onProgress = forward

    def startFinetune(
        self,
        baseModel: str | None = None,
        newModelId: str | None = None,
        onProgress: Callable[[Any], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[FinetuneOutcome], None] | None = None,
        **settings: Any,
    ) -> FinetuneJob:
        """Start fine-tuning in the background; returns the job (pump it with :meth:`processEvents`).

        ``onProgress`` gets every ``ProgressEvent``; the plot (:attr:`plot`) is filled before.

        Raises:
            ValueError: see :meth:`finetuneOptions`; RuntimeError: a run is going on.
        """
        if self.job is not None and self.job.running:
            raise RuntimeError("a fine-tuning run is going on; stop it first.")
        options = self.finetuneOptions(baseModel, newModelId, **settings)
        job = FinetuneJob(options, pythonExecutable=self.pythonExecutable, onLog=onLog, onFinished=self._finished(onFinished))
        self._attachPlot(job, options.modelId, onProgress, continuePlot=False)
        job.start()
        self.job = job
        return job

    def _finished(self, onFinished: Callable[[FinetuneOutcome], None] | None) -> Callable[[FinetuneOutcome], None]:
        def done(outcome: FinetuneOutcome) -> None:
            if outcome.succeeded:
                self.lastModelId = outcome.modelId
            if onFinished is not None:
                onFinished(outcome)

        return done

    def stopFinetune(self, wait: bool = False, timeout: float | None = None) -> FinetuneOutcome | None:
        """Stop the run (a resumable checkpoint is written); with ``wait`` block until it has stopped."""
        job = self.job
        if job is None or not job.running:
            return job.outcome if job is not None else None
        job.stop()
        if not wait:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.processEvents():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the fine-tuning did not stop within {timeout} s.")
            time.sleep(0.05)
        return job.outcome

    def resumeFinetune(
        self,
        runDirectory: str | os.PathLike[str] | None = None,
        onProgress: Callable[[Any], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[FinetuneOutcome], None] | None = None,
    ) -> FinetuneJob:
        """Continue the stopped run (this session's, or the one in ``runDirectory`` from an earlier session).

        Raises:
            ValueError: nothing to resume.
        """
        job = self.job
        if runDirectory is not None and (job is None or job.runDirectory.resolve() != Path(runDirectory).resolve()):
            job = FinetuneJob.fromRunDirectory(runDirectory, pythonExecutable=self.pythonExecutable)
            if self.trainingSet is None and isTrainingSet(job.options.dataset):
                self.trainingSet = TrainingSet.open(job.options.dataset)
        if job is None:
            raise ValueError("there is no stopped fine-tuning run to resume.")
        if job.running:
            raise RuntimeError("the fine-tuning is running.")
        if not job.canResume:
            raise ValueError(f"run '{job.options.modelId}' cannot be resumed: no checkpoint in {job.runDirectory} (or its model already exists).")
        job.onLog = onLog
        job.onFinished = self._finished(onFinished)
        self._attachPlot(job, job.options.modelId, onProgress, continuePlot=True)
        job.resume()
        self.job = job
        return job

    def reattachPlot(self) -> TrainingPlot | None:
        """New plot nodes for the current run (e.g. after the scene was closed), filled from its progress log."""
        if self.job is None:
            return None
        self._attachPlot(self.job, self.job.options.modelId, self._onProgressCallback, continuePlot=True)
        return self.plot

    def finetune(self, baseModel: str | None = None, newModelId: str | None = None, timeout: float | None = None, **settings: Any) -> FinetuneOutcome:
        """Fine-tune and wait (blocking); returns the outcome of the successful run.

        Raises:
            FinetuneError: the run failed or was stopped.
        """
        job = self.startFinetune(baseModel, newModelId, **settings)
        outcome = job.wait(timeout=timeout)
        if not outcome.succeeded:
            raise FinetuneError(f"fine-tuning {outcome.status}: {outcome.errorMessage or outcome.status}", outcome)
        return outcome

    @property
    def progress(self) -> Any:
        """The run's :class:`~RepUXTrainerLib.monitor.TrainingProgress` (None before the first run)."""
        return self.job.progress if self.job is not None else None

    @staticmethod
    def resumableRuns() -> list[FinetuneOptions]:
        return resumableRuns()

    # --------------------------------------------------------- close the loop
    def startResegmentation(
        self,
        volumeNode: Any,
        model: str | None = None,
        device: str = "auto",
        quality: str = "standard",
        onProgress: Callable[..., None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[Any], None] | None = None,
    ) -> Any:
        """Segment ``volumeNode`` with ``model`` (default: the latest fine-tuned model) into a new segmentation.

        The result is named ``<volume> segmentation (<model>)`` and carries the model id in its
        ``RepUX.Model`` attribute, next to the earlier segmentation for comparison.
        """
        model = model or self.lastModelId
        if not model:
            raise ValueError("there is no fine-tuned model yet; choose a model.")

        def finished(outcome: Any) -> None:
            if outcome.succeeded:
                node = outcome.segmentationNode
                node.SetName(self.context.scene.GenerateUniqueName(f"{volumeNode.GetName()} segmentation ({Path(str(model)).name})"))
                node.SetAttribute(MODEL_ATTRIBUTE, Path(str(model)).name)
            if onFinished is not None:
                onFinished(outcome)

        job = self._startSegmentationJob(volumeNode, str(model), device, quality, onProgress, onLog, finished)
        self.segmentationJobs.append(job)
        return job

    def _startSegmentationJob(self, volumeNode: Any, model: str, device: str, quality: str, onProgress: Any, onLog: Any, onFinished: Any) -> Any:
        """Start a ``RepUXSegmentLib.segmentation.SegmentationJob`` (the module overrides this to go through RepUXSegment's logic)."""
        from RepUXSegmentLib.logic import SegmentLogic

        segmentLogic = SegmentLogic(context=self.context, pythonExecutable=self.pythonExecutable)
        return segmentLogic.startSegmentation(volumeNode, model, device, quality, onProgress=onProgress, onLog=onLog, onFinished=onFinished)

    def resegment(self, volumeNode: Any, model: str | None = None, device: str = "auto", quality: str = "standard", timeout: float | None = None) -> Any:
        """Blocking :meth:`startResegmentation`; returns the new segmentation node.

        Raises:
            RepUXSegmentLib.segmentation.SegmentationError: the engine failed.
        """
        from RepUXSegmentLib.segmentation import SegmentationError

        job = self.startResegmentation(volumeNode, model, device, quality)
        try:
            outcome = job.wait(timeout=timeout)
        finally:
            if job in self.segmentationJobs:
                self.segmentationJobs.remove(job)
        if not outcome.succeeded:
            raise SegmentationError(f"segmentation {outcome.status}: {outcome.errorMessage or outcome.status}", outcome)
        return outcome.segmentationNode

    # --------------------------------------------------------------- next case
    def sceneCandidates(self) -> list[Candidate]:
        """The scene's volumes that are not cases of the training set yet."""
        return [Candidate.fromNode(n) for n in unannotatedVolumes(self.context.scene, self.trainingSet)]

    def folderCandidates(self, folder: str | os.PathLike[str]) -> list[Candidate]:
        """The image files of ``folder`` (without those the training set came from)."""
        return [Candidate.fromFile(p) for p in imagesInFolder(folder, self.trainingSet)]

    def startRanking(
        self,
        candidates: Iterable[Candidate] | None = None,
        model: str | None = None,
        device: str = "auto",
        onProgress: Callable[[int, int, Candidate], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[UncertaintyRanking], None] | None = None,
        **kwargs: Any,
    ) -> UncertaintyRanking:
        """Rank ``candidates`` (default: :meth:`sceneCandidates`) by the mean uncertainty of ``model``
        (default: the latest fine-tuned model, else the training set's reference model)."""
        if self.ranking is not None and self.ranking.running:
            raise RuntimeError("a ranking is going on; cancel it first.")
        if self.ranking is not None:
            self.ranking.cleanup()
        model = model or self.lastModelId or (self.trainingSet.referenceModel if self.trainingSet is not None else "")
        ranking = UncertaintyRanking(
            self.sceneCandidates() if candidates is None else candidates,
            model,
            device=device,
            workDirectory=self.context.temporaryDirectory,
            pythonExecutable=self.pythonExecutable,
            onProgress=onProgress,
            onLog=onLog,
            onFinished=onFinished,
            **kwargs,
        )
        ranking.start()
        self.ranking = ranking
        return ranking

    def rankCandidates(
        self, candidates: Iterable[Candidate] | None = None, model: str | None = None, device: str = "auto", timeout: float | None = None, **kwargs: Any
    ) -> list[Candidate]:
        """Blocking :meth:`startRanking`; returns the candidates, most uncertain first."""
        return self.startRanking(candidates, model, device, **kwargs).wait(timeout=timeout)

    def showUncertainty(self, candidate: Candidate, opacity: float = 0.5) -> tuple[Any, Any]:
        """Load the candidate's uncertainty map as a colour overlay on its volume: ``(volume, overlay)``."""
        return loadUncertaintyOverlay(self.context, candidate, opacity=opacity)

    # ------------------------------------------------------------------ pump
    def processEvents(self) -> bool:
        """Pump every background task; True while one is running."""
        busy = False
        if self.job is not None and self.job.running:
            busy = self.job.processEvents() or busy
        if self.ranking is not None and self.ranking.running:
            busy = self.ranking.processEvents() or busy
        for job in list(self.segmentationJobs):
            if job.processEvents():
                busy = True
            else:
                self.segmentationJobs.remove(job)
        return busy

    def cancelSceneJobs(self) -> None:
        """Cancel the jobs whose result goes into the scene (re-segmentations, the ranking's overlays): the scene
        is closing.  The fine-tuning goes on (its plot is re-attached to the next scene)."""
        for job in self.segmentationJobs:
            job.cancel()
        if self.ranking is not None and self.ranking.running:
            self.ranking.cancel()

    def shutdown(self, onWaiting: Callable[[float, float], None] | None = None) -> None:
        """Stop everything (the fine-tuning with a checkpoint, waiting up to 2 minutes) and delete temporary files.

        ``onWaiting(secondsWaited, secondsAtMost)`` is called about twice a second while the fine-tuning writes its
        checkpoint (the module shows a progress dialog: the application exit waits for it).
        """
        if self.job is not None and self.job.running:
            self.job.stop()
            start = time.monotonic()
            deadline = start + SHUTDOWN_STOP_SECONDS
            reported = -1.0
            while self.job.processEvents() and time.monotonic() < deadline:
                waited = time.monotonic() - start
                if onWaiting is not None and waited - reported >= 0.5:
                    reported = waited
                    onWaiting(waited, SHUTDOWN_STOP_SECONDS)
                time.sleep(0.1)
            if self.job.running:
                self.job.abort()
                while self.job.processEvents():
                    time.sleep(0.05)
        for job in self.segmentationJobs:
            job.cancel()
            try:
                job.wait(timeout=30)
            except TimeoutError:
                logger.warning("a segmentation did not stop within 30 s")
        self.segmentationJobs = []
        if self.ranking is not None:
            self.ranking.cleanup()
