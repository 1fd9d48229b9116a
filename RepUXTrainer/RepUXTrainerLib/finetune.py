"""Fine-tuning in a background ``repux finetune`` process: start, stop with a checkpoint, resume (no Qt).

:class:`FinetuneJob` runs ``<python> -m repux finetune --base ... --dataset ... --output ... --progress json``
through :class:`RepUXSegmentLib.process.ProcessRunner` (the same runner RepUXSegment uses:
reader threads, callbacks in the owner's thread, process-tree termination).

* **Stop** writes ``{"command": "stop"}`` on the engine's stdin (its control channel; works
  through Slicer's PythonSlicer launcher and on Windows): the engine finishes the current
  iteration, writes an atomic, resumable checkpoint in the run folder, prints a ``stopped``
  progress line and exits 0.  Only if it has not exited after :data:`STOP_GRACE_SECONDS` is
  the process tree killed.  The job is then ``stopped``
  and :meth:`FinetuneJob.resume` continues it with ``--resume`` (exactly: same crops, same
  updates as an uninterrupted run).
* The run folder (default ``$REPUX_HOME/runs/<model id>``) also holds the job's settings
  (``repux-trainer-job.json``) and every progress line (``repux-trainer-progress.jsonl``), so a
  run stopped in one Slicer session can be resumed, with its curves, in the next one
  (:func:`resumableRuns`, :meth:`FinetuneJob.fromRunDirectory`).
* When it succeeds, the new model is in the model store with its provenance (written by
  the engine): ``repux segment -m <id>`` and RepUXSegment's model list see it at once.

The GUI pumps the job with :meth:`FinetuneJob.processEvents` from a timer;
:func:`runFinetune` is the blocking form.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from RepUXSegmentLib.jobs import BackgroundJob, JobState

from repux.config import DEVICE_RULE, is_device_name
from repux.models.ids import MODEL_ID_RULE, is_model_id

from .monitor import TrainingProgress, readProgressLog

__all__ = [
    "CHECKPOINT_FILE",
    "JOB_FILE",
    "PROGRESS_LOG",
    "STOP_GRACE_SECONDS",
    "FinetuneError",
    "FinetuneJob",
    "FinetuneOptions",
    "FinetuneOutcome",
    "resumableRuns",
    "runFinetune",
    "suggestModelId",
]

logger = logging.getLogger(__name__)

#: the engine's resumable checkpoint in the run folder (repux.training.checkpoint.CHECKPOINT; not imported: that module imports torch)
CHECKPOINT_FILE = "checkpoint.pt"
JOB_FILE = "repux-trainer-job.json"
PROGRESS_LOG = "repux-trainer-progress.jsonl"
#: seconds a stopped run may take to finish its iteration and write the checkpoint before it is killed (the engine allows 600)
STOP_GRACE_SECONDS = 900.0

#: job states (RepUXSegmentLib.jobs.JobState)
IDLE, RUNNING, STOPPING, STOPPED, SUCCEEDED, FAILED, CANCELLED = (
    JobState.IDLE,
    JobState.RUNNING,
    JobState.STOPPING,
    JobState.STOPPED,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)



class FinetuneError(RuntimeError):
    """A fine-tuning run failed or was stopped; ``outcome`` holds the details."""

    def __init__(self, message: str, outcome: FinetuneOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


def _storeRoot() -> Path:
    from repux.models.store import store_root

    return store_root()


def _isStoreId(out: str) -> bool:
    """The engine's rule (repux.cli.commands_train._resolve_out): no slash, no leading dot -> model store id."""
    return not ("/" in out or "\\" in out or out.startswith("."))


