"""What the RepUX Trainer panel shows and allows, without Qt (the module file only applies it to the widgets).

Each function takes the state it decides on (the logic's training set and jobs, the parameter node, an
outcome...) duck-typed, and the translation function ``tr`` (``slicer.i18n.tr`` in Slicer); it returns texts,
table rows or ``{widget name: {attribute: value}}`` states for
:func:`RepUXSegmentLib.widgethelpers.setWidgetStates`:

* :func:`buttonStates` - which buttons are enabled (and their tooltips/texts) given the logic and the parameter node;
* :func:`caseTableRows` / :func:`trainingSetInfoText` - the training set section;
* :func:`mappingRows` / :func:`applyMappingChoice` - the segment -> class mapping table and a choice made in it;
* :func:`finetuneSettings` / :func:`finetuneProgressText` / :func:`finetuneFinishedText` / :func:`duration` / :func:`resultModelText` - fine-tuning;
* :func:`resegmentFinishedText` / :func:`rankingTableRows` - the new model and the next case;
* :func:`chooseResumeRun` / :func:`resumeRunNames` - which stopped run Resume continues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from RepUXSegmentLib.panel import volumesText

__all__ = [
    "IGNORE_ITEM",
    "NEW_CLASS_ITEM",
    "applyMappingChoice",
    "buttonStates",
    "caseTableRows",
    "chooseResumeRun",
    "duration",
    "finetuneFinishedText",
    "finetuneProgressText",
    "finetuneSettings",
    "mappingRows",
    "rankingTableRows",
    "resegmentFinishedText",
    "resultModelText",
    "resumeRunNames",
    "trainingSetInfoText",
]

#: mapping-table choices besides the classes
IGNORE_ITEM = "__ignore__"
NEW_CLASS_ITEM = "__new-class__"


def _identity(text: str) -> str:
    return text


def buttonStates(
    logic: Any,
    p: Any,
    hasCase: bool,
    hasMapping: bool,
    resumableRuns: Sequence[Any],
    candidatesFromFolder: bool,
    hasCandidate: bool,
    tr: Callable[[str], str] = _identity,
) -> dict[str, dict[str, Any]]:
    """The panel's buttons given the logic (``job``, ``ranking``, ``trainingSet``, ``plot``, ``segmentationJobs``),
    the parameter node ``p`` (None before the module is entered) and the selections of the tables."""
    job = logic.job
    training = job is not None and job.running
    ranking = logic.ranking is not None and logic.ranking.running
    hasSet = logic.trainingSet is not None
    canAdd = hasSet and p is not None and p.inputVolume is not None and p.inputSegmentation is not None and hasMapping
    enough = hasSet and len(logic.trainingSet) >= 2
    return {
        "reviewCaseButton": {"enabled": hasCase},
        "renameCaseButton": {"enabled": hasCase},
        "removeCaseButton": {"enabled": hasCase and not training},
        "addCaseButton": {
            "enabled": canAdd,
            "toolTip": tr("Write the volume and its segmentation as a new case.")
            if canAdd
            else tr("Open a training set and choose a volume and its segmentation."),
        },
        "startButton": {
            "enabled": enough and not training and p is not None and bool(p.baseModel),
            "toolTip": tr("Start fine-tuning in the background.") if enough else tr("The training set needs at least 2 cases."),
        },
        "stopButton": {"enabled": training and job.state == "running"},
        "resumeButton": {"enabled": not training and ((job is not None and job.canResume) or (job is None and bool(resumableRuns)))},
        "showChartButton": {"enabled": logic.plot is not None},
        "resegmentButton": {"enabled": p is not None and bool(p.resultModel) and p.inputVolume is not None and not logic.segmentationJobs},
        "candidateFolderPathLineEdit": {"enabled": candidatesFromFolder},
        "rankButton": {"text": tr("Cancel ranking") if ranking else tr("Rank by uncertainty")},
        "showUncertaintyButton": {"enabled": not ranking and hasCandidate},
    }


def resultModelText(resultModel: str, tr: Callable[[str], str] = _identity) -> str:
    return tr("New model: {model} (listed in RepUX Segment).").format(model=resultModel) if resultModel else tr("No fine-tuned model yet.")


def caseTableRows(cases: Sequence[Any], tr: Callable[[str], str] = _identity) -> list[tuple[list[str], str]]:
    """``(cells, tooltip)`` rows of the cases table: name, organs, date added, source model; the tooltip says how it was resampled."""
    return [
        (
            [case.name, ", ".join(case.organs), case.addedDate, case.sourceModel or tr("(unknown)")],
            tr("Resampled onto the volume grid: {how}").format(how=case.resampled) if case.resampled else case.id,
        )
        for case in cases
    ]


def trainingSetInfoText(trainingSet: Any, tr: Callable[[str], str] = _identity) -> str:
    """The line under the training set folder: how to start, or the cases, classes and notes of the open set."""
    if trainingSet is None:
        return tr("Choose a folder: an empty one for a new training set.")
    text = tr("{count} cases; classes: {classes}").format(count=len(trainingSet), classes=", ".join(trainingSet.labels.names))
    warnings = trainingSet.warnings()
    if warnings:
        text += "\n" + "\n".join(tr("Note: {warning}").format(warning=w) for w in warnings)
    return text


def mappingRows(mapping: Any, classes: Sequence[str], tr: Callable[[str], str] = _identity) -> list[dict[str, Any]]:
    """One row per segment of the mapping table: ``segment`` (name), ``choices`` (``(text, data)`` of its combo box:
    ignore, each class, and "new class" for an unknown segment), ``current`` (the data to select), ``how`` (how it was
    matched) and ``known`` (False: flagged)."""
    rows = []
    for entry in mapping:
        choices = [(tr("(ignore)"), IGNORE_ITEM)] + [(name, name) for name in classes]
        if not entry.known:
            choices.append((tr("(new class)"), NEW_CLASS_ITEM))
        current = entry.label if entry.label else (NEW_CLASS_ITEM if entry.addAsNew else IGNORE_ITEM)
        how = entry.matchedBy if entry.known else tr("unknown segment")
        rows.append({"segment": entry.segment.name, "choices": choices, "current": current, "how": how, "known": entry.known})
    return rows


def applyMappingChoice(mapping: Any, row: int, data: str) -> None:
    """The user chose ``data`` (a class name, :data:`IGNORE_ITEM` or :data:`NEW_CLASS_ITEM`) in row ``row``."""
    if mapping is None or row >= len(mapping):
        return
    entry = mapping.entries[row]
    if data == NEW_CLASS_ITEM:
        entry.label, entry.addAsNew, entry.matchedBy = None, True, ""
    elif data == IGNORE_ITEM:
        mapping.setTarget(entry.segment.id, None)
    else:
        mapping.setTarget(entry.segment.id, data)


def finetuneSettings(p: Any) -> dict[str, Any]:
    """The fine-tuning settings of ``TrainerLogic.startFinetune`` from the parameter node (a time budget of 0 is none)."""
    return {
        "maxIterations": int(p.maxIterations),
        "timeBudgetMinutes": float(p.timeBudgetMinutes) or None,
        "device": p.device,
        "learningRate": float(p.learningRate),
        "freezeEncoderIterations": int(p.freezeEncoderIterations),
        "valFraction": float(p.valFraction),
        "valInterval": int(p.validationInterval),
    }


def duration(seconds: float | None) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = round(seconds or 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def finetuneProgressText(progress: Any, update: Any, tr: Callable[[str], str] = _identity) -> str:
    """The status line of a running fine-tuning: iteration, loss, best validation Dice, time left (the message before the first iteration)."""
    if not progress.iteration:
        return update.message
    text = tr("Iteration {iteration}/{total}").format(iteration=progress.iteration, total=progress.maxIterations)
    if progress.lastLoss is not None:
        text += tr(", loss {loss:.4f}").format(loss=progress.lastLoss)
    if progress.bestMeanDice is not None:
        text += tr(", best validation Dice {dice:.3f}").format(dice=progress.bestMeanDice)
    if update.eta_s:
        text += tr(" - about {eta} left").format(eta=duration(update.eta_s))
    return text


def finetuneFinishedText(outcome: Any, tr: Callable[[str], str] = _identity) -> str:
    """The status line when a fine-tuning ends: ready (with its best Dice), stopped (Resume continues), cancelled or failed."""
    if outcome.succeeded:
        dice = tr(" Best validation Dice {dice:.3f}.").format(dice=outcome.bestMeanDice) if outcome.bestMeanDice is not None else ""
        return tr("Model '{model}' is ready.").format(model=outcome.modelId) + dice
    if outcome.status == "stopped":
        return tr("Stopped at iteration {iteration}. Resume continues from the checkpoint.").format(iteration=outcome.iterations)
    if outcome.status == "cancelled":
        return tr("Stopped before the first checkpoint.")
    return tr("Fine-tuning failed: {message}").format(message=outcome.errorMessage)


def resegmentFinishedText(outcome: Any, tr: Callable[[str], str] = _identity) -> str:
    return tr("New segmentation '{name}': {volumes}").format(name=outcome.segmentationNode.GetName(), volumes=volumesText(outcome.volumesMl))


def rankingTableRows(candidates: Sequence[Any], tr: Callable[[str], str] = _identity) -> list[tuple[list[str], None]]:
    """``(cells, None)`` rows of the candidates table: name and mean entropy (or why it failed)."""
    return [
        (
            [c.name, f"{c.meanEntropy:.4f}" if c.meanEntropy is not None else tr("failed: {message}").format(message=c.errorMessage)],
            None,
        )
        for c in candidates
    ]


def resumeRunNames(runs: Sequence[Any]) -> list[str]:
    """The names the Resume question lists, one per stopped run: ``<model id> (<training set>)``."""
    return [f"{o.modelId} ({o.dataset})" for o in runs]


def chooseResumeRun(runs: Sequence[Any], ask: Callable[[list[str]], str | None]) -> Any:
    """The stopped run to resume: the only one, or the one picked by ``ask(names)`` (a dialog listing
    :func:`resumeRunNames`; None or "" when cancelled) when there are several. None when there is none or the user cancelled."""
    if not runs:
        return None
    names = resumeRunNames(runs)
    choice = names[0]
    if len(runs) > 1:
        choice = ask(names)
        if not choice:
            return None
    return runs[names.index(choice)]
