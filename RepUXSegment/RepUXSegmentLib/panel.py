"""What the RepUX Segment panel shows and allows, without Qt (the module file only applies it to the widgets).

Each function takes the state it decides on (the parameter node's values, the model list, an outcome...)
and the translation function ``tr`` (``slicer.i18n.tr`` in Slicer), and returns texts, table rows or
``{widget name: {attribute: value}}`` states for :func:`RepUXSegmentLib.widgethelpers.setWidgetStates`:

* :func:`applyButtonStates` - the Apply and batch Apply buttons (enabled, tooltip listing what is missing);
* :func:`modelButtonStates` / :func:`modelTableRows` / :func:`modelInfoText` / :func:`defaultModelId` - the Models section;
* :func:`progressText` / :func:`segmentationResult` / :func:`segmentationDoneText` / :func:`batchFinishedText` / :func:`failedVolumesText` - the status line;
* :func:`ctVolumes` / :func:`volumeChecklistRows` / :func:`parseUncheckedOrgans` / :func:`uncheckedOrgansText` - the input
  volume and the two checklists (organs, volumes of the batch);
* :func:`dependenciesText` - the Python packages line;
* :func:`taskStates` / :func:`storeCommandResult` / :func:`installationCheckResult` / :func:`downloadQuestion` - background tasks;
* :func:`askOfficialImport` (with :func:`officialLabelSetChoices` / :func:`officialLabels`) - the questions of
  *Import official checkpoint*, asked through callbacks (the module file supplies the Qt dialogs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .models import LABEL_SET_CHOICES, suggestModelId

__all__ = [
    "applyButtonStates",
    "askOfficialImport",
    "batchFinishedText",
    "ctVolumes",
    "defaultModelId",
    "dependenciesText",
    "downloadQuestion",
    "failedVolumesText",
    "installationCheckResult",
    "isCTVolume",
    "modelButtonStates",
    "modelInfoText",
    "modelTableRows",
    "officialLabelSetChoices",
    "officialLabels",
    "parseUncheckedOrgans",
    "progressText",
    "segmentationDoneText",
    "segmentationResult",
    "storeCommandResult",
    "taskStates",
    "uncheckedOrgansText",
    "volumeChecklistRows",
    "volumesText",
]


def _identity(text: str) -> str:
    return text


def applyButtonStates(hasVolume: bool, model: str, organsChosen: Any, batchVolumeCount: int, tr: Callable[[str], str] = _identity) -> dict[str, dict[str, Any]]:
    """The Apply and batch Apply buttons: enabled when nothing is missing, else the tooltip lists what is.

    ``organsChosen`` is :func:`~RepUXSegmentLib.widgethelpers.chosenOrgans` of the checklist (``()``: none checked).
    """
    noVolume = tr("Select an input volume.")
    problems = []
    if not hasVolume:
        problems.append(noVolume)
    if not model:
        problems.append(tr("Select a model (or import one in the Models section)."))
    elif organsChosen == ():
        problems.append(tr("Check at least one organ."))
    batchProblems = [m for m in problems if m != noVolume]
    if not batchVolumeCount:
        batchProblems.append(tr("Check at least one volume."))
    return {
        "applyButton": {"enabled": not problems, "toolTip": "\n".join(problems) if problems else tr("Segment the organs of the input volume.")},
        "batchApplyButton": {"enabled": not batchProblems, "toolTip": "\n".join(batchProblems) if batchProblems else tr("Segment every checked volume.")},
    }


def modelButtonStates(selected: Any, idle: bool) -> dict[str, dict[str, Any]]:
    """The Models section's buttons: download a downloadable model, delete an installed one, import when no task runs."""
    return {
        "downloadModelButton": {"enabled": idle and selected is not None and selected.status == "downloadable"},
        "deleteModelButton": {"enabled": idle and selected is not None and selected.status == "installed"},
        "importModelButton": {"enabled": idle},
        "importOfficialButton": {"enabled": idle},
    }


def modelTableRows(models: Sequence[Any], tr: Callable[[str], str] = _identity) -> list[tuple[list[str], str]]:
    """``(cells, tooltip)`` rows of the models table: id, version, status, size (MB), organs."""
    statusText = {"built-in": tr("built-in"), "installed": tr("installed"), "downloadable": tr("downloadable"), "official": tr("official: import")}
    return [([m.id, m.version, statusText.get(m.status, m.status), f"{m.sizeMB:.1f}", ", ".join(m.labels)], m.description or m.path or m.id) for m in models]


def modelInfoText(info: Any, tr: Callable[[str], str] = _identity) -> str:
    """The line under the model combo box: the organs, and how a downloadable or official model is obtained."""
    if info is None:
        return ""
    text = tr("{count} organs: {organs}").format(count=len(info.labels), organs=", ".join(info.labels)) if info.labels else ""
    if info.status == "downloadable":
        text += "\n" + tr("Downloaded ({size:.0f} MB) when you press Apply.").format(size=info.sizeMB)
    elif info.status == "official":
        text += "\n" + tr("Official checkpoint: get it from {source}, then use Import official checkpoint...").format(source=info.source)
    return text


