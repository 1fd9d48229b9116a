"""The RepUXSegment workflow for the module and the Python console, without Qt: :class:`SegmentLogic`.

``RepUXSegment.RepUXSegmentLogic`` is this class plus Slicer's ScriptedLoadableModuleLogic (parameter node).
"""

from __future__ import annotations

import os
from typing import Any

from .batch import BatchSegmentationJob
from .dependencies import ensureDependencies
from .models import catalogCache, listModels, removeModel, storeFolder
from .mrml import MRMLContext, roiBoundsInVolumeSpace
from .segmentation import SegmentationError, SegmentationJob, SegmentationOptions
from .widgethelpers import startRepuxCommand

__all__ = ["SegmentLogic"]


class SegmentLogic:
    """Scripting entry points of RepUX Segment: dependencies, models, background commands, segmentation.

    Example (Python console)::

        import RepUXSegment
        logic = RepUXSegment.RepUXSegmentLogic()
        logic.setupPythonRequirements()  # once: PyTorch (PyTorch extension) and MONAI & co. (pip), asks first
        segmentation = logic.segment(slicer.util.getNode("CTAAbdomenPanoramix"), model="repux-amos", device="auto")
    """

    def __init__(self, context: Any = None, pythonExecutable: str | None = None) -> None:
        self._context = context
        #: interpreter for ``-m repux`` (None: PythonSlicer)
        self.pythonExecutable = pythonExecutable

    @property
    def context(self) -> MRMLContext:
        return self._context if self._context is not None else MRMLContext.fromSlicer()

    @staticmethod
    def requirementsPath() -> str:
        """RepUXSegment's Resources/requirements.txt (the engine's Python packages besides PyTorch)."""
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "requirements.txt")

    def setupPythonRequirements(self, askConfirmation: bool = True) -> None:
        """Install PyTorch (PyTorch extension) and the packages of Resources/requirements.txt when missing."""
        ensureDependencies(self.requirementsPath(), askConfirmation=askConfirmation, requester="RepUX")

    # models
    def models(self, wait: float | None = None, refresh: bool = False) -> list[Any]:
        """Built-in, installed, downloadable and official models (list of RepUXSegmentLib.models.ModelInfo).

        The catalog's models (downloadable, official) are read on a background thread and kept: ``wait`` seconds at
        most (None: until read; the panel waits briefly and lists them when the read is done), ``refresh`` reads the
        catalog again.  A catalog that cannot be read is logged (:meth:`catalogError`); the other models are listed.
        """
        return listModels(wait=wait, refresh=refresh)

    @staticmethod
    def catalogPending() -> bool:
        """The model catalog is still being read (its models are listed once it is)."""
        return catalogCache.pending

    @staticmethod
    def catalogError() -> str:
        """Why the model catalog could not be read ("" when it could)."""
        return catalogCache.error

    def removeModel(self, modelId: str) -> Any:
        return removeModel(modelId)

    def modelStoreFolder(self, create: bool = False) -> Any:
        return storeFolder(create=create)

    # background commands
    def startRepuxCommand(self, arguments: Any, onProgress: Any = None, onLog: Any = None, onFinished: Any = None) -> Any:
        """Start ``<python> -m repux <arguments>`` in the background; pump it with ``processEvents()``."""
        return startRepuxCommand(arguments, self.pythonExecutable, onProgress=onProgress, onLog=onLog, onFinished=onFinished)

    # segmentation
    def _options(self, model: Any, device: str, quality: str, roiNode: Any, volumeNode: Any, largestComponent: bool, organs: Any = None) -> SegmentationOptions:
        if model is None:
            from repux.models.store import DEFAULT_MODEL

            model = DEFAULT_MODEL
        roi = tuple(roiBoundsInVolumeSpace(roiNode, volumeNode)) if roiNode is not None else None
        return SegmentationOptions(
            model=str(model), device=device, quality=quality, roiRAS=roi, largestComponent=largestComponent, organs=tuple(organs) if organs else None
        )

    def startSegmentation(
        self,
        inputVolume: Any,
        model: Any = None,
        device: str = "auto",
        quality: str = "standard",
        roiNode: Any = None,
        largestComponent: bool = False,
        outputSegmentation: Any = None,
        onProgress: Any = None,
        onLog: Any = None,
        onFinished: Any = None,
        organs: Any = None,
    ) -> SegmentationJob:
        """Start segmenting ``inputVolume`` in the background; returns the running SegmentationJob.

        Call ``job.processEvents()`` periodically (or ``job.wait()``); ``onFinished`` gets the outcome.
        ``organs``: names of the model's organs to segment (default: all).
        """
        job = SegmentationJob(
            inputVolume,
            self._options(model, device, quality, roiNode, inputVolume, largestComponent, organs),
            outputSegmentation=outputSegmentation,
            context=self.context,
            pythonExecutable=self.pythonExecutable,
            onProgress=onProgress,
            onLog=onLog,
            onFinished=onFinished,
        )
        job.start()
        return job

    def startBatchSegmentation(
        self,
        volumes: Any,
        model: Any = None,
        device: str = "auto",
        quality: str = "standard",
        largestComponent: bool = False,
        organs: Any = None,
        statistics: bool = False,
        onProgress: Any = None,
        onCaseFinished: Any = None,
        onLog: Any = None,
        onFinished: Any = None,
    ) -> BatchSegmentationJob:
        """Start segmenting several volumes in ONE background process (the model is loaded once).

        Each volume's segmentation is placed beside it as its case finishes (``onCaseFinished`` gets the
        :class:`~RepUXSegmentLib.batch.BatchCaseResult`); ``statistics=True`` adds per-organ statistics.
        ``job.cancel()`` stops after the running case (finished ones are kept), a second call at once.
        """
        options = self._options(model, device, quality, None, None, largestComponent)
        job = BatchSegmentationJob(
            list(volumes),
            options,
            organs=tuple(organs or ()),
            statistics=statistics,
            context=self.context,
            pythonExecutable=self.pythonExecutable,
            onProgress=onProgress,
            onCaseFinished=onCaseFinished,
            onLog=onLog,
            onFinished=onFinished,
        )
        job.start()
        return job

    def exportDicomSeg(self, segmentationNode: Any, volumeNode: Any, outputPath: Any, dicomDatabase: Any = None, segmentIds: Any = None) -> Any:
        """Write ``segmentationNode`` as a DICOM SEG of ``volumeNode``'s DICOM series (a volume loaded from the DICOM database).

        ``dicomDatabase``: default ``slicer.dicomDatabase``.  Blocks until the engine has written the file (seconds).
        :raises RepUXSegmentLib.dicomexport.DicomSegExportError: not a DICOM volume, or the engine refused (one line).
        """
        from .dicomexport import exportDicomSeg

        if dicomDatabase is None:
            import slicer

            dicomDatabase = getattr(slicer, "dicomDatabase", None)
        return exportDicomSeg(segmentationNode, volumeNode, outputPath, dicomDatabase, self.context, self.pythonExecutable, segmentIds=segmentIds)

    def segment(
        self,
        inputVolume: Any,
        model: Any = None,
        device: str = "auto",
        quality: str = "standard",
        roiNode: Any = None,
        largestComponent: bool = False,
        outputSegmentation: Any = None,
        onProgress: Any = None,
        onLog: Any = None,
        timeout: float | None = None,
        organs: Any = None,
    ) -> Any:
        """Segment ``inputVolume`` and return the segmentation node (blocks until done).

        :param model: installed model id, built-in model id or model folder.
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        :param quality: ``fast``, ``standard`` or ``best``.
        :param roiNode: optional markups ROI: only this box is processed.
        :param outputSegmentation: segmentation node to fill (segments replaced), or None for a new one.
        :param organs: organ names of the model to segment (default: all).
        :raises RepUXSegmentLib.segmentation.SegmentationError: the engine failed or was cancelled.
        """
        job = self.startSegmentation(inputVolume, model, device, quality, roiNode, largestComponent, outputSegmentation, onProgress, onLog, organs=organs)
        outcome = job.wait(timeout=timeout)
        if not outcome.succeeded:
            raise SegmentationError(f"Segmentation {outcome.status}: {outcome.errorMessage or outcome.status}", outcome)
        return outcome.segmentationNode
