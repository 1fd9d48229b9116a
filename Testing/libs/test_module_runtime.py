"""The module files against the shape of the real Slicer runtime (defects found in Slicer's own sources).

* parameterNodeWrapper resets a bound spin box to the whole int/float range unless the parameter carries
  ``WithinRange``/``Minimum``/``Maximum``: every numeric parameter has the range of its .ui widget;
* ``slicer.util.tryWithErrorDisplay`` re-raises: a corrupt remembered training set must not abort the
  Trainer's ``setup()``, an error in the poll path must not escape into the QTimer (one message);
* the Trainer cancels the jobs that import into the scene when the scene closes;
* ``ScriptedLoadableModuleLogic.__init__`` is cooperative (``super().__init__()``): TrainerLogic runs once;
* ``ScriptedLoadableModuleWidget.__init__`` calls ``setup()`` when it has no parent: attributes come first.

Widgets are built with the project's stand-ins (Testing/libs/standins) and ``widget_fakes.FakeUi``;
``slicer.util`` is Slicer's real one (slicer-core).
"""

from __future__ import annotations

import typing
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
import trainer_fixtures
from trainer_fixtures import REPO
from widget_fakes import FakeUi, FakeWidget

pytestmark = pytest.mark.slicer
trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture
slicerApp = trainer_fixtures.slicerApp  # pytest fixture


