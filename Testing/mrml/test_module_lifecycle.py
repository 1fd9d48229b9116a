"""Both module widgets through Slicer's lifecycle (scene close, module exit/enter, cleanup) and its dialogs: the
defects found by reading the modules against Slicer 5.8/5.10's sources (issue 23).

Widgets are built with the project's stand-ins (Testing/mrml/standins) and ``widget_fakes.FakeUi`` on a real
slicer-core scene; ``slicer.util`` is Slicer's real one.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import trainer_fixtures
from test_module_runtime import widgetWithoutSetup
from test_shared_helpers import Combo
from widget_fakes import FakeWidget

pytestmark = pytest.mark.slicer
trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture
slicerApp = trainer_fixtures.slicerApp  # pytest fixture


def segmentationNodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]


class GuiApp(SimpleNamespace):
    """What the tests need of ``slicer.app`` and ``qt`` beyond the stand-ins: the wait cursor (counted), the error popups
    (recorded) and a main window (None)."""

    def setOverrideCursor(self, cursor):
        self.waitCursor += 1

    def restoreOverrideCursor(self):
        self.waitCursor -= 1

    def testingEnabled(self):
        return False


@pytest.fixture
def guiApp(trainerModuleFile, slicerApp, monkeypatch):
    slicer = slicerApp.slicer
    app = GuiApp(temporaryPath=str(slicerApp.tempDirectory), processEvents=lambda: None, waitCursor=0, popups=[])
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(sys.modules["qt"], "Qt", SimpleNamespace(WaitCursor=3), raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: app.popups.append(text))
    app.mrml = slicerApp
    return app


class FakeRunner:
    """The engine process of a job: records cancel requests (nothing runs)."""

    returncode = None
    cancelled = False

    def __init__(self):
        self.cancels = []

    def cancel(self, *args, **kwargs):
        self.cancels.append(kwargs)
        self.cancelled = True


# ----------------------------------------------------------------------------- 4: Close Scene during a batch


@pytest.mark.parametrize("when", ["scene close", "module cleanup"])
def test_a_batch_running_when_the_scene_closes_imports_nothing_into_the_next_scene(trainerModuleFile, slicerApp, tmp_path, when):
    from RepUXSegmentLib.batch import BatchSegmentationJob
    from RepUXSegmentLib.mrml import readLabelmapNrrd, segmentSpecs, writeNodeNrrd
    from RepUXSegmentLib.process import ProgressUpdate
    from RepUXSegmentLib.segmentation import SegmentationOptions
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    from repux.labels import LabelSet

    scene = slicerApp.scene
    volume = slicerApp.addVolumeFromArray(syntheticCTArray((8, 10, 12)), syntheticIJKToRAS(), "ct")
    job = BatchSegmentationJob([volume], SegmentationOptions(model="m"), context=slicerApp.context())
    job.runner, job.state = FakeRunner(), "running"
    job.specs = segmentSpecs(LabelSet.from_names(["liver"], name="t"))
    labels = slicerApp.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "engine output")
    labels.SetAndObserveImageData(volume.GetImageData())
    path = writeNodeNrrd(labels, tmp_path / "ct.nrrd")
    scene.RemoveNode(labels)
    assert readLabelmapNrrd(path).GetImageData() is not None

    widget = widgetWithoutSetup(sys.modules["RepUXSegment"], _task=job, _pollTimer=FakeWidget("timer"), logic=SimpleNamespace())
    widget.setParameterNode = lambda node: None
    if when == "scene close":
        widget.onSceneStartClose(None, None)
    else:
        job.wait = lambda timeout=None: None  # the engine is not real here
        widget.removeObservers = lambda: None
        widget.cleanup()
    assert job.runner.cancels, "the engine was not stopped at once"
    # the engine reports the case that was running as done after the close: it must not appear in the (next) scene
    job._onRunnerProgress(ProgressUpdate("case", 0.5, "", None, {"case": job.cases[0].caseName, "status": "done", "output": str(path)}))
    assert segmentationNodes(scene) == []
    job._onProcessExit()
    assert job.outcome.status == "cancelled" and [c.status for c in job.cases] == ["cancelled"]
    assert job.cases[0].segmentationNode is None and job.cases[0].volumesMl == {}


# ----------------------------------------------------------------------------- 2: fine-tune finishing after Close Scene


def test_a_fine_tune_that_finishes_after_close_scene_is_reported_as_succeeded(guiApp):
    module = sys.modules["RepUXTrainer"]
    logic = module.RepUXTrainerLogic()
    refreshed = []
    widget = widgetWithoutSetup(module, logic=logic, _pollTimer=FakeWidget("timer"))
    widget.refreshModels = lambda: refreshed.append("trainer")
    widget._refreshOtherModules = lambda: refreshed.append("segment")
    widget._refreshResumableRuns = lambda: refreshed.append("runs")
    widget._refreshMapping = lambda *args: None
    widget.ui.baseModelComboBox, widget.ui.deviceComboBox = Combo(), Combo()
    widget.setParameterNode(logic.getParameterNode())
    widget.onSceneStartClose(None, None)  # Close Scene while the fine-tuning runs
    guiApp.mrml.scene.Clear(0)
    assert widget._parameterNode is None

    outcome = SimpleNamespace(succeeded=True, status="succeeded", modelId="ft-liver", bestMeanDice=0.9, errorMessage="")
    with module.reportErrors("The background RepUX task failed.", module.slicer.util.errorDisplay) as failed:  # as _onPollTimer does
        widget._onFinetuneFinished(outcome)
    assert not failed, failed.message
    assert guiApp.popups == []
    assert widget.ui.statusLabel.text == "Model 'ft-liver' is ready. Best validation Dice 0.900."
    assert logic.getParameterNode().resultModel == "ft-liver"  # Re-segment offers the new model in the new scene
    assert refreshed == ["trainer", "segment", "runs"]


# ----------------------------------------------------------------------------- 3: Cancel in "Resume fine-tuning"


class FakeInputDialog:
    """``qt.QInputDialog`` as Qt behaves: ``getItem`` returns the current item on Cancel (PythonQt gives no ok flag);
    ``exec_()`` returns 0 on Cancel.  ``answer`` is what the user does: None = Cancel, else the chosen item."""

    answer = None
    shown = []

    def __init__(self, parent=None):
        self.items, self.title = [], ""

    @staticmethod
    def getItem(parent, title, label, items, current=0, editable=True):
        FakeInputDialog.shown.append(title)
        return items[current] if FakeInputDialog.answer is None else FakeInputDialog.answer

    def setWindowTitle(self, title):
        self.title = title

    def setLabelText(self, label):
        pass

    def setComboBoxItems(self, items):
        self.items = list(items)

    def setComboBoxEditable(self, editable):
        pass

    def setTextValue(self, text):
        pass

    def exec_(self):
        FakeInputDialog.shown.append(self.title)
        return 0 if FakeInputDialog.answer is None else 1

    def textValue(self):
        return self.items[0] if FakeInputDialog.answer is None else FakeInputDialog.answer


@pytest.mark.parametrize("answer", [None, "ft-2 (set b)"])
def test_cancel_in_the_resume_dialog_resumes_nothing(guiApp, monkeypatch, answer):
    module = sys.modules["RepUXTrainer"]
    monkeypatch.setattr(module.qt, "QInputDialog", FakeInputDialog, raising=False)
    monkeypatch.setattr(FakeInputDialog, "answer", answer)
    monkeypatch.setattr(FakeInputDialog, "shown", [])
    resumed = []
    logic = SimpleNamespace(job=None, plot=None, resumeFinetune=lambda **kwargs: resumed.append(kwargs["runDirectory"]))
    run = lambda name, dataset: SimpleNamespace(modelId=name, dataset=dataset, resolvedRunDirectory=lambda: f"/runs/{name}")
    widget = widgetWithoutSetup(module, logic=logic, _pollTimer=FakeWidget("timer"), _resumableRuns=[run("ft-1", "set a"), run("ft-2", "set b")])
    widget._startPolling = lambda: None
    widget._updateButtons = lambda *args: None
    widget.onResume()
    assert FakeInputDialog.shown == ["Resume fine-tuning"]  # asked once
    assert resumed == ([] if answer is None else ["/runs/ft-2"])
    assert guiApp.waitCursor == 0
