"""Both module widgets through Slicer's lifecycle (scene close, module exit/enter, cleanup) and its dialogs: the
defects found by reading the modules against Slicer 5.8/5.10's sources (issue 23).

Widgets are built with the project's stand-ins (Testing/libs/standins) and ``widget_fakes.FakeUi`` on a real
slicer-core scene; ``slicer.util`` is Slicer's real one.
"""

from __future__ import annotations

import sys
import typing
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


class FakeItem:
    """A table or list item (``qt.QTableWidgetItem``, ``qt.QListWidgetItem``): text, data, flags, check state."""

    def __init__(self, text=""):
        self._text, self._data, self._flags, self._check, self.toolTip = text, {}, 0, 0, None

    def text(self):
        return self._text

    def setToolTip(self, text):
        self.toolTip = text

    def setData(self, role, value):
        self._data[role] = value

    def data(self, role):
        return self._data.get(role)

    def flags(self):
        return self._flags

    def setFlags(self, flags):
        self._flags = flags

    def setCheckState(self, state):
        self._check = state

    def checkState(self):
        return self._check


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
    qt = sys.modules["qt"]
    monkeypatch.setattr(qt, "Qt", SimpleNamespace(WaitCursor=3, UserRole=32, ItemIsUserCheckable=16, Checked=2, Unchecked=0), raising=False)
    monkeypatch.setattr(qt, "QTableWidgetItem", FakeItem, raising=False)
    monkeypatch.setattr(qt, "QListWidgetItem", FakeItem, raising=False)
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
    from repux.protocol import ProgressEvent
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
    job._onRunnerProgress(ProgressEvent("case", 0.5, "", None, {"case": job.cases[0].caseName, "status": "done", "output": str(path)}))
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
    shown: typing.ClassVar[list] = []

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
        FakeInputDialog.cursorWhenShown.append(FakeInputDialog.app.waitCursor)
        return 0 if FakeInputDialog.answer is None else 1

    def textValue(self):
        return self.items[0] if FakeInputDialog.answer is None else FakeInputDialog.answer


@pytest.mark.parametrize("answer", [None, "ft-2 (set b)"])
def test_cancel_in_the_resume_dialog_resumes_nothing(guiApp, monkeypatch, answer):
    module = sys.modules["RepUXTrainer"]
    monkeypatch.setattr(module.qt, "QInputDialog", FakeInputDialog, raising=False)
    monkeypatch.setattr(FakeInputDialog, "answer", answer)
    monkeypatch.setattr(FakeInputDialog, "shown", [])
    monkeypatch.setattr(FakeInputDialog, "cursorWhenShown", [], raising=False)
    monkeypatch.setattr(FakeInputDialog, "app", guiApp, raising=False)
    resumed = []
    logic = SimpleNamespace(job=None, plot=None, resumeFinetune=lambda **kwargs: resumed.append(kwargs["runDirectory"]))
    run = lambda name, dataset: SimpleNamespace(modelId=name, dataset=dataset, resolvedRunDirectory=lambda: f"/runs/{name}")
    widget = widgetWithoutSetup(module, logic=logic, _pollTimer=FakeWidget("timer"), _resumableRuns=[run("ft-1", "set a"), run("ft-2", "set b")])
    widget._startPolling = lambda: None
    widget._updateButtons = lambda *args: None
    widget.onResume()
    assert FakeInputDialog.shown == ["Resume fine-tuning"]  # asked once
    assert resumed == ([] if answer is None else ["/runs/ft-2"])
    assert FakeInputDialog.cursorWhenShown == [0]  # the question is not asked under the wait cursor
    assert guiApp.waitCursor == 0


# ----------------------------------------------------------------------------- 5: a model catalog that cannot be read


