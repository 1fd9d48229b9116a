"""What the RepUX Segment panel shows and allows (RepUXSegmentLib.panel) and the table/state helpers both widgets use
(RepUXSegmentLib.widgethelpers): headless, no Qt."""

from __future__ import annotations

from types import SimpleNamespace

from RepUXSegmentLib.panel import (
    applyButtonStates,
    batchFinishedText,
    defaultModelId,
    dependenciesText,
    failedVolumesText,
    modelButtonStates,
    modelInfoText,
    modelTableRows,
    officialLabels,
    officialLabelSetChoices,
    progressText,
    segmentationDoneText,
    volumesText,
)
from RepUXSegmentLib.widgethelpers import fillTable, logLine, selectedRow, setWidgetStates
from widget_fakes import FakeUi


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
