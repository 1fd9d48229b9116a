"""Segment several volume nodes with one ``repux segment`` batch process (one model load; no Qt).

:class:`BatchSegmentationJob`:

1. writes each volume to ``<tmp>/in/<case>.nrrd`` with Slicer's NRRD storage node
   (``<case>`` is a unique, filesystem-safe name made from the node name);
2. runs ``<python> -m repux segment --input <tmp>/in --output <tmp>/out --format nrrd
   --progress json --model <folder> --device ... --quality ... [--organs ...]``: the
   engine loads the model once and prefetches the next case while the network runs;
3. imports each case as soon as the engine reports it ``done`` (a ``"case"``
   progress line): one named, coloured, SNOMED-tagged segmentation node per volume,
   placed beside its volume in the subject hierarchy;
4. removes the temporary folder whatever happened.

Cancel (:meth:`BatchSegmentationJob.cancel`) lets the case that is running finish
and be imported, then stops the engine; volumes already segmented keep their
results.  :meth:`BatchSegmentationJob.cancel` with ``immediately=True`` stops at once
(the running case is abandoned; the engine writes no partial file).  A case the
engine reports ``failed`` (unreadable, not 3-D...) does not stop the others.

Widget wiring (RepUXSegment.py, owned by the module's GUI): a *Segment all volumes*
button builds ``BatchSegmentationJob(volumes, options, onProgress=..., onCaseFinished=...,
onFinished=...)`` with the checked scalar volumes (or all of
``scene.GetNodesByClass("vtkMRMLScalarVolumeNode")`` that are not label maps), calls
``start()`` and drives ``processEvents()`` from the same QTimer as the single job;
the Cancel button calls ``cancel()``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repux.protocol import ProgressEvent

from .jobs import BackgroundJob, JobState
from .mrml import MRMLContext, SegmentSpec, checkScalarVolume, importLabelmap, readLabelmapNrrd, segmentSpecsFromModel, writeVolumeNrrd
from .segmentation import MODEL_ATTRIBUTE, SegmentationOptions, renumberedSpecs

__all__ = [
    "STATISTICS_TABLE_HEADERS",
    "BatchCaseResult",
    "BatchOutcome",
    "BatchSegmentationJob",
    "caseNames",
    "segmentVolumes",
    "specsForOrgans",
    "statisticsTableRows",
    "writeStatisticsCsv",
]

logger = logging.getLogger(__name__)

IDLE, RUNNING, STOPPING = JobState.IDLE, JobState.RUNNING, JobState.STOPPING
SUCCEEDED, FAILED, CANCELLED = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


@dataclass
class BatchCaseResult:
    """One volume of a batch: ``status`` is ``done``, ``failed``, ``cancelled`` or ``pending``."""

    volumeNode: Any
    caseName: str
    status: str = "pending"
    segmentationNode: Any = None
    volumesMl: dict[str, float] = field(default_factory=dict)
    errorMessage: str = ""
    statistics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BatchOutcome:
    """How a batch ended: ``succeeded`` (every case done), ``failed`` (some failed or the engine failed) or ``cancelled``."""

    status: str
    cases: list[BatchCaseResult]
    errorMessage: str = ""
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def done(self) -> list[BatchCaseResult]:
        return [c for c in self.cases if c.status == "done"]

    @property
    def tally(self) -> str:
        """``"2 of 3 volumes segmented"``."""
        return f"{len(self.done)} of {len(self.cases)} volumes segmented"


def caseNames(names: Sequence[str]) -> list[str]:
    """Unique, filesystem-safe case names (``[A-Za-z0-9_-]``) for node names, in order."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_-")[:60] or "volume"
        candidate, n = base, 1
        while candidate.lower() in {o.lower() for o in out}:
            n += 1
            candidate = f"{base}_{n}"
        out.append(candidate)
    return out