def defaultModelId(models: Sequence[Any]) -> str | None:
    """The model chosen when none is: the first installed one, else the first listed (None when the list is empty)."""
    if not models:
        return None
    installed = [m for m in models if m.installed]
    return (installed or models)[0].id


def progressText(stage: str, message: str, etaSeconds: float | None, tr: Callable[[str], str] = _identity) -> str:
    """The status line of a running task: the stage's name, its message and the time left."""
    stages = {
        "load": tr("Loading"),
        "preprocess": tr("Preprocessing"),
        "infer": tr("Segmenting"),
        "postprocess": tr("Post-processing"),
        "write": tr("Writing"),
        "done": tr("Finishing"),
        "import": tr("Importing the segments"),
        "download": tr("Downloading"),
        "case": tr("Volume finished"),
    }
    text = stages.get(stage, stage)
    if message:
        text += ": " + message
    if etaSeconds:
        text += " " + tr("(about {seconds:.0f} s left)").format(seconds=etaSeconds)
    return text


def volumesText(volumesMl: Mapping[str, float]) -> str:
    """``liver 1520 mL, spleen 210 mL`` (the organ volumes of a segmentation)."""
    return ", ".join(f"{name} {ml:.0f} mL" for name, ml in volumesMl.items())


def segmentationDoneText(outcome: Any, tr: Callable[[str], str] = _identity) -> str:
    return tr("Done in {seconds:.0f} s: {volumes}").format(seconds=outcome.seconds, volumes=volumesText(outcome.volumesMl))


def segmentationResult(outcome: Any, tr: Callable[[str], str] = _identity) -> dict[str, Any]:
    """What the panel shows when a segmentation ends: ``progress`` (the bar), ``status`` (the line), ``warning`` (the
    warning label, None: hidden) and ``error`` (the message to show, None: nothing to show)."""
    if outcome.succeeded:
        warning = tr("Warning: {warnings}").format(warnings=" ".join(outcome.warnings)) if outcome.warnings else None
        return {"progress": 100, "status": segmentationDoneText(outcome, tr), "warning": warning, "error": None}
    if outcome.status == "cancelled":
        return {"progress": 0, "status": tr("Cancelled."), "warning": None, "error": None}
    error = tr("Segmentation failed:\n{message}").format(message=outcome.errorMessage)
    return {"progress": 0, "status": tr("Failed: {message}").format(message=outcome.errorMessage), "warning": None, "error": error}


def batchFinishedText(outcome: Any, tr: Callable[[str], str] = _identity) -> str:
    return tr("{done} of {count} volumes segmented in {seconds:.0f} s ({status}).").format(
        done=len(outcome.done), count=len(outcome.cases), seconds=outcome.seconds, status=outcome.status
    )


def failedVolumesText(outcome: Any, tr: Callable[[str], str] = _identity) -> str:
    """The message of a batch with failures: each failed volume with its error (the batch's error when none is named)."""
    failed = "\n".join(f"{c.volumeNode.GetName()}: {c.errorMessage}" for c in outcome.cases if c.status == "failed")
    return tr("Some volumes could not be segmented:\n{failed}").format(failed=failed or outcome.errorMessage)


def dependenciesText(torch: str, missing: Sequence[str], tr: Callable[[str], str] = _identity) -> str:
    """``PyTorch installed; other packages installed`` from :func:`~RepUXSegmentLib.dependencies.torchStatus` and the missing packages."""
    torchText = {"ok": tr("PyTorch installed"), "outdated": tr("PyTorch too old"), "missing": tr("PyTorch missing")}[torch]
    others = tr("other packages installed") if not missing else tr("missing: {packages}").format(packages=", ".join(missing))
    return f"{torchText}; {others}"


def officialLabelSetChoices(tr: Callable[[str], str] = _identity) -> list[str]:
    """The answers to "which label set was the checkpoint trained with": the known sets (``LABEL_SET_CHOICES``), then a JSON file."""
    return [tr("FLARE: liver, kidney, spleen, pancreas"), tr("AMOS: 15 abdominal organs"), tr("Label list from a JSON file...")]


def officialLabels(choices: Sequence[str], choice: str) -> str | None:
    """The ``--labels`` value of the chosen answer; None for "a JSON file" (the user picks the file next)."""
    index = list(choices).index(choice)
    return LABEL_SET_CHOICES[index] if index < len(LABEL_SET_CHOICES) else None


