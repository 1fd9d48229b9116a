"""What both module widgets share (RepUXSegmentLib.widgethelpers), the organ choice of RepUX Segment, the shared MRML
helpers (MRMLContext.headless, the organ numbering of --organs) and the model list with the official checkpoints."""

from __future__ import annotations

import datetime
import logging

import pytest
from RepUXSegmentLib.models import DeviceChoice, ModelInfo, doctorArguments, listModels, sanitizeModelId, suggestModelId
from RepUXSegmentLib.widgethelpers import (
    IMPORT_MODEL_ITEM,
    IMPORT_OFFICIAL_ITEM,
    chosenOrgans,
    deviceChoices,
    fillCombo,
    modelChoices,
    organItems,
    reportErrors,
    selectComboData,
)


class Combo:
    """A combo box: (text, data) rows, separators, current index (what the helpers use of QComboBox)."""

    def __init__(self):
        self.rows, self.currentIndex = [], -1

    @property
    def count(self):
        return len(self.rows)

    def clear(self):
        self.rows, self.currentIndex = [], -1

    def addItem(self, text, data):
        self.rows.append((text, data))

    def insertItem(self, index, text, data):
        self.rows.insert(index, (text, data))

    def insertSeparator(self, index):
        self.rows.insert(index, None)

    def itemData(self, index):
        return self.rows[index][1]

    def findData(self, data):
        return next((i for i, r in enumerate(self.rows) if r is not None and r[1] == data), -1)


def test_report_errors_shows_one_message_and_never_reraises(caplog):
    shown = []
    with caplog.at_level(logging.ERROR), reportErrors("Could not open it.", lambda text, **kw: shown.append((text, kw))) as failed:
        raise ValueError("broken manifest")
    assert failed and isinstance(failed.error, ValueError)
    assert shown == [("Could not open it.\n\nbroken manifest", {"detailedText": shown[0][1]["detailedText"]})]
    assert "Traceback" in shown[0][1]["detailedText"] and "broken manifest" in caplog.text
    with reportErrors("x", lambda *a, **k: 1 / 0) as failed:  # a failing display does not escape either
        raise RuntimeError("boom")
    assert failed.message == "x\n\nboom"
    with reportErrors("unused") as ok:
        pass
    assert not ok and ok.error is None


def test_device_list_names_the_gpu_auto_picks_and_its_memory():
    assert deviceChoices([], detected=False) == [("Auto (GPU when available)", "auto"), ("CPU", "cpu")]
    assert deviceChoices([DeviceChoice("cpu", "EPYC")], detected=True)[0] == ("Auto (no GPU found: CPU)", "auto")
    devices = [DeviceChoice("cpu"), DeviceChoice("cuda:0", "H200", 139.8), DeviceChoice("cuda:1", "A100", None), DeviceChoice("mps", "Apple GPU")]
    assert deviceChoices(devices, detected=True) == [
        ("Auto (H200)", "auto"),
        ("CPU", "cpu"),
        ("GPU 0: H200 (140 GB)", "cuda:0"),
        ("GPU 1: A100", "cuda:1"),
        ("Apple GPU (MPS)", "mps"),
    ]


def test_combo_selection_and_filling():
    combo = Combo()
    fillCombo(combo, [("Auto", "auto"), None, ("CPU", "cpu")], selected="cpu")
    assert combo.rows[1] is None and combo.currentIndex == 2
    selectComboData(combo, "/models/folder")  # set from a script: shown as it is
    assert combo.rows[0] == ("/models/folder", "/models/folder") and combo.currentIndex == 0
    selectComboData(combo, "")
    assert combo.currentIndex == -1


def test_model_list_offers_official_checkpoints_as_an_import(_isolated_store):
    models = listModels()
    statuses = {m.id: m.status for m in models}
    assert statuses["repux-tiny-phantom"] == "built-in"
    official = {m.id: m for m in models if m.status == "official"}
    assert set(official) == {"repuxnet-flare-official", "repuxnet-amos-official"}
    flare, amos = official["repuxnet-flare-official"], official["repuxnet-amos-official"]
    assert flare.labels == ("liver", "kidney", "spleen", "pancreas") and len(amos.labels) == 15 and not flare.installed
    assert flare.source == "https://github.com/MASILab/RepUX-Net" and "convert-official" in flare.description
    items = modelChoices(models)
    assert ("RepUX-Net FLARE (official checkpoint) official (official checkpoint: import it first)", IMPORT_OFFICIAL_ITEM) in items
    assert items[-3:] == [None, ("Import model...", IMPORT_MODEL_ITEM), ("Import official RepUX-Net checkpoint...", IMPORT_OFFICIAL_ITEM)]
    downloadable = ModelInfo("big", "2.0", "downloadable", 250.4, ("liver",), name="Big")
    assert modelChoices([downloadable], importActions=False) == [("Big 2.0 (download, 250 MB)", "big")]


