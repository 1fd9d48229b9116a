"""What the RepUX Trainer panel shows and allows (RepUXTrainerLib.panel): headless, no Qt; the widget's _updateButtons
applies it (checked with widget_fakes.FakeUi)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trainer_fixtures
from RepUXTrainerLib.mapping import LabelMapping, SegmentInfo, SegmentMapping
from RepUXTrainerLib.panel import (
    IGNORE_ITEM,
    NEW_CLASS_ITEM,
    applyMappingChoice,
    buttonStates,
    caseTableRows,
    chooseResumeRun,
    duration,
    finetuneFinishedText,
    finetuneProgressText,
    finetuneSettings,
    mappingRows,
    rankingTableRows,
    resegmentFinishedText,
    resultModelText,
    resumeRunNames,
    trainingSetInfoText,
)

trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture


class TrainingSet(list):
    def __init__(self, cases, names=("liver", "spleen"), warnings=()):
        super().__init__(cases)
        self.labels = SimpleNamespace(names=list(names))
        self._warnings = list(warnings)

    def warnings(self):
        return self._warnings


def logicState(job=None, ranking=None, trainingSet=None, plot=None, segmentationJobs=()):
    return SimpleNamespace(job=job, ranking=ranking, trainingSet=trainingSet, plot=plot, segmentationJobs=list(segmentationJobs))


def params(**kw):
    fields = {"inputVolume": "CT", "inputSegmentation": "seg", "baseModel": "repux-amos", "resultModel": ""}
    fields.update(kw)
    return SimpleNamespace(**fields)


def states(logic, p, **kw):
    args = {"hasCase": False, "hasMapping": True, "resumableRuns": (), "candidatesFromFolder": False, "hasCandidate": False}
    args.update(kw)
    return buttonStates(logic, p, **args)


def enabled(result):
    return {name for name, attributes in result.items() if attributes.get("enabled")}


def test_buttons_follow_the_training_set_and_the_jobs():
    assert enabled(states(logicState(), None)) == set()
    one = states(logicState(trainingSet=TrainingSet(["c1"])), params())
    assert enabled(one) == {"addCaseButton"}
    assert one["startButton"]["toolTip"] == "The training set needs at least 2 cases."
    assert one["addCaseButton"]["toolTip"] == "Write the volume and its segmentation as a new case."
    noMapping = states(logicState(trainingSet=TrainingSet(["c1"])), params(), hasMapping=False)
    assert noMapping["addCaseButton"] == {"enabled": False, "toolTip": "Open a training set and choose a volume and its segmentation."}

    two = states(logicState(trainingSet=TrainingSet(["c1", "c2"])), params(), hasCase=True)
    assert enabled(two) == {"addCaseButton", "startButton", "reviewCaseButton", "renameCaseButton", "removeCaseButton"}
    assert two["startButton"]["toolTip"] == "Start fine-tuning in the background."
    assert not states(logicState(trainingSet=TrainingSet(["c1", "c2"])), params(baseModel=""))["startButton"]["enabled"]

    running = SimpleNamespace(running=True, state="running", canResume=False)
    training = states(logicState(job=running, trainingSet=TrainingSet(["c1", "c2"]), plot="plot"), params(), hasCase=True)
    assert {"stopButton", "showChartButton", "reviewCaseButton"} <= enabled(training)
    assert not ({"startButton", "removeCaseButton", "resumeButton"} & enabled(training))
    running.state = "stopping"  # Stop was pressed: not twice
    assert not states(logicState(job=running), params())["stopButton"]["enabled"]

    stopped = SimpleNamespace(running=False, state="stopped", canResume=True)
    assert states(logicState(job=stopped), params())["resumeButton"]["enabled"]
    assert not states(logicState(job=SimpleNamespace(running=False, state="failed", canResume=False)), params(), resumableRuns=["run"])["resumeButton"][
        "enabled"
    ]
    assert states(logicState(), params(), resumableRuns=["earlier run"])["resumeButton"]["enabled"]  # stopped in an earlier session


def test_resegment_and_ranking_buttons():
    assert not states(logicState(), params())["resegmentButton"]["enabled"]
    assert states(logicState(), params(resultModel="ft"))["resegmentButton"]["enabled"]
    assert not states(logicState(segmentationJobs=["job"]), params(resultModel="ft"))["resegmentButton"]["enabled"]
    assert not states(logicState(), params(resultModel="ft", inputVolume=None))["resegmentButton"]["enabled"]
    assert states(logicState(), None, candidatesFromFolder=True)["candidateFolderPathLineEdit"] == {"enabled": True}
    ranking = SimpleNamespace(running=True)
    result = states(logicState(ranking=ranking), params(), hasCandidate=True)
    assert result["rankButton"] == {"text": "Cancel ranking"} and not result["showUncertaintyButton"]["enabled"]
    ranking.running = False
    result = states(logicState(ranking=ranking), params(), hasCandidate=True, tr=str.upper)
    assert result["rankButton"] == {"text": "RANK BY UNCERTAINTY"} and result["showUncertaintyButton"]["enabled"]


def test_training_set_texts():
    case = SimpleNamespace(id="case-1", name="CT 1", organs=["liver", "spleen"], addedDate="2026-11-29", sourceModel="", resampled="")
    resampled = SimpleNamespace(id="case-2", name="CT 2", organs=[], addedDate="d", sourceModel="repux-amos", resampled="nearest neighbour")
    assert caseTableRows([case, resampled]) == [
        (["CT 1", "liver, spleen", "2026-11-29", "(unknown)"], "case-1"),
        (["CT 2", "", "d", "repux-amos"], "Resampled onto the volume grid: nearest neighbour"),
    ]
    assert trainingSetInfoText(None) == "Choose a folder: an empty one for a new training set."
    assert trainingSetInfoText(TrainingSet([case], warnings=["only 1 case"])) == "1 cases; classes: liver, spleen\nNote: only 1 case"
    assert resultModelText("") == "No fine-tuned model yet." and "ft-1" in resultModelText("ft-1")
    assert resumeRunNames([SimpleNamespace(modelId="ft-1", dataset="/data/set")]) == ["ft-1 (/data/set)"]


def test_mapping_rows_and_choices():
    labels = SimpleNamespace(names=["liver", "spleen"])
    entry = lambda name, label, known, addAsNew=False, matchedBy="name": SimpleNamespace(
        segment=SimpleNamespace(name=name, id=name), label=label, known=known, addAsNew=addAsNew, matchedBy=matchedBy
    )
    rows = mappingRows([entry("Liver", "liver", True), entry("tumour", None, False), entry("cyst", None, False, addAsNew=True)], labels.names)
    assert rows[0] == {
        "segment": "Liver",
        "choices": [("(ignore)", IGNORE_ITEM), ("liver", "liver"), ("spleen", "spleen")],
        "current": "liver",
        "how": "name",
        "known": True,
    }
    assert rows[1]["choices"][-1] == ("(new class)", NEW_CLASS_ITEM) and rows[1]["current"] == IGNORE_ITEM and rows[1]["how"] == "unknown segment"
    assert rows[2]["current"] == NEW_CLASS_ITEM and not rows[2]["known"]

    mapping = LabelMapping([SegmentMapping(SegmentInfo("s1", "Liver"), "liver", "name", True), SegmentMapping(SegmentInfo("s2", "tumour"), None, "", False)])
    applyMappingChoice(mapping, 1, NEW_CLASS_ITEM)
    assert mapping.entries[1].addAsNew and mapping.entries[1].label is None
    applyMappingChoice(mapping, 0, IGNORE_ITEM)
    assert mapping.entries[0].label is None and mapping.entries[0].matchedBy == "manual"
    applyMappingChoice(mapping, 1, "liver")
    assert mapping.entries[1].label == "liver" and not mapping.entries[1].addAsNew
    applyMappingChoice(mapping, 5, "liver")  # a row that went away: nothing happens
    applyMappingChoice(None, 0, "liver")


def test_finetune_texts():
    assert duration(None) == "0:00" and duration(75.4) == "1:15" and duration(3725) == "1:02:05"
    progress = SimpleNamespace(iteration=0, maxIterations=300, lastLoss=None, bestMeanDice=None)
    assert finetuneProgressText(progress, SimpleNamespace(message="Preparing", eta_s=None)) == "Preparing"
    progress.iteration, progress.lastLoss, progress.bestMeanDice = 12, 0.51234, 0.8
    assert (
        finetuneProgressText(progress, SimpleNamespace(message="", eta_s=125))
        == "Iteration 12/300, loss 0.5123, best validation Dice 0.800 - about 2:05 left"
    )
    outcome = lambda status, **kw: SimpleNamespace(status=status, succeeded=status == "succeeded", **kw)
    assert finetuneFinishedText(outcome("succeeded", modelId="ft", bestMeanDice=0.91)) == "Model 'ft' is ready. Best validation Dice 0.910."
    assert finetuneFinishedText(outcome("succeeded", modelId="ft", bestMeanDice=None)) == "Model 'ft' is ready."
    assert finetuneFinishedText(outcome("stopped", iterations=40)) == "Stopped at iteration 40. Resume continues from the checkpoint."
    assert finetuneFinishedText(outcome("cancelled")) == "Stopped before the first checkpoint."
    assert finetuneFinishedText(outcome("failed", errorMessage="out of memory")) == "Fine-tuning failed: out of memory"
    seg = SimpleNamespace(segmentationNode=SimpleNamespace(GetName=lambda: "CT3 ft"), volumesMl={"liver": 1500.2})
    assert resegmentFinishedText(seg) == "New segmentation 'CT3 ft': liver 1500 mL"
    ranked = [SimpleNamespace(name="CT4", meanEntropy=0.123456, errorMessage=""), SimpleNamespace(name="CT5", meanEntropy=None, errorMessage="too small")]
    assert rankingTableRows(ranked) == [(["CT4", "0.1235"], None), (["CT5", "failed: too small"], None)]


@pytest.mark.slicer
def test_the_widget_applies_the_button_states(trainerModuleFile, mrml):
    """_updateButtons goes through buttonStates: the widget's buttons get what the Qt-free decision says."""
    import sys

    from RepUXTrainerLib.logic import TrainerLogic
    from test_module_runtime import widgetWithoutSetup

    logic = TrainerLogic(context=mrml.context())
    widget = widgetWithoutSetup(sys.modules["RepUXTrainer"], logic=logic, _parameterNode=None)
    widget._updateButtons()
    assert widget.ui.startButton.enabled is False and widget.ui.startButton.toolTip == "The training set needs at least 2 cases."
    assert widget.ui.rankButton.text == "Rank by uncertainty" and widget.ui.addCaseButton.enabled is False