def specsForOrgans(card: Any, specs: Sequence[SegmentSpec], organs: Sequence[str]) -> list[SegmentSpec]:
    """The segment specs of ``--organs`` (renumbered 1..k in the model's order, as the engine does).

    Raises:
        ValueError: an organ the model does not have.
    """
    if not organs:
        return list(specs)
    from repux.labels import resolve_organs  # ConfigError (a ValueError) names the organ and lists the model's

    return renumberedSpecs(specs, {label.value for label in resolve_organs(card.labels, list(organs))})


class BatchSegmentationJob(BackgroundJob):
    """Several volume nodes segmented by one background ``repux segment`` batch process.

    Args:
        volumeNodes: the input scalar volume nodes (at least one).
        options: :class:`~RepUXSegmentLib.segmentation.SegmentationOptions` (model, device, quality...).
        organs: only these organs (``--organs``); empty for all.
        statistics: also compute per-organ statistics (``--statistics``): each done case's
            ``statistics`` lists one row per organ (voxels, volume_ml, HU mean/std/median/min/max/p5/p95,
            touches_border) for the module's *Statistics* table; :func:`writeStatisticsCsv` exports them.
        context, pythonExecutable, environment: as for :class:`~RepUXSegmentLib.segmentation.SegmentationJob`.
        onProgress: ``(fraction, stage, message, etaSeconds)`` (fraction of the whole batch).
        onCaseFinished: called with each :class:`BatchCaseResult` when its case ends (done or failed).
        onLog: ``(level, text)``.
        onFinished: called once with the :class:`BatchOutcome`.
    """

    def __init__(
        self,
        volumeNodes: Sequence[Any],
        options: SegmentationOptions,
        *,
        organs: Sequence[str] = (),
        statistics: bool = False,
        context: MRMLContext | None = None,
        pythonExecutable: str | None = None,
        environment: Mapping[str, str] | None = None,
        onProgress: Callable[[float, str, str, float | None], None] | None = None,
        onCaseFinished: Callable[[BatchCaseResult], None] | None = None,
        onLog: Callable[[str, str], None] | None = None,
        onFinished: Callable[[BatchOutcome], None] | None = None,
    ) -> None:
        volumes = [v for v in volumeNodes if v is not None]
        if not volumes:
            raise ValueError("no volumes selected: check at least one CT volume.")
        options.validate()
        for v in volumes:
            checkScalarVolume(v)
        self.options = options
        self.organs = tuple(str(o).strip() for o in organs if str(o).strip())
        self.statistics = bool(statistics)
        self.context = context or MRMLContext.fromSlicer()
        self.pythonExecutable = pythonExecutable
        self.environment = dict(environment) if environment is not None else None
        super().__init__(onLog=onLog, onFinished=onFinished)
        self.onProgress = onProgress
        self.onCaseFinished = onCaseFinished
        names = caseNames([v.GetName() for v in volumes])
        self.cases = [BatchCaseResult(v, n) for v, n in zip(volumes, names)]
        self._byName = {c.caseName: c for c in self.cases}
        self.tempDirectory: Path | None = None
        self.modelCard: Any = None
        self.specs: list[SegmentSpec] = []
        self._discardResults = False

    timeoutMessage = "the batch did not finish within {timeout} s and was stopped."

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        """Write the volumes and start the engine.

        Raises:
            repux.errors.ModelFileError: unknown model. ValueError: an unknown organ or an unusable volume.
        """
        if self.state != IDLE:
            raise RuntimeError("a BatchSegmentationJob can only be started once.")
        self._startTime = time.monotonic()
        self.modelCard, specs = segmentSpecsFromModel(self.options.model)
        self.specs = specsForOrgans(self.modelCard, specs, self.organs)
        self.tempDirectory = Path(tempfile.mkdtemp(prefix="RepUX-batch-", dir=self.context.temporaryDirectory))
        try:
            inputs = self.tempDirectory / "in"
            inputs.mkdir()
            for case in self.cases:
                writeVolumeNrrd(case.volumeNode, inputs / f"{case.caseName}.nrrd")
            args = self.options.commandArguments(inputs, self.tempDirectory / "out", self.modelCard.path) + ["--format", "nrrd"]
            if self.organs:
                args += ["--organs", ",".join(self.organs)]
            if self.statistics:
                args.append("--statistics")
            self._log("INFO", f"batch of {len(self.cases)} volumes with model {self.modelCard.id} {self.modelCard.version}")
            self._startEngine(args, cwd=self.tempDirectory, onProgress=self._onRunnerProgress)
        except BaseException:
            self._removeTemporaryFiles()
            raise
        self.state = RUNNING

    def cancel(self, immediately: bool = False, discardResults: bool = False) -> None:
        """Stop after the running case (imported when it finishes), or at once with ``immediately``.

        ``discardResults`` (the scene is closing, the module is cleaned up): stop at once and import nothing
        more, not even a case the engine reports done after this call (its volume belongs to the closed scene).
        """
        if discardResults:
            self._discardResults = True
            immediately = True
        if self.runner is None or not self.running:
            return
        if immediately or self.state == STOPPING:
            self._log("INFO", "stopping the batch now")
            self.runner.cancel()
        else:
            self._log("INFO", "the batch stops after the current case")
        self.state = STOPPING

    def _stopForTimeout(self) -> None:
        self.cancel(immediately=True)

    #: the job's last log line per outcome (BackgroundJob._finish)
    outcomeMessages = {
        SUCCEEDED: ("INFO", "batch succeeded: {outcome.tally} in {outcome.seconds:.1f} s"),
        FAILED: ("WARNING", "batch failed: {outcome.tally} in {outcome.seconds:.1f} s"),
        CANCELLED: ("WARNING", "batch cancelled: {outcome.tally} in {outcome.seconds:.1f} s"),
    }

    def _outcome(self, status: str, message: str = "") -> BatchOutcome:
        """The outcome of the ended batch (the temporary folder is removed first)."""
        self._removeTemporaryFiles()
        return BatchOutcome(status, list(self.cases), message, self.runner.returncode if self.runner else None)

    def _failedOutcome(self, message: str) -> BatchOutcome:
        return self._outcome(FAILED, message)

    # ----------------------------------------------------------------- engine output
    def _onRunnerProgress(self, update: ProgressEvent) -> None:
        if self.onProgress is not None:
            self.onProgress(update.fraction, update.stage, update.message, update.eta_s)
        if update.stage != "case":
            return
        case = self._byName.get(str(update.extra.get("case", "")))
        if case is None or case.status != "pending" or self._discardResults:
            return  # discarded results: the case stays pending and ends as cancelled
        status = str(update.extra.get("status", ""))
        if status == "done":
            self._importCase(case, Path(str(update.extra.get("output", ""))), update.extra.get("volumes_ml") or {})
        elif status == "failed":
            case.status = "failed"
            case.errorMessage = str(update.extra.get("error", "")) or "failed"
            self._log("ERROR", f"{case.volumeNode.GetName()}: {case.errorMessage}")
        else:
            return
        if self.onCaseFinished is not None:
            self.onCaseFinished(case)
        if self.state == STOPPING and self.runner is not None:
            self.runner.cancel()  # the case that was running is finished: stop here

    def _importCase(self, case: BatchCaseResult, labelsPath: Path, volumesMl: Mapping[str, Any]) -> None:
        try:
            labelmapNode = readLabelmapNrrd(labelsPath)
            segNode = importLabelmap(self.context, labelmapNode, self.specs, case.volumeNode, name=f"{case.volumeNode.GetName()} segmentation")
        except Exception as err:
            logger.debug("import failed:\n%s", traceback.format_exc())
            case.status = "failed"
            case.errorMessage = f"could not import the result: {err}"
            self._log("ERROR", f"{case.volumeNode.GetName()}: {case.errorMessage}")
            return
        if self.modelCard is not None:
            segNode.SetAttribute(MODEL_ATTRIBUTE, str(self.modelCard.id))
        if self.statistics:
            statisticsPath = labelsPath.with_name(labelsPath.name[: -len(".nrrd")] + ".statistics.json")
            try:
                case.statistics = list(json.loads(statisticsPath.read_text()).get("organs", []))
            except (OSError, ValueError) as err:
                self._log("WARNING", f"{case.volumeNode.GetName()}: no statistics ({err})")
        case.status = "done"
        case.segmentationNode = segNode
        case.volumesMl = {str(k): float(v) for k, v in volumesMl.items()}
        self._log("INFO", f"{case.volumeNode.GetName()}: segmented")

    def _onProcessExit(self) -> None:
        runner = self.runner
        assert runner is not None
        stopped = (self.state == STOPPING or runner.cancelled) and any(c.status == "pending" for c in self.cases)
        for case in self.cases:
            if case.status == "pending":
                case.status = "cancelled" if stopped else "failed"
                if not stopped:
                    case.errorMessage = runner.errorMessage or "the engine stopped before this case"
        if stopped:
            self._finish(self._outcome(CANCELLED))
        elif any(c.status != "done" for c in self.cases):
            failed = [c for c in self.cases if c.status == "failed"]
            self._finish(self._outcome(FAILED, f"{len(failed)} of {len(self.cases)} volumes failed" + (f": {failed[0].errorMessage}" if failed else "")))
        else:
            self._finish(self._outcome(SUCCEEDED))

    def _removeTemporaryFiles(self) -> None:
        if self.tempDirectory is not None:
            shutil.rmtree(self.tempDirectory, ignore_errors=True)
            self.tempDirectory = None


