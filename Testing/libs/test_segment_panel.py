"""What the RepUX Segment panel shows and allows (RepUXSegmentLib.panel) and the table/state helpers both widgets use
(RepUXSegmentLib.widgethelpers): headless, no Qt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trainer_fixtures
from RepUXSegmentLib.models import suggestModelId
from RepUXSegmentLib.panel import (
    applyButtonStates,
    askOfficialImport,
    batchFinishedText,
    ctVolumes,
    defaultModelId,
    dependenciesText,
    downloadQuestion,
    failedVolumesText,
    installationCheckResult,
    modelButtonStates,
    modelInfoText,
    modelTableRows,
    officialLabels,
    officialLabelSetChoices,
    parseUncheckedOrgans,
    progressText,
    segmentationDoneText,
    segmentationResult,
    storeCommandResult,
    taskStates,
    uncheckedOrgansText,
    volumeChecklistRows,
    volumesText,
)
from RepUXSegmentLib.widgethelpers import fillChecklist, fillTable, logLine, selectedRow, setWidgetStates
from widget_fakes import FakeUi

trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture
slicerApp = trainer_fixtures.slicerApp  # pytest fixture


def model(id, status="installed", labels=("liver", "spleen"), sizeMB=12.34, **kw):
    fields = {
        "id": id,
        "version": "1.0",
        "status": status,
        "labels": list(labels),
        "sizeMB": sizeMB,
        "description": "",
        "path": "",
        "source": "",
        "installed": status != "downloadable",
    }
    fields.update(kw)
    return SimpleNamespace(**fields)


def test_apply_buttons_name_what_is_missing():
    ready = applyButtonStates(True, "repux-amos", None, 2)
    assert ready == {
        "applyButton": {"enabled": True, "toolTip": "Segment the organs of the input volume."},
        "batchApplyButton": {"enabled": True, "toolTip": "Segment every checked volume."},
    }
    nothing = applyButtonStates(False, "", None, 0)
    assert not nothing["applyButton"]["enabled"]
    assert nothing["applyButton"]["toolTip"] == "Select an input volume.\nSelect a model (or import one in the Models section)."
    # the batch does not need the single input volume, but checked volumes
    assert nothing["batchApplyButton"]["toolTip"] == "Select a model (or import one in the Models section).\nCheck at least one volume."
    noOrgan = applyButtonStates(True, "repux-amos", (), 1)
    assert not noOrgan["applyButton"]["enabled"] and noOrgan["applyButton"]["toolTip"] == "Check at least one organ."
    assert not noOrgan["batchApplyButton"]["enabled"]
    assert applyButtonStates(True, "repux-amos", ("liver",), 0)["applyButton"]["enabled"]
    translated = applyButtonStates(False, "m", None, 1, tr=str.upper)
    assert translated["applyButton"]["toolTip"] == "SELECT AN INPUT VOLUME." and translated["batchApplyButton"]["enabled"]


def test_model_section():
    downloadable, installed, builtIn = model("a", "downloadable", sizeMB=80), model("b"), model("c", "built-in", description="demo")
    assert modelButtonStates(downloadable, idle=True)["downloadModelButton"] == {"enabled": True}
    assert modelButtonStates(downloadable, idle=False)["downloadModelButton"] == {"enabled": False}
    assert modelButtonStates(installed, idle=True)["deleteModelButton"] == {"enabled": True}
    assert not modelButtonStates(builtIn, idle=True)["deleteModelButton"]["enabled"]
    assert modelButtonStates(None, idle=False)["importModelButton"] == {"enabled": False}
    rows = modelTableRows([downloadable, builtIn, model("d", "official", path="/x")])
    assert rows[0] == (["a", "1.0", "downloadable", "80.0", "liver, spleen"], "a")
    assert rows[1][1] == "demo" and rows[2][0][2] == "official: import" and rows[2][1] == "/x"
    assert modelInfoText(None) == ""
    assert modelInfoText(downloadable) == "2 organs: liver, spleen\nDownloaded (80 MB) when you press Apply."
    assert (
        modelInfoText(model("o", "official", labels=(), source="https://x"))
        == "\nOfficial checkpoint: get it from https://x, then use Import official checkpoint..."
    )
    assert defaultModelId([downloadable, installed]) == "b" and defaultModelId([downloadable]) == "a" and defaultModelId([]) is None


def test_status_texts():
    assert progressText("infer", "window 3/8", 12.4) == "Segmenting: window 3/8 (about 12 s left)"
    assert progressText("custom", "", None) == "custom"
    assert progressText("load", "", 0, tr=str.upper) == "LOADING"
    assert volumesText({"liver": 1520.4, "spleen": 210.6}) == "liver 1520 mL, spleen 211 mL"
    assert segmentationDoneText(SimpleNamespace(seconds=41.6, volumesMl={"liver": 1.0})) == "Done in 42 s: liver 1 mL"
    volume = lambda name: SimpleNamespace(GetName=lambda: name)
    cases = [
        SimpleNamespace(volumeNode=volume("CT 1"), status="done", errorMessage=""),
        SimpleNamespace(volumeNode=volume("CT 2"), status="failed", errorMessage="bad"),
    ]
    outcome = SimpleNamespace(done=cases[:1], cases=cases, seconds=12.0, status="failed", errorMessage="1 of 2 failed")
    assert batchFinishedText(outcome) == "1 of 2 volumes segmented in 12 s (failed)."
    assert failedVolumesText(outcome) == "Some volumes could not be segmented:\nCT 2: bad"
    outcome.cases = cases[:1]
    assert failedVolumesText(outcome).endswith(":\n1 of 2 failed")
    assert dependenciesText("ok", []) == "PyTorch installed; other packages installed"
    assert dependenciesText("outdated", ["monai", "nibabel"]) == "PyTorch too old; missing: monai, nibabel"


def test_official_label_sets():
    choices = officialLabelSetChoices()
    assert len(choices) == 3
    assert officialLabels(choices, choices[0]) == "flare" and officialLabels(choices, choices[1]) == "amos"
    assert officialLabels(choices, choices[2]) is None  # a JSON file: asked next


class Item:
    def __init__(self, text):
        self.text, self.toolTip = text, None

    def setToolTip(self, text):
        self.toolTip = text


def test_widget_state_and_table_helpers():
    ui = FakeUi()
    setWidgetStates(ui, {"applyButton": {"enabled": False, "toolTip": "why"}, "statusLabel": {"text": "x"}})
    assert ui.applyButton.enabled is False and ui.applyButton.toolTip == "why" and ui.statusLabel.text == "x"

    table = FakeUi().table
    fillTable(table, [(["a", "b"], "tip"), (["c", "d"], None)], Item)
    assert table.called("setRowCount") == [("setRowCount", (2,), {})] and table.called("resizeColumnsToContents")
    items = {(c[1][0], c[1][1]): c[1][2] for c in table.called("setItem")}
    assert items[(0, 1)].text == "b" and items[(0, 1)].toolTip == "tip" and items[(1, 0)].text == "c" and items[(1, 0)].toolTip is None

    index = lambda row: SimpleNamespace(row=lambda: row)
    assert selectedRow(SimpleNamespace(selectedIndexes=lambda: [index(2), index(2)])) == 2  # one row, several cells
    assert selectedRow(SimpleNamespace(selectedIndexes=lambda: [index(1), index(2)])) is None
    assert selectedRow(SimpleNamespace(selectedIndexes=list)) is None
    assert logLine("INFO", "hello") == "hello" and logLine("WARNING", "careful") == "WARNING: careful"


def test_background_task_texts():
    states = taskStates("Downloading m")
    assert states["applyButton"] == {"text": "Cancel", "enabled": True, "toolTip": "Stop the running task."}
    assert states["inputsCollapsibleButton"] == {"enabled": False} and states["batchApplyButton"] == {"enabled": False}
    assert states["progressBar"] == {"value": 0} and states["statusLabel"] == {"text": "Downloading m"}
    assert downloadQuestion(model("repux-amos", "downloadable", sizeMB=95.6)).startswith("Model 'repux-amos' is not installed yet. Download it now (96 MB)?")
    runner = lambda **kw: SimpleNamespace(**{"succeeded": False, "cancelled": False, "errorMessage": "", "stdoutLines": [], **kw})
    assert storeCommandResult(runner(succeeded=True), "Importing") == (100, "Importing: done.", None)
    assert storeCommandResult(runner(cancelled=True), "Importing") == (0, "Importing: cancelled.", None)
    assert storeCommandResult(runner(errorMessage="bad zip"), "Importing") == (None, "Importing: failed.", "Importing failed:\nbad zip")
    assert installationCheckResult(runner(succeeded=True)) == ("Installation check: OK.", None)
    assert installationCheckResult(runner(cancelled=True))[1] is None
    lines = [f"line {i}" for i in range(10)]
    status, problems = installationCheckResult(runner(stdoutLines=lines))
    assert status == "Installation check: problems found (see the log)." and problems == "The installation check found problems:\n\n" + "\n".join(lines[-8:])
    assert installationCheckResult(runner(errorMessage="no python"))[1].endswith("\n\nno python")


@pytest.mark.slicer
def test_the_segment_widget_applies_the_task_and_store_results(trainerModuleFile, slicerApp, monkeypatch):
    """_setTask/_startStoreCommand go through taskStates/storeCommandResult: a failed import shows one message, the store is re-listed."""
    import sys

    from test_module_runtime import widgetWithoutSetup
    from widget_fakes import FakeWidget

    shown = []
    monkeypatch.setattr(slicerApp.slicer.util, "errorDisplay", lambda text, **kwargs: shown.append((text, kwargs)))
    finished = []
    runner = SimpleNamespace(succeeded=False, cancelled=False, errorMessage="not a model", stderrTail=["Traceback", "ValueError"])
    logic = SimpleNamespace(startRepuxCommand=lambda arguments, onProgress=None, onLog=None, onFinished=None: finished.append(onFinished) or runner)
    widget = widgetWithoutSetup(sys.modules["RepUXSegment"], logic=logic, _pollTimer=FakeWidget("timer"), _parameterNode=None)
    refreshed = []
    widget.refreshModels = lambda: refreshed.append(1)

    widget._startStoreCommand(["import", "x.zip"], "Importing the model")
    assert widget._task is runner and widget.ui.applyButton.text == "Cancel" and widget.ui.inputsCollapsibleButton.enabled is False
    assert widget.ui.statusLabel.text == "Importing the model" and widget._pollTimer.called("start")
    assert widget.ui.logTextEdit.called("appendPlainText") == [("appendPlainText", ("Importing the model",), {})]

    finished[0](runner)
    assert widget._task is None and widget.ui.applyButton.text == "Apply" and refreshed == [1]
    assert widget.ui.statusLabel.text == "Importing the model: failed."
    assert shown == [("Importing the model failed:\nnot a model", {"detailedText": "Traceback\nValueError"})]


class Questions:
    """The dialogs of askOfficialImport, answered from a script (None: cancelled); records what was asked."""

    def __init__(self, files=(), choice=None, modelId=None):
        self.files, self.choice, self.modelId, self.asked = list(files), choice, modelId, []

    def openFile(self, title, fileFilter):
        self.asked.append(("file", fileFilter))
        return self.files.pop(0) if self.files else ""

    def choose(self, title, label, items):
        self.asked.append(("choose", tuple(items)))
        return items[self.choice] if self.choice is not None else None

    def text(self, title, label, text):
        self.asked.append(("text", text))
        return self.modelId(text) if self.modelId else None


def test_official_checkpoint_import_questions():
    known = Questions(["/ckpt/best_metric_model.pth"], choice=1, modelId=lambda suggested: suggested)
    checkpoint, labels, modelId = askOfficialImport(known)
    assert checkpoint == "/ckpt/best_metric_model.pth" and labels == "amos" and modelId == suggestModelId("/ckpt/best_metric_model.pth", "amos")
    assert [a[0] for a in known.asked] == ["file", "choose", "text"] and known.asked[0][1] == "PyTorch checkpoint (*.pth *.pt)"

    json = Questions(["/ckpt/m.pth", "/ckpt/labels.json"], choice=2, modelId=lambda suggested: "my-model")
    assert askOfficialImport(json) == ("/ckpt/m.pth", "/ckpt/labels.json", "my-model")
    assert json.asked[2] == ("file", "Label list (*.json)")

    assert askOfficialImport(Questions()) is None  # no checkpoint chosen: nothing else is asked
    noLabelSet = Questions(["/ckpt/m.pth"])
    assert askOfficialImport(noLabelSet) is None and len(noLabelSet.asked) == 2
    assert askOfficialImport(Questions(["/ckpt/m.pth"], choice=2)) is None  # the JSON file dialog cancelled
    assert askOfficialImport(Questions(["/ckpt/m.pth"], choice=0, modelId=lambda suggested: "")) is None  # empty model id


class Node:
    def __init__(self, id, name, labelmap=False):
        self.id, self.name, self.labelmap = id, name, labelmap

    def GetID(self):
        return self.id

    def GetName(self):
        return self.name

    def IsA(self, className):
        return className == "vtkMRMLScalarVolumeNode" or (self.labelmap and className == "vtkMRMLLabelMapVolumeNode")

    def GetImageData(self):
        return None


def test_volume_and_organ_checklists():
    ct1, labels, ct2 = Node("v1", "CT 1"), Node("v2", "CT 1 labels", labelmap=True), Node("v3", "CT 2")
    assert ctVolumes([labels, ct1, ct2]) == [ct1, ct2] and ctVolumes([labels]) == []
    assert volumeChecklistRows([ct1, labels, ct2], unchecked={"v3"}) == [("CT 1", "v1", True), ("CT 2", "v3", False)]
    assert parseUncheckedOrgans("") == [] and parseUncheckedOrgans("liver,,spleen") == ["liver", "spleen"]
    assert uncheckedOrgansText([("liver", "liver", True), ("spleen", "spleen", False), ("pancreas", None, False)]) == "spleen,pancreas"
    assert uncheckedOrgansText([("liver", "liver", True)]) == ""

    listWidget = FakeUi().organsListWidget
    fillChecklist(listWidget, [("liver", "liver", True), ("spleen", "spleen", False)], lambda text, data, checked: (text, data, checked))
    assert listWidget.calls == [("clear", (), {}), ("addItem", (("liver", "liver", True),), {}), ("addItem", (("spleen", "spleen", False),), {})]


def test_segmentation_result():
    done = SimpleNamespace(succeeded=True, status="succeeded", seconds=3.0, volumesMl={"liver": 2.0}, warnings=["thin volume", "3 slices"], errorMessage="")
    assert segmentationResult(done) == {"progress": 100, "status": "Done in 3 s: liver 2 mL", "warning": "Warning: thin volume 3 slices", "error": None}
    done.warnings = []
    assert segmentationResult(done)["warning"] is None
    cancelled = SimpleNamespace(succeeded=False, status="cancelled", errorMessage="")
    assert segmentationResult(cancelled) == {"progress": 0, "status": "Cancelled.", "warning": None, "error": None}
    failed = SimpleNamespace(succeeded=False, status="failed", errorMessage="CUDA out of memory")
    assert segmentationResult(failed) == {
        "progress": 0,
        "status": "Failed: CUDA out of memory",
        "warning": None,
        "error": "Segmentation failed:\nCUDA out of memory",
    }