def test_finetune_settings_from_the_parameter_node():
    p = SimpleNamespace(
        maxIterations=300.0,
        timeBudgetMinutes=0.0,
        device="cuda:0",
        learningRate=2e-4,
        freezeEncoderIterations=10,
        valFraction=0.2,
        validationInterval=50,
    )
    settings = finetuneSettings(p)
    assert settings == {
        "maxIterations": 300,
        "timeBudgetMinutes": None,
        "device": "cuda:0",
        "learningRate": 2e-4,
        "freezeEncoderIterations": 10,
        "valFraction": 0.2,
        "valInterval": 50,
    }
    assert isinstance(settings["maxIterations"], int)
    p.timeBudgetMinutes = 30
    assert finetuneSettings(p)["timeBudgetMinutes"] == 30.0


@pytest.mark.slicer
@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_both_widgets_share_the_syncing_guard_and_the_cleanup(trainerModuleFile, module):
    """ModuleWidgetMixin._syncing (change handlers skip code-made updates, even after an error) and _stopBackground."""
    import sys

    from test_module_runtime import widgetWithoutSetup
    from widget_fakes import FakeWidget

    cancelled, removed = [], []
    widget = widgetWithoutSetup(sys.modules[module], _pollTimer=FakeWidget("timer"))
    with pytest.raises(ValueError), widget._syncing():
        assert widget._syncingGui
        raise ValueError("a combo box could not be filled")
    assert widget._syncingGui is False
    widget._deviceRunner = SimpleNamespace(cancel=lambda block: cancelled.append(block))
    widget.removeObservers = lambda: removed.append(1)
    widget._stopBackground()
    assert cancelled == [True] and widget._pollTimer.called("stop") and removed == [1]

    shown = []
    widget.ui.logTextEdit.toPlainText = lambda: "x" * 6000 + "last line"
    widget._showFailure("It failed:\nout of memory", lambda text, **kwargs: shown.append((text, kwargs)))
    assert widget.ui.logCollapsibleButton.collapsed is False
    assert shown == [("It failed:\nout of memory", {"detailedText": ("x" * 6000 + "last line")[-5000:]})]


def test_which_stopped_run_resume_continues():
    runs = [SimpleNamespace(modelId="ft-1", dataset="a"), SimpleNamespace(modelId="ft-2", dataset="b")]
    asked = []
    assert chooseResumeRun([], asked.append) is None and asked == []
    assert chooseResumeRun(runs[:1], asked.append) is runs[0] and asked == []  # the only one: nothing to ask
    assert chooseResumeRun(runs, lambda names: asked.append(names) or names[1]) is runs[1]
    assert asked == [["ft-1 (a)", "ft-2 (b)"]]
    assert chooseResumeRun(runs, lambda names: "") is None  # cancelled