def uiRanges(uiFile):
    """{parameter: (minimum, maximum, widget class)} of the spin boxes bound with SlicerParameterName."""
    ranges = {}
    for widget in ET.parse(uiFile).getroot().iter("widget"):
        props = {p.get("name"): p for p in widget.findall("property")}
        if "SlicerParameterName" in props and widget.get("class") in ("QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "ctkRangeWidget"):
            value = lambda name, default: float(props[name][0].text) if name in props else default
            ranges[props["SlicerParameterName"].findtext("string")] = (value("minimum", 0.0), value("maximum", 99.0), widget.get("class"))
    return ranges


@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_every_numeric_parameter_has_the_range_of_its_widget(trainerModuleFile, mrml, monkeypatch, module):
    import sys

    monkeypatch.setattr(mrml.slicer, "mrmlScene", mrml.scene, raising=False)
    moduleFile = sys.modules[module]
    wrapper = getattr(moduleFile, f"{module}ParameterNode")
    numeric = {name for name, kind in wrapper.allParameters.items() if kind in (int, float)}
    widgets = uiRanges(REPO / module / "Resources" / "UI" / f"{module}.ui")
    assert set(widgets) <= numeric
    for name in numeric:
        assert name in wrapper.ranges, f"{module}ParameterNode.{name} has no WithinRange/Minimum/Maximum: Slicer would reset its spin box to +-2^31"
        if name in widgets:
            assert wrapper.ranges[name] == pytest.approx(widgets[name][:2]), (name, widgets[name])
    p = getattr(moduleFile, f"{module}Logic")().getParameterNode()
    for name, (low, high) in wrapper.ranges.items():
        default = getattr(p, name)
        assert low <= default <= high, (name, default)
        for bad in (low - 1, high * 2 + 1):
            with pytest.raises(ValueError):
                setattr(p, name, type(default)(bad))
    if module == "RepUXTrainer":
        assert {"maxIterations", "valFraction", "learningRate"} <= numeric


def test_trainer_logic_initialises_once(trainerModuleFile, mrml, monkeypatch):
    from RepUXTrainerLib.logic import TrainerLogic

    calls = []
    original = TrainerLogic.__init__
    monkeypatch.setattr(TrainerLogic, "__init__", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    logic = trainerModuleFile.RepUXTrainerLogic()
    assert calls == [1] and logic.moduleName == "RepUXTrainer" and logic.segmentationJobs == []


@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_widget_attributes_survive_setup_called_by_the_base_constructor(trainerModuleFile, monkeypatch, module):
    """Without a parent, ScriptedLoadableModuleWidget.__init__ calls setup(): what setup() made must stay."""
    import sys

    widgetClass = getattr(sys.modules[module], f"{module}Widget")

    def setup(self):
        self.logic = "made by setup"
        self._pollTimer = "made by setup"

    monkeypatch.setattr(widgetClass, "setup", setup)
    widget = widgetClass()
    assert widget.logic == "made by setup" and widget._pollTimer == "made by setup"


def widgetWithoutSetup(module, **attributes):
    widget = module.__dict__[f"{module.__name__}Widget"](parent=SimpleNamespace(isEntered=False))
    widget.ui = FakeUi()
    for name, value in attributes.items():
        setattr(widget, name, value)
    return widget


def test_an_error_in_the_segment_poll_path_does_not_escape_into_the_timer(trainerModuleFile, slicerApp, monkeypatch):
    import sys

    module = sys.modules["RepUXSegment"]
    shown = []
    monkeypatch.setattr(slicerApp.slicer.util, "errorDisplay", lambda text, **kwargs: shown.append(text))

    class BrokenTask:
        cancelled = False

        def processEvents(self):
            raise RuntimeError("a callback failed")

        def cancel(self):
            self.cancelled = True

    task = BrokenTask()
    widget = widgetWithoutSetup(module, _task=task, _pollTimer=FakeWidget("timer"), logic=SimpleNamespace())
    widget._onPollTimer()  # must not raise (the QTimer would print a traceback on every tick)

    assert len(shown) == 1 and "a callback failed" in shown[0]
    assert task.cancelled and widget._task is None and widget._pollTimer.called("stop")
    assert "a callback failed" in widget.ui.statusLabel.text


def test_a_corrupt_remembered_training_set_does_not_abort_the_trainer_setup(trainerModuleFile, slicerApp, monkeypatch, tmp_path):
    import sys

    from RepUXTrainerLib.logic import TrainerLogic

    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "repux-dataset.json").write_text("{ not json")
    module = sys.modules["RepUXTrainer"]
    popups = []
    monkeypatch.setattr(slicerApp.slicer.util, "errorDisplay", lambda text, **kwargs: popups.append(text))
    monkeypatch.setattr(slicerApp.slicer.app, "testingEnabled", lambda: False, raising=False)
    widget = widgetWithoutSetup(module, logic=TrainerLogic(context=slicerApp.context()))
    widget.ui.trainingSetPathLineEdit.currentPath = str(folder)

    widget._openRememberedTrainingSet()  # Slicer's tryWithErrorDisplay would re-raise here and abort setup()

    assert widget.logic.trainingSet is None
    message = widget.ui.trainingSetInfoLabel.text
    assert str(folder) in message and "choose a folder again" in message
    assert widget.ui.logTextEdit.called("appendPlainText") == [("appendPlainText", (message,), {})]  # one clear message, no popup
    assert popups == []


def test_trainer_scene_close_cancels_the_jobs_that_import_into_the_scene(trainerModuleFile, mrml):
    import sys

    from RepUXTrainerLib.logic import TrainerLogic

    class Job:
        def __init__(self):
            self.cancelled = 0
            self.running = True

        def cancel(self):
            self.cancelled += 1

    logic = TrainerLogic(context=mrml.context())
    logic.segmentationJobs = [Job(), Job()]
    logic.ranking = Job()
    logic.job = Job()  # the fine-tuning goes on through a scene close
    widget = widgetWithoutSetup(sys.modules["RepUXTrainer"], logic=logic)
    widget.setParameterNode = lambda node: None
    widget.onSceneStartClose(None, None)
    assert [j.cancelled for j in logic.segmentationJobs] == [1, 1] and logic.ranking.cancelled == 1 and logic.job.cancelled == 0


def test_parameter_annotations_are_slicers_validators():
    """The module files use Slicer's names (``WithinRange`` from slicer.parameterNodeWrapper), not project ones."""
    import ast

    for module in ("RepUXSegment", "RepUXTrainer"):
        tree = ast.parse((REPO / module / f"{module}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "slicer.parameterNodeWrapper" for a in n.names}
        assert "parameterNodeWrapper" in imported
        if module == "RepUXTrainer":
            assert "WithinRange" in imported
    assert typing.get_origin(typing.Annotated[int, 1]) is typing.Annotated


@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_both_widgets_share_the_device_and_parameter_node_plumbing(trainerModuleFile, mrml, monkeypatch, module):
    """One copy (RepUXSegmentLib.widgethelpers.ModuleWidgetMixin): detection in the background, the list, the choice."""
    import json
    import sys

    from RepUXSegmentLib import dependencies
    from test_shared_helpers import Combo

    monkeypatch.setattr(mrml.slicer, "mrmlScene", mrml.scene, raising=False)
    moduleFile = sys.modules[module]
    started = []

    class Runner:
        succeeded = True
        errorMessage = ""
        stdoutLines = [json.dumps({"devices": [{"device": "cpu", "name": "EPYC"}, {"device": "cuda:0", "name": "H200", "memory_gb": 139.8}]})]

    logic = moduleFile.__dict__[f"{module}Logic"]()
    monkeypatch.setattr(logic, "startRepuxCommand", lambda arguments, onFinished=None: started.append((arguments, onFinished)) or Runner())
    monkeypatch.setattr(dependencies, "torchStatus", lambda: "ok")
    widget = widgetWithoutSetup(moduleFile, logic=logic, _pollTimer=FakeWidget("timer"))
    widget._startPolling = lambda: widget._pollTimer.start()
    widget.ui.deviceComboBox = Combo()
    widget._onParameterNodeModified = lambda *args: None
    widget.setParameterNode(logic.getParameterNode())
    widget._parameterNode.device = "cuda:0"

    widget._detectDevices()
    assert started[0][0] == ["info", "--json"] and widget._pollTimer.called("start")
    started[0][1](Runner())  # the runner finished: its JSON fills the list
    assert widget.ui.deviceComboBox.rows == [("Auto (H200)", "auto"), ("CPU", "cpu"), ("GPU 0: H200 (140 GB)", "cuda:0")]
    assert widget.ui.deviceComboBox.currentIndex == 2  # the parameter node's choice
    widget.onDeviceChanged(1)
    assert widget._parameterNode.device == "cpu"
    widget._detectDevices()  # detected once per session
    assert len(started) == 1
    widget.exit()
    assert widget._parameterNodeGuiBinding[0] is widget._parameterNode  # exit keeps the GUI bound: connected once per parameter node


def test_batch_cancel_is_two_step_and_failed_volumes_are_named(trainerModuleFile, slicerApp, monkeypatch):
    """RepUX Segment's batch: the first Cancel stops after the current volume, the second at once; failures are listed."""
    import sys

    from RepUXSegmentLib.batch import BatchCaseResult, BatchOutcome, BatchSegmentationJob

    module = sys.modules["RepUXSegment"]
    shown = []
    monkeypatch.setattr(slicerApp.slicer.util, "errorDisplay", lambda text, **kwargs: shown.append(text))

    class Job(BatchSegmentationJob):
        def __init__(self):  # no volumes, no process: only the cancel protocol
            self.state, self.requests = "running", []

        def cancel(self, immediately=False):
            self.requests.append(self.state)
            self.state = "stopping"

    job = Job()
    widget = widgetWithoutSetup(module, _task=job, _parameterNode=None, logic=SimpleNamespace())
    widget.onCancel()
    assert job.requests == ["running"] and widget.ui.applyButton.text == "Stop now" and "current volume" in widget.ui.statusLabel.text
    widget.onCancel()
    assert job.requests == ["running", "stopping"] and widget.ui.applyButton.text == "Cancelling..."

    volume = lambda name: SimpleNamespace(GetName=lambda: name)
    cases = [BatchCaseResult(volume("CT 1"), "ct_1", status="done"), BatchCaseResult(volume("CT 2"), "ct_2", status="failed", errorMessage="single slice")]
    widget._onBatchFinished(BatchOutcome("failed", cases, "1 of 2 volumes failed", 1, 12.0))
    assert widget._task is None and "1 of 2 volumes segmented" in widget.ui.statusLabel.text
    assert len(shown) == 1 and "CT 2: single slice" in shown[0]
