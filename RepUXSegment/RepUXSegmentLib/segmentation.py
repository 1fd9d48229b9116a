"""Segment a volume node with ``repux segment`` in a background process (no Qt).

:class:`SegmentationJob` is the whole round trip:

1. resolve the model (``repux.models.store.resolve_model``) for its labels;
2. write the volume to ``<tmp>/input.nrrd`` with Slicer's NRRD storage node;
3. run ``<python> -m repux segment --input input.nrrd --model <folder> --output labels.nrrd
   --progress json --device ... --quality ... [--roi-ras ...]`` through
   :class:`~RepUXSegmentLib.process.ProcessRunner`, forwarding its progress and log;
4. read ``labels.nrrd`` and import it as one named, coloured, SNOMED-tagged segment
   per organ (:func:`~RepUXSegmentLib.mrml.importLabelmap`);
5. remove the temporary folder whatever happened.

The scene is only touched in step 4, so a failed or cancelled job leaves it
unchanged.  The GUI drives a job with :meth:`SegmentationJob.processEvents` from a
timer; :func:`segmentVolume` is the blocking form for scripts and tests.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repux.config import DEVICE_RULE, QUALITIES, is_device_name
from repux.protocol import CONTROL_ARGUMENTS, ProgressEvent

from .jobs import BackgroundJob, JobState
from .mrml import MRMLContext, SegmentSpec, formatRoiRas, importLabelmap, readLabelmapNrrd, segmentSpecsFromModel, writeVolumeNrrd

__all__ = [
    "QUALITIES",
    "SegmentationError",
    "SegmentationJob",
    "SegmentationOptions",
    "SegmentationOutcome",
    "renumberedSpecs",
    "segmentVolume",
]

logger = logging.getLogger(__name__)

#: node attribute holding the id of the model that produced a segmentation
MODEL_ATTRIBUTE = "RepUX.Model"

#: quality levels of ``repux segment --quality``

#: job states (RepUXSegmentLib.jobs.JobState)
IDLE, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED = (
    JobState.IDLE,
    JobState.RUNNING,
    JobState.CANCELLING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)


class SegmentationError(RuntimeError):
    """A segmentation failed or was cancelled; ``outcome`` holds the details."""

    def __init__(self, message: str, outcome: SegmentationOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


def renumberedSpecs(specs: Sequence[SegmentSpec], chosenValues: Iterable[int]) -> list[SegmentSpec]:
    """The specs of the chosen label values renumbered 1..k in the model's order: what ``repux segment --organs``
    writes (the other organs are background)."""
    chosen = set(chosenValues)
    kept = [s for s in sorted(specs, key=lambda s: s.value) if s.value in chosen]
    return [dataclasses.replace(s, value=i) for i, s in enumerate(kept, start=1)]


@dataclass(frozen=True)
class SegmentationOptions:
    """What to run.

    Attributes:
        model: installed model id, built-in model id or model folder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        quality: ``fast``, ``standard`` or ``best``.
        roiRAS: optional box ``(r0, a0, s0, r1, a1, s1)`` in the volume's RAS space (mm).
        largestComponent: keep each organ's largest connected component.
        organs: names of the model's organs to segment (``repux segment --organs a,b``); None: all.
        extraArguments: further ``repux segment`` options, e.g. ``("--threads", "4")``.
    """

    model: str
    device: str = "auto"
    quality: str = "standard"
    roiRAS: tuple[float, ...] | None = None
    largestComponent: bool = False
    organs: tuple[str, ...] | None = None
    extraArguments: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ValueError for an unusable option (messages name the option and the allowed values)."""
        if not str(self.model).strip():
            raise ValueError("no model selected: choose an installed model or a model folder.")
        if self.quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}; got {self.quality!r}.")
        if not is_device_name(self.device):
            raise ValueError(f"device must be {DEVICE_RULE}; got {self.device!r}.")
        if self.roiRAS is not None:
            formatRoiRas(self.roiRAS)
        if self.organs is not None:
            if not self.organs:
                raise ValueError("no organ selected: choose at least one organ of the model.")
            bad = [o for o in self.organs if not str(o).strip() or "," in str(o)]
            if bad:
                raise ValueError(f"organ names must be non-empty and without commas; got {bad!r}.")

    def selectSpecs(self, specs: Sequence[SegmentSpec]) -> list[SegmentSpec]:
        """The segments to create: those of :attr:`organs` (all when None), numbered as the engine writes them.

        Raises:
            ValueError: an organ the model does not have (the message lists the model's organs).
        """
        if self.organs is None:
            return list(specs)
        names = {s.name.lower(): s for s in specs}
        unknown = [o for o in self.organs if str(o).strip().lower() not in names]
        if unknown:
            raise ValueError(f"the model has no organ {', '.join(map(repr, unknown))}; its organs are: {', '.join(s.name for s in specs)}.")
        wanted = {str(o).strip().lower() for o in self.organs}
        return renumberedSpecs(specs, {s.value for s in specs if s.name.lower() in wanted})

    def commandArguments(
        self, inputPath: str | os.PathLike[str], outputPath: str | os.PathLike[str], modelPath: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """The ``repux segment ...`` arguments (after ``-m repux``)."""
        args = [
            "segment",
            "--input",
            str(inputPath),
            "--model",
            str(modelPath or self.model),
            "--output",
            str(outputPath),
            "--progress",
            "json",
            *CONTROL_ARGUMENTS,
            "--device",
            str(self.device).strip().lower(),
            "--quality",
            self.quality,
        ]
        if self.roiRAS is not None:
            args.append("--roi-ras=" + formatRoiRas(self.roiRAS))  # "=": the value may start with "-"
        if self.largestComponent:
            args.append("--largest-component")
        if self.organs is not None:
            args += ["--organs", ",".join(str(o).strip() for o in self.organs)]
        args += [str(a) for a in self.extraArguments]
        return args


@dataclass
class SegmentationOutcome:
    """How a job ended.

    Attributes:
        status: ``succeeded``, ``failed`` or ``cancelled``.
        segmentationNode: the result (succeeded only).
        volumesMl: organ volumes in mL reported by the engine.
        summary: the engine's summary (timings, device, settings, warnings...).
        warnings: warnings of the engine (e.g. intensities that do not look like CT).
        errorMessage: why it failed.
        returncode: exit code of the child process (None if it never ran).
        seconds: wall time of the job.
    """

    status: str
    segmentationNode: Any = None
    volumesMl: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errorMessage: str = ""
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED


class SegmentationJob(BackgroundJob):
    """One segmentation of one volume node in a background process.

    Args:
        volumeNode: the input ``vtkMRMLScalarVolumeNode``.
        options: :class:`SegmentationOptions`.
        outputSegmentation: existing segmentation node to fill (its segments are
            replaced), or None to create a new node at the end.
        context: scene and logics (default: :meth:`MRMLContext.fromSlicer`).
        pythonExecutable: interpreter for ``-m repux`` (default: PythonSlicer / this Python).
        environment: environment of the child (default: :func:`~RepUXSegmentLib.process.childEnvironment`).
        onProgress: ``(fraction, stage, message, etaSeconds)`` for every engine progress line.
        onLog: ``(level, text)`` for engine log lines and job messages.
        onFinished: called once with the :class:`SegmentationOutcome`.
    """

    def __init__(
        self,
        volumeNode: Any,
        options: SegmentationOptions,
        *,
        outputSegmentation: Any = None,
        context: MRMLContext | None = None,
        pythonExecutable: str | None = None,
        environment: Mapping[str, str] | None = None,
        onProgress: Callable[[float, str, str, float | None], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[SegmentationOutcome], None] | None = None,
    ) -> None:
        if volumeNode is None:
            raise ValueError("no input volume selected.")
        options.validate()
        super().__init__(onLog=onLog, onFinished=onFinished)
        self.volumeNode = volumeNode
        self.options = options
        self.outputSegmentation = outputSegmentation
        self.context = context or MRMLContext.fromSlicer()
        self.pythonExecutable = pythonExecutable
        self.environment = dict(environment) if environment is not None else None
        self.onProgress = onProgress
        self.tempDirectory: Path | None = None
        self.specs: list[SegmentSpec] = []
        self.modelCard: Any = None
        self._doneEvent: ProgressEvent | None = None

    timeoutMessage = "the segmentation did not finish within {timeout} s and was cancelled."
    outcomeMessages = {
        SUCCEEDED: ("INFO", "segmentation finished in {outcome.seconds:.1f} s"),
        CANCELLED: ("INFO", "segmentation cancelled"),
        FAILED: ("ERROR", "segmentation failed: {outcome.errorMessage}"),
    }

    # ----------------------------------------------------------------- helpers
    def _onRunnerProgress(self, update: ProgressEvent) -> None:
        if update.stage == "done":
            self._doneEvent = update
        if self.onProgress is not None:
            self.onProgress(update.fraction, update.stage, update.message, update.eta_s)

    def _removeTemporaryFiles(self) -> None:
        if self.tempDirectory is not None:
            shutil.rmtree(self.tempDirectory, ignore_errors=True)
            if self.tempDirectory.exists():
                logger.warning("could not remove the temporary folder %s", self.tempDirectory)
            self.tempDirectory = None

    def _finish(self, outcome: SegmentationOutcome) -> None:
        self._removeTemporaryFiles()
        super()._finish(outcome)

    def _failedOutcome(self, message: str) -> SegmentationOutcome:
        return SegmentationOutcome(FAILED, errorMessage=message, returncode=self.runner.returncode if self.runner is not None else None)

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        """Write the input and start the engine.

        Raises:
            repux.errors.ModelFileError: unknown model.
            ValueError: unusable input volume.
            ProcessStartError: the interpreter could not be started.
        """
        if self.state != IDLE:
            raise RuntimeError("a SegmentationJob can only be started once.")
        self._startTime = time.monotonic()
        self.modelCard, specs = segmentSpecsFromModel(self.options.model)
        self.specs = self.options.selectSpecs(specs)
        self.tempDirectory = Path(tempfile.mkdtemp(prefix="RepUX-", dir=self.context.temporaryDirectory))
        try:
            inputPath = writeVolumeNrrd(self.volumeNode, self.tempDirectory / "input.nrrd")
            outputPath = self.tempDirectory / "labels.nrrd"
            self._log("INFO", f"model {self.modelCard.id} {self.modelCard.version}: {', '.join(s.name for s in self.specs)}")
            self._startEngine(
                self.options.commandArguments(inputPath, outputPath, self.modelCard.path), cwd=self.tempDirectory, onProgress=self._onRunnerProgress
            )
        except BaseException:
            self._removeTemporaryFiles()
            raise
        self.state = RUNNING

    def cancel(self) -> None:
        """Ask the engine to stop (control channel; killed after a short grace); the job then ends as ``cancelled``."""
        if self.state == RUNNING and self.runner is not None:
            self.state = CANCELLING
            self._log("INFO", "cancelling...")
            self.runner.cancel()

    def _onProcessExit(self) -> None:
        runner = self.runner
        assert runner is not None
        warnings = list(dict.fromkeys(runner.warnings))
        if self.state == CANCELLING or runner.cancelled:
            self._finish(SegmentationOutcome(CANCELLED, warnings=warnings, returncode=runner.returncode))
            return
        if runner.returncode != 0 or self._doneEvent is None:
            message = runner.errorMessage or f"the engine exited with code {runner.returncode} without a result"
            self._finish(SegmentationOutcome(FAILED, warnings=warnings, errorMessage=message, returncode=runner.returncode))
            return
        done = self._doneEvent.to_dict()
        summary = dict(done.get("summary") or {})
        for w in summary.get("warnings", []):
            if w not in warnings:
                warnings.append(str(w))
        outputs = done.get("outputs") or {}
        labelsPath = Path(outputs.get("labels") or (self.tempDirectory / "labels.nrrd"))
        if not labelsPath.is_absolute() and self.tempDirectory is not None:
            labelsPath = self.tempDirectory / labelsPath
        try:
            if self.onProgress is not None:
                self.onProgress(1.0, "import", "importing the segments", 0.0)
            labelmapNode = readLabelmapNrrd(labelsPath)
            segNode = importLabelmap(
                self.context,
                labelmapNode,
                self.specs,  # with --organs the engine already wrote only the chosen organs, numbered 1..k
                self.volumeNode,
                outputSegmentation=self.outputSegmentation,
                name=f"{self.volumeNode.GetName()} segmentation",
            )
        except Exception as err:
            logger.debug("import failed:\n%s", traceback.format_exc())
            self._finish(SegmentationOutcome(FAILED, warnings=warnings, errorMessage=f"could not import the result: {err}", returncode=runner.returncode))
            return
        if self.modelCard is not None:
            segNode.SetAttribute(MODEL_ATTRIBUTE, str(self.modelCard.id))  # RepUXTrainer shows it as the case's source model
        for w in warnings:
            self._log("WARNING", w)
        volumes = {str(k): float(v) for k, v in (done.get("volumes_ml") or {}).items()}
        self._finish(SegmentationOutcome(SUCCEEDED, segNode, volumes, summary, warnings, returncode=runner.returncode))


def segmentVolume(
    volumeNode: Any,
    model: str,
    *,
    device: str = "auto",
    quality: str = "standard",
    roiRAS: Sequence[float] | None = None,
    largestComponent: bool = False,
    outputSegmentation: Any = None,
    context: MRMLContext | None = None,
    pythonExecutable: str | None = None,
    environment: Mapping[str, str] | None = None,
    onProgress: Callable[[float, str, str, float | None], None] | None = None,
    onLog: Callable[[str, str], None] | None = None,
    timeout: float | None = None,
) -> Any:
    """Segment ``volumeNode`` and return the segmentation node (blocking).

    Raises:
        SegmentationError: the engine failed or was cancelled (``err.outcome`` has the details).
        ValueError: bad options or input.
    """
    options = SegmentationOptions(
        model=str(model),
        device=device,
        quality=quality,
        roiRAS=tuple(float(v) for v in roiRAS) if roiRAS is not None else None,
        largestComponent=largestComponent,
    )
    job = SegmentationJob(
        volumeNode,
        options,
        outputSegmentation=outputSegmentation,
        context=context,
        pythonExecutable=pythonExecutable,
        environment=environment,
        onProgress=onProgress,
        onLog=onLog,
    )
    outcome = job.wait(timeout=timeout)
    if not outcome.succeeded:
        raise SegmentationError(f"segmentation {outcome.status}: {outcome.errorMessage or outcome.status}", outcome)
    return outcome.segmentationNode