STATISTICS_COLUMNS = ("organ", "voxels", "volume_ml", "hu_mean", "hu_std", "hu_median", "hu_min", "hu_max", "hu_p5", "hu_p95", "touches_border")


#: columns of the module's Statistics table (the CSV export has every statistic)
STATISTICS_TABLE_HEADERS = ("Volume", "Organ", "Volume (mL)", "HU mean", "HU std", "HU median", "HU p5", "HU p95", "Cut by the image border")


def statisticsTableRows(cases: Sequence[BatchCaseResult]) -> list[tuple[str, ...]]:
    """Rows of text for the Statistics table: one per done case and organ (``STATISTICS_TABLE_HEADERS`` order)."""

    def number(value: Any, digits: int) -> str:
        return "" if value is None else f"{float(value):.{digits}f}"

    rows = []
    for case in cases:
        for r in case.statistics:
            rows.append(
                (
                    case.volumeNode.GetName(),
                    str(r.get("organ", "")),
                    number(r.get("volume_ml"), 1),
                    number(r.get("hu_mean"), 1),
                    number(r.get("hu_std"), 1),
                    number(r.get("hu_median"), 1),
                    number(r.get("hu_p5"), 1),
                    number(r.get("hu_p95"), 1),
                    "yes" if r.get("touches_border") else "no",
                )
            )
    return rows