@dataclass
class FinetuneOptions:
    """What ``repux finetune`` is run with.

    Attributes:
        baseModel: installed model id or model folder to start from.
        dataset: training set folder (``repux-dataset.json``).
        outModel: id of the new model in the model store (or a folder path).
        name: display name of the new model.
        maxIterations: iterations (the run stops earlier when the time budget is used up).
        timeBudgetMinutes: optional wall-time limit; the best model so far is exported.
        learningRate: peak AdamW learning rate.
        freezeEncoderIterations: keep the large-kernel encoder frozen for the first K iterations.
        valFraction: fraction of cases held out for validation (cases with a split keep it).
        valInterval: validate every N iterations.
        checkpointInterval: write the resumable checkpoint every N iterations.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        roiSize: crop size (multiple of 16; default: the base model's window).
        threads: CPU threads of the engine (default: all cores).
        runDirectory: checkpoint / log folder (default ``$REPUX_HOME/runs/<model id>``).
        extraArguments: further ``repux finetune`` options, e.g. ``("--augmentation", "none")``.
    """

    baseModel: str
    dataset: str
    outModel: str
    name: str = ""
    maxIterations: int = 300
    timeBudgetMinutes: float | None = None
    learningRate: float = 2e-4
    freezeEncoderIterations: int = 0
    valFraction: float = 0.2
    valInterval: int = 50
    checkpointInterval: int = 25
    device: str = "auto"
    roiSize: int | None = None
    threads: int | None = None
    runDirectory: str | None = None
    extraArguments: tuple[str, ...] = ()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError for an unusable option (the message names the option and what is allowed)."""
        if not str(self.baseModel).strip():
            raise ValueError("choose the base model to fine-tune.")
        if not str(self.dataset).strip() or not (Path(self.dataset) / "repux-dataset.json").is_file():
            raise ValueError(f"{self.dataset!r} is not a training set folder (no repux-dataset.json); add cases first.")
        out = str(self.outModel).strip()
        if not out:
            raise ValueError("give the new model an id.")
        if _isStoreId(out) and not is_model_id(out):
            raise ValueError(f"model id {out!r} is not allowed: use {MODEL_ID_RULE}, not ending with '.' and not a Windows device name.")
        for name, minimum in (("maxIterations", 1), ("valInterval", 1), ("checkpointInterval", 1), ("freezeEncoderIterations", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
        if self.timeBudgetMinutes is not None and not (math.isfinite(float(self.timeBudgetMinutes)) and float(self.timeBudgetMinutes) > 0):
            raise ValueError(f"the time budget must be a positive number of minutes (or none); got {self.timeBudgetMinutes!r}.")
        if not (math.isfinite(float(self.learningRate)) and float(self.learningRate) > 0):
            raise ValueError(f"the learning rate must be > 0; got {self.learningRate!r}.")
        if not 0.0 <= float(self.valFraction) < 1.0:
            raise ValueError(f"the validation fraction must be in [0, 1); got {self.valFraction!r}.")
        if not is_device_name(self.device):
            raise ValueError(f"device must be {DEVICE_RULE}; got {self.device!r}.")
        if self.roiSize is not None and (not isinstance(self.roiSize, int) or self.roiSize < 16 or self.roiSize % 16):
            raise ValueError(f"the crop size must be a multiple of 16 (16, 32, 48...); got {self.roiSize!r}.")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer; got {self.threads!r}.")

    # ----------------------------------------------------------------- derived
    @property
    def inModelStore(self) -> bool:
        return _isStoreId(str(self.outModel).strip())

    @property
    def modelId(self) -> str:
        out = str(self.outModel).strip()
        return out if self.inModelStore else Path(out).name

    def outputPath(self) -> Path:
        """Where the engine writes the new model folder."""
        out = str(self.outModel).strip()
        return _storeRoot() / "models" / out if self.inModelStore else Path(out)

    def resolvedRunDirectory(self) -> Path:
        return Path(self.runDirectory) if self.runDirectory else _storeRoot() / "runs" / self.modelId

    def commandArguments(self, resume: bool = False) -> list[str]:
        """The ``repux finetune ...`` arguments (after ``-m repux``)."""
        args = [
            "finetune",
            "--base",
            str(self.baseModel),
            "--dataset",
            str(self.dataset),
            "--output",
            str(self.outModel).strip(),
            "--run-dir",
            str(self.resolvedRunDirectory()),
            "--max-iterations",
            str(int(self.maxIterations)),
            "--lr",
            repr(float(self.learningRate)),
            "--freeze-encoder",
            str(int(self.freezeEncoderIterations)),
            "--val-fraction",
            repr(float(self.valFraction)),
            "--val-interval",
            str(int(self.valInterval)),
            "--checkpoint-interval",
            str(int(self.checkpointInterval)),
            "--device",
            str(self.device).strip().lower(),
            "--progress",
            "json",
            "--control",  # the stop channel (repux.protocol.CONTROL_ARGUMENTS)
            "stdin",
        ]
        if self.name:
            args += ["--name", str(self.name)]
        if self.timeBudgetMinutes:
            args += ["--time-budget", f"{float(self.timeBudgetMinutes) * 60.0:g}"]
        if self.roiSize:
            args += ["--roi-size", str(int(self.roiSize))]
        if self.threads:
            args += ["--threads", str(int(self.threads))]
        if resume:
            args.append("--resume")
        args += [str(a) for a in self.extraArguments]
        return args

    def toDict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extraArguments"] = list(self.extraArguments)
        return d

    @classmethod
    def fromDict(cls, d: Mapping[str, Any]) -> FinetuneOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["extraArguments"] = tuple(values.get("extraArguments", ()))
        return cls(**values)


def suggestModelId(baseModel: str, now: _dt.datetime | None = None, taken: Iterable[str] = ()) -> str:
    """``<base id>-ft-YYYYMMDD-HHMM`` (unique against the store, its run folders and ``taken``; RepUXSegmentLib.models.suggestModelId)."""
    from RepUXSegmentLib.models import suggestModelId as suggest

    return suggest(baseModel, now=now, taken=taken, storeRoot=_storeRoot())


@dataclass
class FinetuneOutcome:
    """How a run ended.

    Attributes:
        status: ``succeeded``, ``stopped`` (a checkpoint remains: resumable), ``cancelled``
            (stopped before the first checkpoint) or ``failed``.
        modelId, modelPath: the new model (succeeded only).
        iterations: last iteration reached.
        bestMeanDice, validationDice: best validation result (succeeded only).
        errorMessage: why it failed.
        returncode: exit code of the engine.
        runDirectory: checkpoint / log folder.
        seconds: wall time of this start (not the whole run).
    """

    status: str
    modelId: str = ""
    modelPath: str = ""
    iterations: int = 0
    bestMeanDice: float | None = None
    validationDice: dict[str, float | None] = field(default_factory=dict)
    errorMessage: str = ""
    returncode: int | None = None
    runDirectory: str = ""
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    @property
    def resumable(self) -> bool:
        return self.status == STOPPED

    @property
    def diceText(self) -> str:
        return f"; best validation mean Dice {self.bestMeanDice:.3f}" if self.bestMeanDice is not None else ""


class FinetuneJob(BackgroundJob):
    """One fine-tuning run, possibly over several starts (start, stop, resume...).

    Args:
        options: :class:`FinetuneOptions`.
        pythonExecutable: interpreter for ``-m repux`` (default: PythonSlicer / this Python).
        environment: environment of the child (default: ``childEnvironment()``).
        onProgress: called with every ``ProgressEvent`` of the engine (its ``data`` holds
            ``iteration``, ``loss``, ``lr``, ``val_dice``...).
        onLog: ``(level, text)`` for engine log lines and job messages.
        onFinished: called with the :class:`FinetuneOutcome` each time the engine exits.
    """

    def __init__(
        self,
        options: FinetuneOptions,
        *,
        pythonExecutable: str | None = None,
        environment: Mapping[str, str] | None = None,
        onProgress: Callable[[Any], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[FinetuneOutcome], None] | None = None,
    ) -> None:
        super().__init__(onLog=onLog, onFinished=onFinished)
        self.options = options
        self.pythonExecutable = pythonExecutable
        self.environment = dict(environment) if environment is not None else None
        self.onProgress = onProgress
        self.progress = TrainingProgress()
        self.starts = 0
        self._doneData: Mapping[str, Any] | None = None

    callbackStopGraceSeconds = STOP_GRACE_SECONDS
    timeoutMessage = "the fine-tuning did not finish within {timeout} s; it was stopped and can be resumed."
    outcomeMessages = {
        SUCCEEDED: ("INFO", "fine-tuning finished: model '{outcome.modelId}' at iteration {outcome.iterations}{outcome.diceText}"),
        STOPPED: ("INFO", "fine-tuning stopped at iteration {outcome.iterations}; the checkpoint is in {outcome.runDirectory} (Resume continues)"),
        CANCELLED: ("INFO", "fine-tuning stopped before the first checkpoint"),
        FAILED: ("ERROR", "fine-tuning failed: {outcome.errorMessage}"),
    }

    @classmethod
    def fromRunDirectory(cls, runDirectory: str | os.PathLike[str], **kwargs: Any) -> FinetuneJob:
        """The run of a previous session, ready to :meth:`resume` (its progress history reloaded).

        Raises:
            ValueError: the folder holds no RepUXTrainer run.
        """
        folder = Path(runDirectory)
        try:
            data = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{folder} holds no RepUXTrainer run ({JOB_FILE} is missing or unreadable: {err}).") from err
        job = cls(FinetuneOptions.fromDict(data.get("options", {})), **kwargs)
        for line in readProgressLog(folder / PROGRESS_LOG):
            job.progress.add(line)
        job.state = STOPPED if job.canResume else IDLE
        return job

    # ------------------------------------------------------------------ state
    @property
    def runDirectory(self) -> Path:
        return self.options.resolvedRunDirectory()

    @property
    def checkpointPath(self) -> Path:
        return self.runDirectory / CHECKPOINT_FILE

    @property
    def progressLogPath(self) -> Path:
        return self.runDirectory / PROGRESS_LOG

    @property
    def canResume(self) -> bool:
        """A checkpoint exists and the model was not exported yet."""
        return not self.running and self.checkpointPath.is_file() and not self.options.outputPath().exists()

    # ----------------------------------------------------------------- control
    def start(self, resume: bool = False) -> None:
        """Start the engine (``resume=True``: continue from the run folder's checkpoint).

        Raises:
            ValueError: bad options, the model id is taken, or a stopped run is in the way.
            RuntimeError: the job is running.
            ProcessStartError: the interpreter could not be started.
        """
        if self.running:
            raise RuntimeError("the fine-tuning is already running.")
        self.options.validate()
        output = self.options.outputPath()
        if output.exists():
            raise ValueError(f"a model '{self.options.modelId}' already exists ({output}); choose another id for the new model.")
        runDirectory = self.runDirectory
        if resume and not self.checkpointPath.is_file():
            raise ValueError(f"there is no checkpoint to resume from in {runDirectory}; start a new run instead.")
        if not resume and self.checkpointPath.is_file():
            raise ValueError(
                f"{runDirectory} holds a stopped run of '{self.options.modelId}'; resume it, or choose another id for the new model "
                "(or delete that folder to start over)."
            )
        runDirectory.mkdir(parents=True, exist_ok=True)
        job = {
            "format": "repux-trainer-job",
            "version": 1,
            "options": self.options.toDict(),
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (runDirectory / JOB_FILE).write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
        if not resume:
            self.progressLogPath.write_text("", encoding="utf-8")
            self.progress = TrainingProgress()
        self._doneData = None
        self._startEngine(self.options.commandArguments(resume=resume), onProgress=self._onRunnerProgress, logPrefix="resuming: " if resume else "running: ")
        self._startTime = time.monotonic()
        self.starts += 1
        self.outcome = None
        self.state = RUNNING

    def resume(self) -> None:
        """Continue a stopped run from its checkpoint (see :meth:`start`)."""
        self.start(resume=True)

    def stop(self) -> None:
        """Ask the engine to stop: it finishes the current iteration, writes a checkpoint and exits.

        Non-blocking; the job ends as ``stopped`` (resumable).
        """
        if self.state == RUNNING and self.runner is not None:
            self.state = STOPPING
            self._log("INFO", "stopping after the current iteration (a resumable checkpoint is written)...")
            self.runner.cancel(graceSeconds=STOP_GRACE_SECONDS)

    def abort(self) -> None:
        """Kill the engine at once (no new checkpoint; the last periodic one, if any, remains)."""
        if self.running and self.runner is not None:
            self.state = STOPPING
            self._log("WARNING", "killing the fine-tuning process")
            self.runner.cancel(graceSeconds=0.0)

    def cancel(self) -> None:
        """Stop (with a checkpoint); the blocking :meth:`wait` calls this after its timeout."""
        self.stop()

    def _failedOutcome(self, message: str) -> FinetuneOutcome:
        return FinetuneOutcome(FAILED, errorMessage=message, returncode=self.runner.returncode if self.runner is not None else None)

    # --------------------------------------------------------------- delivery
    def _onRunnerProgress(self, update: Any) -> None:
        data = update.to_dict()
        self.progress.add(data)
        if update.stage == "done":
            self._doneData = data
        try:
            with open(self.progressLogPath, "a", encoding="utf-8") as log:
                log.write(json.dumps(data) + "\n")
        except OSError as err:
            logger.debug("cannot append to %s: %s", self.progressLogPath, err)
        if self.onProgress is not None:
            self.onProgress(update)

    def _onProcessExit(self) -> None:
        runner = self.runner
        common = {"returncode": runner.returncode, "runDirectory": str(self.runDirectory), "iterations": self.progress.iteration}
        if runner.returncode == 0 and self._doneData is not None:  # finished (even if a stop came too late): the model exists
            done = self._doneData
            valDice = done.get("val_dice") if isinstance(done.get("val_dice"), dict) else {}
            best = done.get("best_mean_dice")
            self._finish(
                FinetuneOutcome(
                    SUCCEEDED,
                    modelId=self.options.modelId,
                    modelPath=str(done.get("model") or self.options.outputPath()),
                    bestMeanDice=None if best is None else float(best),
                    validationDice=dict(valDice),
                    **common,
                )
            )
        elif self.state == STOPPING or runner.cancelled:
            if self.checkpointPath.is_file():
                self._finish(FinetuneOutcome(STOPPED, **common))
            else:
                self._finish(FinetuneOutcome(CANCELLED, errorMessage="stopped before the first checkpoint; nothing to resume", **common))
        else:
            message = runner.errorMessage or f"the engine exited with code {runner.returncode} without a model"
            self._finish(FinetuneOutcome(FAILED, errorMessage=message, **common))


def runFinetune(options: FinetuneOptions, *, resume: bool = False, timeout: float | None = None, **kwargs: Any) -> FinetuneOutcome:
    """Fine-tune and wait (blocking); returns the outcome of a successful run.

    Raises:
        FinetuneError: the run failed or was stopped (``err.outcome`` has the details).
        ValueError: bad options.
    """
    job = FinetuneJob(options, **kwargs)
    job.start(resume=resume)
    outcome = job.wait(timeout=timeout)
    if not outcome.succeeded:
        raise FinetuneError(f"fine-tuning {outcome.status}: {outcome.errorMessage or outcome.status}", outcome)
    return outcome


def resumableRuns(storeRoot: str | os.PathLike[str] | None = None) -> list[FinetuneOptions]:
    """Stopped RepUXTrainer runs of the model store (checkpoint present, model not exported yet), newest first."""
    root = Path(storeRoot) if storeRoot is not None else _storeRoot()
    runs = []
    for folder in sorted((root / "runs").glob("*"), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True):
        if not (folder / JOB_FILE).is_file() or not (folder / CHECKPOINT_FILE).is_file():
            continue
        try:
            options = FinetuneOptions.fromDict(json.loads((folder / JOB_FILE).read_text(encoding="utf-8")).get("options", {}))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            logger.debug("skipping %s: %s", folder, err)
            continue
        if not options.outputPath().exists():
            runs.append(options)
    return runs