def test_organ_checklist_and_the_organs_option():
    from RepUXSegmentLib.mrml import SegmentSpec
    from RepUXSegmentLib.segmentation import SegmentationOptions

    items = organItems(["liver", "kidney", "spleen"], unchecked=["Kidney"])
    assert items == [("liver", True), ("kidney", False), ("spleen", True)]
    assert chosenOrgans(organItems(["liver", "kidney"])) is None  # all: no --organs (the engine's default)
    assert chosenOrgans(items) == ("liver", "spleen") and chosenOrgans([("liver", False)]) == ()

    options = SegmentationOptions(model="m", organs=("liver", "spleen"))
    options.validate()
    args = options.commandArguments("in.nrrd", "out.nrrd")
    assert args[args.index("--organs") + 1] == "liver,spleen" and "--organs" not in SegmentationOptions(model="m").commandArguments("i", "o")
    specs = [SegmentSpec(1, "liver"), SegmentSpec(2, "kidney"), SegmentSpec(3, "spleen")]
    assert [s.name for s in options.selectSpecs(specs)] == ["liver", "spleen"]
    with pytest.raises(ValueError, match="no organ 'lung'; its organs are: liver, kidney, spleen"):
        SegmentationOptions(model="m", organs=("lung",)).selectSpecs(specs)
    for bad, message in ((("",), "non-empty"), (("a,b",), "without commas"), ((), "no organ selected")):
        with pytest.raises(ValueError, match=message):
            SegmentationOptions(model="m", organs=bad).validate()


def test_chosen_organs_are_numbered_as_the_engine_writes_them():
    """`repux segment --organs` writes the chosen organs as 1..k in the model's order: the specs follow that numbering."""
    from RepUXSegmentLib.mrml import SegmentSpec
    from RepUXSegmentLib.segmentation import SegmentationOptions, renumberedSpecs

    specs = [SegmentSpec(3, "spleen", (0.1, 0.2, 0.3)), SegmentSpec(1, "liver"), SegmentSpec(2, "kidney")]
    kept = renumberedSpecs(specs, {3, 1})
    assert [(s.value, s.name) for s in kept] == [(1, "liver"), (2, "spleen")] and kept[1].color == (0.1, 0.2, 0.3)
    chosen = SegmentationOptions(model="m", organs=("Spleen", "liver")).selectSpecs(specs)
    assert [(s.value, s.name) for s in chosen] == [(1, "liver"), (2, "spleen")]
    assert SegmentationOptions(model="m").selectSpecs(specs) == specs  # all organs: the model's own values


def test_headless_context_has_a_scene_and_the_logics(slicerCore, tmp_path):
    from RepUXSegmentLib.mrml import MRMLContext

    context = MRMLContext.headless(str(tmp_path))
    node = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    assert node is not None and context.segmentations().GetMRMLScene() is context.scene
    assert context.volumesLogic.GetMRMLScene() is context.scene and context.temporaryDirectory == str(tmp_path)


def test_one_model_id_sanitiser_and_suggestion(_isolated_store):
    assert sanitizeModelId("  My Model (v2)!! ") == "my-model-v2" and sanitizeModelId("...") == "model"
    assert suggestModelId("/c/best_metric_model.pth", "flare") == "repuxnet-flare-best-metric-model"
    now = datetime.datetime(2026, 1, 2, 3, 4)
    assert suggestModelId("/models/Liver Net", now=now) == "liver-net-ft-20260102-0304"
    assert suggestModelId("repux-amos", now=now, taken={"repux-amos-ft-20260102-0304"}) == "repux-amos-ft-20260102-0304-2"
    assert doctorArguments() == ["doctor", "--device", "auto"]


def test_the_module_files_share_one_copy_of_the_helpers():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for module in ("RepUXSegment", "RepUXTrainer"):
        source = (repo / module / f"{module}.py").read_text()
        assert (
            "def _selectComboData" not in source
            and "ProcessRunner(" not in source
            and 'tryWithErrorDisplay(_("Failed to open the training set."), waitCursor=True):\n                self.logic.openTrainingSet(folder)\n'
            not in source
        )
        # the module files stay wiring; 900 since the click-to-segment section (issue 18), to come down with issue 21
        assert len(source.splitlines()) < 900