@pytest.fixture
def silentCatalogServer():
    """An http URL that accepts the connection and never answers (a slow or hanging catalog server)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/catalog.json"
    server.close()


@pytest.fixture
def freshCatalogCache(monkeypatch):
    from RepUXSegmentLib import logic, models

    if not hasattr(models, "CatalogCache"):  # (before issue 23: no cache, the catalog was read on every listing)
        return SimpleNamespace(error="", pending=False)
    cache = models.CatalogCache()
    monkeypatch.setattr(models, "catalogCache", cache)
    monkeypatch.setattr(logic, "catalogCache", cache)
    return cache


def test_installed_models_are_listed_when_the_catalog_is_malformed_or_hangs(
    freshCatalogCache, tiny_model_dir, tmp_path, monkeypatch, silentCatalogServer, caplog
):
    import time

    from RepUXSegmentLib.models import listModels
    from RepUXSegmentLib.process import ProcessRunner, childEnvironment, repuxCommand

    runner = ProcessRunner(repuxCommand(["models", "import", str(tiny_model_dir)], sys.executable), env=childEnvironment())
    runner.start()
    runner.wait(timeout=120)
    assert runner.succeeded, runner.errorMessage
    bad = tmp_path / "catalog.json"
    bad.write_text('{"models": [{"id": "no-url"}]}')  # an entry without its url and sha256
    monkeypatch.setenv("REPUX_CATALOG", str(bad))
    ids = {m.id: m.status for m in listModels()}
    assert ids.get(tiny_model_dir.name) == "installed" and "built-in" in ids.values()
    assert "no-url" in freshCatalogCache.error and "catalog" in caplog.text

    monkeypatch.setenv("REPUX_CATALOG", silentCatalogServer)
    start = time.monotonic()
    ids = {m.id for m in listModels(wait=0.3)}
    assert time.monotonic() - start < 2.0  # the GUI thread is not blocked by the catalog server
    assert tiny_model_dir.name in ids and freshCatalogCache.pending
    start = time.monotonic()
    listModels(wait=0.3)  # a second panel refresh neither starts a second read nor waits for the first
    assert time.monotonic() - start < 0.25


@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_both_panels_list_their_models_when_the_catalog_cannot_be_read(guiApp, freshCatalogCache, tmp_path, monkeypatch, module):
    bad = tmp_path / "catalog.json"
    bad.write_text("{ not json")
    monkeypatch.setenv("REPUX_CATALOG", str(bad))
    moduleFile = sys.modules[module]
    logic = getattr(moduleFile, f"{module}Logic")()
    widget = widgetWithoutSetup(moduleFile, logic=logic, _pollTimer=FakeWidget("timer"))
    for name in ("modelComboBox", "baseModelComboBox", "deviceComboBox"):
        setattr(widget.ui, name, Combo())
    widget._refreshMapping = lambda *args: None
    widget.setParameterNode(logic.getParameterNode())
    monkeypatch.setattr(moduleFile.qt, "QTimer", SimpleNamespace(singleShot=lambda msec, callback: None), raising=False)

    widget.refreshModels()  # what setup() and enter() call: must not raise (Slicer's tryWithErrorDisplay re-raises)

    assert guiApp.popups == [] and guiApp.waitCursor == 0
    combo = widget.ui.modelComboBox if module == "RepUXSegment" else widget.ui.baseModelComboBox
    assert "repux-tiny-phantom" in [row[1] for row in combo.rows if row]  # the built-in model
    if module == "RepUXSegment":
        logged = [c[1][0] for c in widget.ui.logTextEdit.called("appendPlainText")]
        assert len(logged) == 1 and "catalog cannot be read" in logged[0] and str(bad) in logged[0]
        widget.refreshModels()  # logged once, not on every entry
        assert len(widget.ui.logTextEdit.called("appendPlainText")) == 1


# ----------------------------------------------------------------------------- 6 and 7: the volume checklist of the batch


class FakeListWidget:
    """A QListWidget of checkable items (what the checklist helpers use)."""

    def __init__(self):
        self.items = []

    @property
    def count(self):
        return len(self.items)

    def clear(self):
        self.items = []

    def addItem(self, item):
        self.items.append(item)

    def item(self, index):
        return self.items[index]


def segmentWidget(guiApp, monkeypatch):
    module = sys.modules["RepUXSegment"]
    logic = module.RepUXSegmentLogic()
    widget = widgetWithoutSetup(module, logic=logic, _pollTimer=FakeWidget("timer"))
    widget.ui.modelComboBox, widget.ui.deviceComboBox = Combo(), Combo()
    widget.ui.batchVolumesListWidget, widget.ui.organsListWidget = FakeListWidget(), FakeListWidget()
    widget._models = []
    widget.setParameterNode(logic.getParameterNode())
    widget._parameterNode.model = "repux-tiny-phantom"
    return widget


def addVector(scene, name="photo", components=3):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, components)
    node.SetAndObserveImageData(image)
    return node


def test_segment_checked_volumes_follows_volumes_added_and_removed(guiApp, monkeypatch):
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    scene = guiApp.mrml.scene
    widget = segmentWidget(guiApp, monkeypatch)
    widget.addObserver(scene, scene.NodeAddedEvent, widget._fillBatchVolumes)  # as setup() does
    widget.addObserver(scene, scene.NodeRemovedEvent, widget._fillBatchVolumes)
    widget._checkCanApply()
    assert widget.ui.batchApplyButton.enabled is False
    volumes = [guiApp.mrml.addVolumeFromArray(syntheticCTArray((6, 8, 8), seed=i), syntheticIJKToRAS(), f"ct {i}") for i in range(3)]
    assert [item.text() for item in widget.ui.batchVolumesListWidget.items] == ["ct 0", "ct 1", "ct 2"]
    assert widget.ui.batchApplyButton.enabled is True, "three CTs loaded and checked, the button stays disabled"
    for volume in volumes:
        scene.RemoveNode(volume)
    assert widget.ui.batchVolumesListWidget.items == []
    assert widget.ui.batchApplyButton.enabled is False, "every volume removed, the button stays enabled"
    widget.removeObservers()


def test_vector_and_tensor_volumes_are_not_offered_as_inputs(guiApp, monkeypatch):
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS
    from RepUXTrainerLib.suggest import unannotatedVolumes

    scene = guiApp.mrml.scene
    rgb = addVector(scene)  # loaded first: it must not become the default input
    oneComponentVector = addVector(scene, "vector, one component", components=1)
    tensor = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
    dwi = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "dwi")
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    ct = guiApp.mrml.addVolumeFromArray(syntheticCTArray((6, 8, 8)), syntheticIJKToRAS(), "ct")
    widget = segmentWidget(guiApp, monkeypatch)
    widget._parameterNode.inputVolume = None
    widget.initializeParameterNode()
    assert widget._parameterNode.inputVolume is ct  # the input selector shows only vtkMRMLScalarVolumeNode itself
    widget._fillBatchVolumes()
    assert [item.text() for item in widget.ui.batchVolumesListWidget.items] == ["ct"]
    assert widget._checkedBatchVolumes() == [ct]
    assert unannotatedVolumes(scene, None) == [ct]  # the Trainer's default input and its uncertainty candidates
    from RepUXSegmentLib.panel import ctVolumes, isCTVolume

    everything = [rgb, oneComponentVector, tensor, dwi, labels, ct]
    assert ctVolumes(everything) == [ct] and not any(isCTVolume(n) for n in everything[:-1])


# ----------------------------------------------------------------------------- 8: GUI bindings on every module entry


class Slicer58Binding:
    """What Slicer 5.8's parameterNodeWrapper does on ``connectGui``: the connections are stored by a tag it does not
    return (``None``), so ``disconnectGui(None)`` removes nothing.  ``live`` counts the connections still made."""

    live = 0

    def connectGui(self, gui):
        self._parameterGUIs = getattr(self, "_parameterGUIs", {})
        tag = len(self._parameterGUIs) + 100 * id(self)
        self._parameterGUIs[tag] = gui
        Slicer58Binding.live += 1  # and no tag returned

    def disconnectGui(self, tag):
        if tag in getattr(self, "_parameterGUIs", {}):
            del self._parameterGUIs[tag]
            Slicer58Binding.live -= 1


class Slicer510Binding(Slicer58Binding):
    def connectGui(self, gui):
        super().connectGui(gui)
        return max(self._parameterGUIs)


@pytest.mark.parametrize("version", ["5.8", "5.10"])
@pytest.mark.parametrize("module", ["RepUXSegment", "RepUXTrainer"])
def test_module_entries_do_not_pile_up_gui_bindings(guiApp, monkeypatch, module, version, recwarn):
    moduleFile = sys.modules[module]
    wrapperClass = getattr(moduleFile, f"{module}ParameterNode")
    binding = Slicer58Binding if version == "5.8" else Slicer510Binding
    monkeypatch.setattr(Slicer58Binding, "live", 0)
    wrapper = type("Wrapper", (binding, wrapperClass), {})
    logic = getattr(moduleFile, f"{module}Logic")()
    scriptedNode = logic.getParameterNode().parameterNode
    monkeypatch.setattr(logic, "getParameterNode", lambda: wrapper(scriptedNode))  # a new wrapper per call, as Slicer's
    widget = widgetWithoutSetup(moduleFile, logic=logic, _pollTimer=FakeWidget("timer"))
    for name in ("modelComboBox", "baseModelComboBox", "deviceComboBox"):
        setattr(widget.ui, name, Combo())
    widget.ui.organsListWidget, widget.ui.batchVolumesListWidget = FakeListWidget(), FakeListWidget()
    widget._refreshMapping = lambda *args: None
    for _cycle in range(5):
        widget.initializeParameterNode()  # enter()
        widget.exit()
    assert Slicer58Binding.live == 1
    widget.initializeParameterNode()
    observers = [o for o in widget.Observations if o[0] is widget._parameterNode]
    assert len(observers) == 1  # one panel observer of the parameter node
    widget.exit()
    widget.setParameterNode(None)  # Close Scene after leaving the module: the binding of the closed scene's node goes
    assert Slicer58Binding.live == 0
    widget.removeObservers()  # cleanup()
    assert [str(w.message) for w in recwarn if "observer" in str(w.message)] == []  # no "does not have observer" (issue 23, 10)


# ----------------------------------------------------------------------------- 10: small UI defects


def test_install_questions_are_not_asked_under_the_wait_cursor(guiApp, monkeypatch):
    """Apply, Segment checked volumes and the Trainer's Start ask to install packages (and Apply to download the
    model) before the wait cursor is set."""
    cursorWhenAsked = []
    monkeypatch.setattr(guiApp.mrml.slicer.util, "confirmOkCancelDisplay", lambda *args, **kwargs: cursorWhenAsked.append(guiApp.waitCursor) or False)

    def setupPythonRequirements(askConfirmation=True):
        if not guiApp.mrml.slicer.util.confirmOkCancelDisplay("Install MONAI?"):
            raise RuntimeError("the user declined")

    segment = segmentWidget(guiApp, monkeypatch)
    segment.logic.setupPythonRequirements = setupPythonRequirements
    segment._updateDependenciesLabel = lambda: None
    segment.onApplyButton()
    segment.onBatchApply()
    trainer = widgetWithoutSetup(sys.modules["RepUXTrainer"], logic=SimpleNamespace(setupPythonRequirements=setupPythonRequirements))
    trainer._parameterNode = SimpleNamespace()
    trainer.onStart()
    assert cursorWhenAsked == [0, 0, 0]
    assert len(guiApp.popups) == 3 and all("the user declined" in p for p in guiApp.popups) and guiApp.waitCursor == 0

    guiApp.popups.clear()
    segment.logic.setupPythonRequirements = lambda askConfirmation=True: None
    from RepUXSegmentLib.models import ModelInfo

    segment._models = [ModelInfo("repux-big", "1", "downloadable", 300.0, ("liver",))]
    segment._parameterNode.model = "repux-big"
    cursorWhenAsked.clear()
    segment.onApplyButton()  # "download 300 MB?" -> no
    assert cursorWhenAsked == [0] and guiApp.popups == []


def test_an_error_showing_the_training_plot_is_shown_once(guiApp, monkeypatch):
    module = sys.modules["RepUXTrainer"]

    class Plots:
        def ShowChartInLayout(self, chartNode):
            raise RuntimeError("no plot view in this layout")

    monkeypatch.setattr(module.slicer, "modules", SimpleNamespace(plots=SimpleNamespace(logic=lambda: Plots())), raising=False)
    logic = SimpleNamespace(
        setupPythonRequirements=lambda askConfirmation=True: None,
        startFinetune=lambda *args, **kwargs: None,
        plot=SimpleNamespace(chartNode="chart"),
    )
    widget = widgetWithoutSetup(module, logic=logic, _pollTimer=FakeWidget("timer"))
    widget._parameterNode = SimpleNamespace(
        baseModel="m",
        newModelId="",
        maxIterations=10,
        timeBudgetMinutes=0.0,
        device="cpu",
        learningRate=1e-4,
        freezeEncoderIterations=0,
        valFraction=0.2,
        validationInterval=5,
    )
    widget._startPolling = lambda: None
    widget.onStart()
    assert len(guiApp.popups) == 1 and "no plot view" in guiApp.popups[0]


def test_the_organ_checklist_is_rebuilt_only_when_the_organs_change(guiApp, monkeypatch):
    from RepUXSegmentLib.models import ModelInfo

    widget = segmentWidget(guiApp, monkeypatch)
    widget._models = [ModelInfo("m", "1", "installed", 1.0, ("liver", "spleen", "kidney")), ModelInfo("other", "1", "installed", 1.0, ("lung",))]
    listWidget = widget.ui.organsListWidget
    clears = []
    listWidget.clear = lambda: (clears.append(1), FakeListWidget.clear(listWidget))
    p = widget._parameterNode
    p.model = "m"
    assert [i.text() for i in listWidget.items] == ["liver", "spleen", "kidney"] and len(clears) == 1
    first = list(listWidget.items)
    p.device = "cpu"
    p.quality = sys.modules["RepUXSegment"].Quality.BEST
    p.uncheckedOrgans = "spleen"  # e.g. set from a script: only the check state changes
    assert len(clears) == 1 and listWidget.items == first
    assert [i.checkState() for i in listWidget.items] == [2, 0, 2]
    p.model = "other"
    assert [i.text() for i in listWidget.items] == ["lung"] and len(clears) == 2


def test_check_installation_says_why_it_waits(guiApp, monkeypatch):
    widget = segmentWidget(guiApp, monkeypatch)
    started = []
    widget.logic.startRepuxCommand = lambda *args, **kwargs: started.append(args)
    widget._task, widget._taskTitle = SimpleNamespace(), "Segmenting CT 1"
    widget.onCheckInstallation()
    assert started == [] and "Segmenting CT 1" in widget.ui.statusLabel.text and "wait" in widget.ui.statusLabel.text


def test_the_application_exit_shows_that_a_fine_tune_is_stopping(guiApp, monkeypatch):
    """cleanup() waits up to 2 minutes for the checkpoint: a progress dialog says so (TrainerLogic.shutdown(onWaiting))."""
    from RepUXTrainerLib.logic import TrainerLogic

    class SlowStop:
        running, polls, stopped = True, 0, False

        def stop(self):
            self.stopped = True

        def processEvents(self):
            self.polls += 1
            self.running = self.polls < 12  # about 1.2 s to write the checkpoint
            return self.running

    dialogs = []

    class Dialog(SimpleNamespace):
        def close(self):
            self.closed = True

    monkeypatch.setattr(guiApp.mrml.slicer.util, "createProgressDialog", lambda **kwargs: dialogs.append(Dialog(**kwargs, closed=False)) or dialogs[-1])
    logic = TrainerLogic(context=guiApp.mrml.context())
    logic.job = SlowStop()
    widget = widgetWithoutSetup(sys.modules["RepUXTrainer"], logic=logic, _pollTimer=FakeWidget("timer"))
    widget.removeObservers = lambda: None
    widget.cleanup()
    assert logic.job.stopped and not logic.job.running
    assert len(dialogs) == 1 and "Stopping the fine-tuning" in dialogs[0].labelText and dialogs[0].maximum == 120 and dialogs[0].closed


def test_translated_texts_are_literals(trainerModuleFile):
    """lupdate extracts only literal strings: every _(), tr() and translate() of the module files gets one."""
    import ast

    from RepUXSegmentLib.batch import STATISTICS_TABLE_HEADERS

    for module in ("RepUXSegment", "RepUXTrainer"):
        tree = ast.parse((trainer_fixtures.REPO / module / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "tr", "translate"):
                text = node.args[-1] if node.func.id == "translate" else node.args[0]
                assert isinstance(text, ast.Constant) and isinstance(text.value, str), f"{module}.py:{node.lineno}: {ast.unparse(node)}"
    assert sys.modules["RepUXSegment"].statisticsHeaders() == list(STATISTICS_TABLE_HEADERS)