def taskStates(title: str, tr: Callable[[str], str] = _identity) -> dict[str, dict[str, Any]]:
    """While a background task runs: Apply turns into Cancel, the inputs and the batch Apply are locked, the status names the task."""
    return {
        "applyButton": {"text": tr("Cancel"), "enabled": True, "toolTip": tr("Stop the running task.")},
        "inputsCollapsibleButton": {"enabled": False},
        "batchApplyButton": {"enabled": False},
        "progressBar": {"value": 0},
        "statusLabel": {"text": title},
    }


def downloadQuestion(info: Any, tr: Callable[[str], str] = _identity) -> str:
    """What Apply asks before downloading a model that is not installed yet."""
    question = tr("Model '{model}' is not installed yet. Download it now ({size:.0f} MB)? The download is checked against its published sha256.")
    return question.format(model=info.id, size=info.sizeMB)


def storeCommandResult(runner: Any, title: str, tr: Callable[[str], str] = _identity) -> tuple[int | None, str, str | None]:
    """``(progress, status, error)`` when a model-store command (download, import, convert) ends: the progress bar value
    (None: unchanged), the status line and the message to show (None when there is nothing to show)."""
    if runner.succeeded:
        return 100, tr("{task}: done.").format(task=title), None
    if runner.cancelled:
        return 0, tr("{task}: cancelled.").format(task=title), None
    return None, tr("{task}: failed.").format(task=title), tr("{task} failed:\n{message}").format(task=title, message=runner.errorMessage)


def installationCheckResult(runner: Any, tr: Callable[[str], str] = _identity) -> tuple[str, str | None]:
    """``(status, problems)`` of ``repux doctor``: the status line and the report's end to show (None: nothing to show)."""
    status = tr("Installation check: OK.") if runner.succeeded else tr("Installation check: problems found (see the log).")
    if runner.succeeded or runner.cancelled:
        return status, None
    return status, tr("The installation check found problems:\n\n{report}").format(report="\n".join(runner.stdoutLines[-8:]) or runner.errorMessage)


def askOfficialImport(ask: Any, tr: Callable[[str], str] = _identity) -> tuple[str, str, str] | None:
    """The questions of *Import official checkpoint...* in order: the checkpoint file, the label set it was trained with
    (a known one or a JSON label list), the model id (a suggestion to edit).

    ``ask`` supplies the dialogs, each returning None or "" when cancelled: ``openFile(title, fileFilter)``,
    ``choose(title, label, items)`` and ``text(title, label, text)``. Returns ``(checkpoint, labels, modelId)``
    (the arguments of ``repux convert-official``), or None as soon as a question is cancelled.
    """
    title = tr("Import an official RepUX-Net checkpoint")
    checkpoint = ask.openFile(title, tr("PyTorch checkpoint (*.pth *.pt)"))
    if not checkpoint:
        return None
    choices = officialLabelSetChoices(tr)
    choice = ask.choose(title, tr("Label set the checkpoint was trained with:"), choices)
    if choice is None:
        return None
    labels = officialLabels(choices, choice)
    if labels is None:
        labels = ask.openFile(title, tr("Label list (*.json)"))
        if not labels:
            return None
    modelId = ask.text(title, tr("Model id in the model store:"), suggestModelId(checkpoint, labels))
    if not modelId:
        return None
    return checkpoint, labels, modelId


#: subclasses of vtkMRMLScalarVolumeNode that are not CT volumes (label maps; RGB, vector, streaming, tensor, diffusion volumes)
NOT_CT_VOLUME_CLASSES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")


def isCTVolume(node: Any) -> bool:
    """A volume that can be segmented: a scalar volume node that is not a label map, vector (RGB), tensor or diffusion
    volume (those subclass ``vtkMRMLScalarVolumeNode``), with one component per voxel when it has voxels."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or any(node.IsA(c) for c in NOT_CT_VOLUME_CLASSES):
        return False
    image = node.GetImageData()
    return image is None or image.GetNumberOfScalarComponents() == 1


def ctVolumes(nodes: Sequence[Any]) -> list[Any]:
    """The volumes that can be segmented (:func:`isCTVolume`), in the given order."""
    return [node for node in nodes if isCTVolume(node)]


def volumeChecklistRows(nodes: Sequence[Any], unchecked: Any = ()) -> list[tuple[str, str, bool]]:
    """``(name, node id, checked)`` rows of the batch's volume checklist: every CT volume, checked unless its id is in ``unchecked``."""
    return [(node.GetName(), node.GetID(), node.GetID() not in unchecked) for node in ctVolumes(nodes)]


def parseUncheckedOrgans(text: str) -> list[str]:
    """The organs left out of the organ checklist, from the parameter node's comma-separated ``uncheckedOrgans``."""
    return [o for o in text.split(",") if o]


def uncheckedOrgansText(rows: Sequence[tuple[str, Any, bool]]) -> str:
    """The parameter node's ``uncheckedOrgans`` from the ``(organ, data, checked)`` rows of the organ checklist."""
    return ",".join(text for text, _data, checked in rows if not checked)