def writeStatisticsCsv(cases: Sequence[BatchCaseResult], path: str | Path) -> Path:
    """Export the statistics of the done cases as one CSV (a row per volume and organ; volume = node name)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("volume", *STATISTICS_COLUMNS))
        for case in cases:
            for row in case.statistics:
                writer.writerow((case.volumeNode.GetName(), *("" if row.get(k) is None else row.get(k) for k in STATISTICS_COLUMNS)))
    tmp.replace(out)
    return out


def segmentVolumes(volumeNodes: Sequence[Any], model: str, *, timeout: float | None = None, organs: Sequence[str] = (), **options: Any) -> BatchOutcome:
    """Blocking form: segment ``volumeNodes`` with ``model`` in one batch process; returns the :class:`BatchOutcome`.

    ``options`` are :class:`SegmentationOptions` fields (``device``, ``quality``...) and the job's
    keyword arguments (``context``, ``pythonExecutable``, ``onProgress``...).
    """
    jobKeys = ("context", "pythonExecutable", "environment", "onProgress", "onCaseFinished", "onLog", "onFinished")
    jobArgs = {k: options.pop(k) for k in list(options) if k in jobKeys}
    statistics = bool(options.pop("statistics", False))
    job = BatchSegmentationJob(volumeNodes, SegmentationOptions(model=str(model), **options), organs=organs, statistics=statistics, **jobArgs)
    return job.wait(timeout=timeout)
