"""RepUXSegment: CT organ segmentation with RepUX-Net in 3D Slicer.

This file is thin on purpose: the module description, the widget (GUI only), a
logic wrapper and the self-test.  Everything else lives in the Qt-free
``RepUXSegmentLib`` package and in the ``repux`` engine, which runs in a
background ``PythonSlicer -m repux`` process.
"""

import enum
import logging
import os
import shutil
import tempfile
from types import SimpleNamespace

import qt
import slicer
from RepUXSegmentLib import selftest
from RepUXSegmentLib.batch import BatchSegmentationJob, statisticsTableRows, writeStatisticsCsv
from RepUXSegmentLib.dependencies import missingRequirements, readRequirements, torchStatus
from RepUXSegmentLib.logic import SegmentLogic
from RepUXSegmentLib.models import convertOfficialArguments, doctorArguments, findModel, importArguments, installArguments
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
    parseUncheckedOrgans,
    progressText,
    segmentationResult,
    storeCommandResult,
    taskStates,
    uncheckedOrgansText,
    volumeChecklistRows,
)
from RepUXSegmentLib.widgethelpers import (
    IMPORT_MODEL_ITEM,
    IMPORT_OFFICIAL_ITEM,
    ModuleWidgetMixin,
    askInDialog,
    chosenOrgans,
    fillChecklist,
    fillCombo,
    fillTable,
    modelChoices,
    organItems,
    reportErrors,
    selectComboData,
    selectedRow,
    setWidgetStates,
)
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)

#: seconds the panel waits for the model catalog (read on a background thread) before it lists the other models
CATALOG_WAIT_SECONDS = 1.0


def statisticsHeaders():
    """The Statistics table's column titles, translated (literals, so that lupdate finds them; the order of
    RepUXSegmentLib.batch.STATISTICS_TABLE_HEADERS)."""
    return [
        _("Volume"),
        _("Organ"),
        _("Volume (mL)"),
        _("HU mean"),
        _("HU std"),
        _("HU median"),
        _("HU p5"),
        _("HU p95"),
        _("Cut by the image border"),
    ]


def _checkItem(text, data, checked):
    """A checkable item of a checklist (the organs, the batch's volumes), its ``data`` in the user role."""
    item = qt.QListWidgetItem(text)
    item.setData(qt.Qt.UserRole, data)
    item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
    item.setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
    return item


def _checklist(listWidget):
    """``(text, data, checked)`` of each item of a checklist."""
    items = [listWidget.item(i) for i in range(listWidget.count)]
    return [(item.text(), item.data(qt.Qt.UserRole), item.checkState() == qt.Qt.Checked) for item in items]


#
# RepUXSegment
#


class RepUXSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RepUX Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["RepUX developers"]
        self.parent.helpText = _(
            "Segments abdominal organs in CT volumes with RepUX-Net, a 3D network with 21x21x21 kernels "
            "(Bayesian frequency re-parameterization). Choose a CT volume and a model, press Apply, then correct "
            "the result in the Segment Editor. The network runs in a background process: Slicer stays responsive "
            "and Apply turns into Cancel while it runs. For research use only, not for diagnosis. "
            'See <a href="https://github.com/RepUX/SlicerRepUX">the documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "RepUX-Net: Lee H.H. et al., Scaling Up 3D Kernels with Bayesian Frequency Re-parameterization for "
            "Medical Image Segmentation, MICCAI 2023 (arXiv:2303.05785). Inference uses MONAI and PyTorch. "
            "Check the licence of each model's weights before use."
        )


#
# Parameter node
#


class Quality(enum.Enum):
    """Quality levels of ``repux segment --quality``."""

    FAST = "fast"
    STANDARD = "standard"
    BEST = "best"

    def label(self):
        return {
            Quality.FAST: _("Fast"),
            Quality.STANDARD: _("Standard"),
            Quality.BEST: _("Best (about 4x slower)"),
        }[self]


@parameterNodeWrapper
class RepUXSegmentParameterNode:
    """GUI state saved with the scene.

    inputVolume - CT volume to segment.
    model - model id (or model folder).
    device - auto, cpu, cuda, cuda:N or mps.
    quality - fast, standard or best.
    roi - optional box to restrict the processing to.
    largestComponent - keep each organ's largest connected component.
    outputSegmentation - segmentation to fill; None creates a new one.
    uncheckedOrgans - organs of the model the user left out of the organ checklist.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: str = "auto"
    quality: Quality = Quality.STANDARD
    roi: vtkMRMLMarkupsROINode
    largestComponent: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    uncheckedOrgans: str = ""  # comma-separated organs of the model left out ("" = all organs)


#
# RepUXSegmentWidget
#


class RepUXSegmentWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel; all work is delegated to RepUXSegmentLogic / RepUXSegmentLib."""

    tr = staticmethod(_)  # translation of the shared helpers' texts

    def __init__(self, parent=None):
        # attributes first: ScriptedLoadableModuleWidget.__init__ calls setup() itself when parent is None
        VTKObservationMixin.__init__(self)
        self._initSharedState()  # parameter node, device detection, poll timer (RepUXSegmentLib.widgethelpers.ModuleWidgetMixin)
        self.logic = None
        self._task = None
        self._taskTitle = ""
        self._models = []
        self._lastSegmentation = None
        self._statisticsCases = []
        self._catalogErrorShown = ""
        self._catalogTimerActive = False
        ScriptedLoadableModuleWidget.__init__(self, parent)

    # ------------------------------------------------------------------ set-up
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RepUXSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RepUXSegmentLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._fillBatchVolumes)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self._fillBatchVolumes)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self._addExportDicomSegButton()
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.importOfficialButton.connect("clicked(bool)", self.onImportOfficialCheckpoint)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self.ui.deleteModelButton.connect("clicked(bool)", self.onDeleteModel)
        self.ui.openStoreFolderButton.connect("clicked(bool)", self.onOpenStoreFolder)
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda checked: self.refreshModels(refreshCatalog=True))
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.checkInstallationButton.connect("clicked(bool)", self.onCheckInstallation)
        self.ui.modelsTable.connect("itemSelectionChanged()", self._updateModelButtons)
        self.ui.organsListWidget.connect("itemChanged(QListWidgetItem*)", self._onOrganToggled)
        self.ui.batchVolumesListWidget.connect("itemChanged(QListWidgetItem*)", lambda item: self._checkCanApply())
        self.ui.batchApplyButton.connect("clicked(bool)", self.onBatchApply)
        self.ui.exportStatisticsButton.connect("clicked(bool)", self.onExportStatistics)
        self.ui.statisticsTable.setColumnCount(len(statisticsHeaders()))
        self.ui.statisticsTable.setHorizontalHeaderLabels(statisticsHeaders())

        self.ui.warningLabel.hide()
        self.ui.modelsTable.horizontalHeader().setStretchLastSection(True)
        self._setDeviceChoices([])
        self.refreshModels()
        self._updateDependenciesLabel()
        self._fillBatchVolumes()
        self.initializeParameterNode()
        self._detectDevices()
        try:
            self._setupClickSection()  # "Click to segment" (RepUXSegmentLib.clicksession)
        except Exception:  # noqa: BLE001 - the rest of the panel must work without this section
            logger.exception("the Click to segment section could not be created")

    def cleanup(self):
        if self._task is not None:
            self._cancelTaskForSceneChange()
            try:
                self._task.wait(timeout=30)
            except TimeoutError:
                logger.warning("the background RepUX task did not stop within 30 s")
        self._stopBackground()
        self._stopClickTool()

    def enter(self):
        self.initializeParameterNode()
        self.refreshModels()

    def onSceneStartClose(self, caller, event):
        if self._task is not None:
            self._cancelTaskForSceneChange()
        self.setParameterNode(None)

    def _cancelTaskForSceneChange(self):
        """The scene closes (or the module goes away): stop the task at once; a batch imports nothing more (its
        volumes belong to the closed scene; a soft cancel would import the running case into the next one)."""
        if isinstance(self._task, BatchSegmentationJob):
            self._task.cancel(discardResults=True)
        else:
            self._task.cancel()

    def onSceneEndClose(self, caller, event):
        self._lastSegmentation = None
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = ctVolumes(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
            if volumes:
                self._parameterNode.inputVolume = volumes[0]
        if not self._parameterNode.model and self._models:
            self._parameterNode.model = defaultModelId(self._models)

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is not None:
            with self._syncing():
                selectComboData(self.ui.modelComboBox, p.model)
                selectComboData(self.ui.deviceComboBox, p.device)
            self._updateModelInfo()
        self._checkCanApply()

    def _checkCanApply(self):
        self.ui.editButton.enabled = self._resultSegmentation() is not None
        if self._task is not None:
            return
        p = self._parameterNode
        hasVolume, model = (p is not None and bool(p.inputVolume)), (p.model if p is not None else "")
        setWidgetStates(self.ui, applyButtonStates(hasVolume, model, chosenOrgans(self._organItems()), len(self._checkedBatchVolumes()), _))

    # ------------------------------------------------------------ combo boxes
    def onModelChanged(self, index):
        if self._syncingGui or self._parameterNode is None or index < 0:
            return
        data = self.ui.modelComboBox.itemData(index) or ""
        actions = {IMPORT_MODEL_ITEM: self.onImportModel, IMPORT_OFFICIAL_ITEM: self.onImportOfficialCheckpoint}
        if data in actions:
            self._onParameterNodeModified()  # show the current model again, then open the import dialog
            qt.QTimer.singleShot(0, actions[data])
            return
        self._parameterNode.model = data

    # ------------------------------------------------------------------ models
    def refreshModels(self, refreshCatalog=False):
        # never re-raises (tryWithErrorDisplay would): setup(), enter() and the poll path call this; a catalog that
        # cannot be read leaves the built-in and installed models listed and is logged (RepUXSegmentLib.models.CatalogCache)
        with reportErrors(_("Failed to list the RepUX models."), slicer.util.errorDisplay):
            self._models = self.logic.models(wait=CATALOG_WAIT_SECONDS, refresh=refreshCatalog)
            self._reportCatalogState()
            with self._syncing():
                fillCombo(self.ui.modelComboBox, modelChoices(self._models, _))
            self._fillModelsTable()
            self.ui.storeFolderLabel.text = _("Model store: {folder}").format(folder=str(self.logic.modelStoreFolder()))
            if self._parameterNode is not None:
                if not self._parameterNode.model and self._models:
                    self._parameterNode.model = defaultModelId(self._models)  # triggers the GUI update
                else:
                    self._onParameterNodeModified()

    def _reportCatalogState(self):
        """Log a catalog failure once; list the catalog's models when its background read is done."""
        error = self.logic.catalogError()
        if error and error != self._catalogErrorShown:
            self._appendLog(_("The model catalog cannot be read; only the built-in and installed models are listed: {error}").format(error=error))
        self._catalogErrorShown = error
        if self.logic.catalogPending() and not self._catalogTimerActive:
            self._catalogTimerActive = True
            qt.QTimer.singleShot(500, self._onCatalogTimer)

    def _onCatalogTimer(self):
        self._catalogTimerActive = False
        if self.logic.catalogPending():
            self._catalogTimerActive = True
            qt.QTimer.singleShot(500, self._onCatalogTimer)
        else:
            self.refreshModels()

    def _fillModelsTable(self):
        fillTable(self.ui.modelsTable, modelTableRows(self._models, _), qt.QTableWidgetItem)
        self._updateModelButtons()

    def _selectedModel(self):
        row = selectedRow(self.ui.modelsTable)
        return self._models[row] if row is not None and 0 <= row < len(self._models) else None

    def _updateModelButtons(self):
        setWidgetStates(self.ui, modelButtonStates(self._selectedModel(), idle=self._task is None))

    def _organItems(self):
        p = self._parameterNode
        info = findModel(p.model, self._models) if p is not None else None
        return organItems(info.labels if info is not None else (), parseUncheckedOrgans(p.uncheckedOrgans) if p is not None else ())

    def _fillOrganList(self):
        """The organ checklist: the model card's organs, checked unless the user unchecked them.  Rebuilt only when the
        organs change (another model): any other parameter-node change only updates check states, so the list keeps
        its scroll position and focus."""
        rows = [(name, name, checked) for name, checked in self._organItems()]
        listWidget = self.ui.organsListWidget
        current = _checklist(listWidget)
        with self._syncing():
            if [row[:2] for row in current] != [row[:2] for row in rows]:
                fillChecklist(listWidget, rows, _checkItem)
                return
            for index, (row, shown) in enumerate(zip(rows, current)):
                if row[2] != shown[2]:
                    listWidget.item(index).setCheckState(qt.Qt.Checked if row[2] else qt.Qt.Unchecked)

    def _onOrganToggled(self, item):
        if self._syncingGui or self._parameterNode is None:
            return
        self._parameterNode.uncheckedOrgans = uncheckedOrgansText(_checklist(self.ui.organsListWidget))

    def _updateModelInfo(self):
        info = findModel(self._parameterNode.model, self._models) if self._parameterNode is not None else None
        self._fillOrganList()
        self.ui.modelInfoLabel.text = modelInfoText(info, _)
        if info is not None:
            self.ui.modelInfoLabel.toolTip = info.description

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a RepUX model"), "", _("RepUX model (model.json *.zip)"))
        if not path:
            return
        self._startStoreCommand(importArguments(path), _("Importing the model"))

    def onImportOfficialCheckpoint(self):
        questions = SimpleNamespace(  # the Qt dialogs; the questions and their order are in RepUXSegmentLib.panel
            openFile=lambda title, fileFilter: qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), title, "", fileFilter),
            choose=lambda title, label, items: self._askText(title, label, items=items),
            text=lambda title, label, text: self._askText(title, label, text=text),
        )
        answers = askOfficialImport(questions, _)
        if answers is None:
            return
        checkpoint, labels, modelId = answers
        if not self._ensureRequirements(slicer.util.errorDisplay):  # its dialogs: not under the wait cursor
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to convert the checkpoint."), waitCursor=True):
            workFolder = tempfile.mkdtemp(prefix="RepUX-convert-", dir=slicer.app.temporaryPath)
            arguments = convertOfficialArguments(checkpoint, labels, os.path.join(workFolder, modelId), modelId)
            self._startStoreCommand(arguments, _("Converting the checkpoint"), temporaryFolder=workFolder)

    @staticmethod
    def _askText(title, label, items=None, text=""):
        """A choice from ``items`` or a line of text; None when cancelled (QInputDialog.getItem cannot tell)."""
        return askInDialog(qt.QInputDialog(slicer.util.mainWindow()), title, label, items=items, text=text)

    def onDownloadModel(self):
        selected = self._selectedModel()
        if selected is None or selected.status != "downloadable":
            return
        self._startStoreCommand(installArguments(selected.id), _("Downloading {model}").format(model=selected.id))

    def onDeleteModel(self):
        selected = self._selectedModel()
        if selected is None or selected.status != "installed":
            return
        if not slicer.util.confirmOkCancelDisplay(
            _("Delete model '{model}' ({size:.0f} MB) from the model store?").format(model=selected.id, size=selected.sizeMB)
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to delete the model."), waitCursor=True):
            self.logic.removeModel(selected.id)
            self._appendLog(_("Deleted model {model}.").format(model=selected.id))
        self.refreshModels()

    def onOpenStoreFolder(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to open the model store folder.")):
            folder = self.logic.modelStoreFolder(create=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onInstallDependencies(self):
        self._ensureRequirements(slicer.util.errorDisplay)  # asks first: no wait cursor over its dialogs
        self._updateDependenciesLabel()
        self._detectDevices()

    def onCheckInstallation(self):
        """``repux doctor`` in the background: the report goes to the log; problems are shown once."""
        if self._task is not None:  # one background task at a time: say so instead of ignoring the press
            self.ui.statusLabel.text = _("Check installation: wait until '{task}' is finished (or cancel it), then press it again.").format(
                task=self._taskTitle
            )
            return
        self.ui.logCollapsibleButton.collapsed = False

        def onFinished(runner):
            self._clearTask()
            for line in runner.stdoutLines:
                self._appendLog(line)
            self.ui.statusLabel.text, problems = installationCheckResult(runner, _)
            if problems is not None:
                slicer.util.errorDisplay(problems)

        self._appendLog(_("Checking the installation (repux doctor)..."))
        self._setTask(self.logic.startRepuxCommand(doctorArguments(), onLog=self._onRunnerLog, onFinished=onFinished), _("Checking the installation"))

    def _updateDependenciesLabel(self):
        missing = missingRequirements(readRequirements(self.logic.requirementsPath()))
        self.ui.dependenciesLabel.text = dependenciesText(torchStatus(), missing, _)

    # ------------------------------------------------------------ background tasks
    def _setTask(self, task, title):
        self._task = task
        self._taskTitle = title
        setWidgetStates(self.ui, taskStates(title, _))
        self._updateModelButtons()
        self._startPolling()

    def _clearTask(self):
        self._task = None
        self.ui.applyButton.text = _("Apply")
        self.ui.inputsCollapsibleButton.enabled = True
        self._updateModelButtons()
        self._checkCanApply()

    def _startPolling(self):
        self._pollTimer.start()

    def _onPollTimer(self):
        # called by a QTimer: nothing may escape from here (tryWithErrorDisplay would re-raise)
        with reportErrors(_("The background RepUX task failed."), slicer.util.errorDisplay) as failed:
            if self._deviceRunner is not None:
                self._deviceRunner.processEvents()
            if self._task is not None:
                self._task.processEvents()
        if failed:
            self._deviceRunner = None
            if self._task is not None:
                self._task.cancel()
                self._clearTask()
            self.ui.statusLabel.text = _("Failed: {message}").format(message=failed.error)
        if self._task is None and self._deviceRunner is None:
            self._pollTimer.stop()

    def _startStoreCommand(self, arguments, title, then=None, temporaryFolder=None):
        self._appendLog(title)

        def onFinished(runner):
            self._clearTask()
            if temporaryFolder:
                shutil.rmtree(temporaryFolder, ignore_errors=True)
            self.refreshModels()
            progress, self.ui.statusLabel.text, error = storeCommandResult(runner, title, _)
            if progress is not None:
                self.ui.progressBar.value = progress
            if error is not None:
                slicer.util.errorDisplay(error, detailedText="\n".join(runner.stderrTail))
            elif runner.succeeded and then is not None:
                with reportErrors(_("Failed to start the segmentation."), slicer.util.errorDisplay):  # in the poll path: never re-raise
                    then()

        runner = self.logic.startRepuxCommand(arguments, onProgress=self._onRunnerProgress, onLog=self._onRunnerLog, onFinished=onFinished)
        self._setTask(runner, title)

    def _onRunnerProgress(self, update):
        self._onProgress(update.fraction, update.stage, update.message, update.eta_s)

    def _onRunnerLog(self, message):
        self._onLog(message.level, message.text)

    # ------------------------------------------------------------------ apply
    def onApplyButton(self):
        if self._task is not None:
            self.onCancel()
            return
        self.ui.warningLabel.hide()
        # the questions first, without the wait cursor (installing packages, downloading the model)
        installed = self._ensureRequirements(slicer.util.errorDisplay)
        self._updateDependenciesLabel()
        if not installed:
            return
        info = findModel(self._parameterNode.model, self._models)
        download = info is not None and info.status == "downloadable"
        if download and not slicer.util.confirmOkCancelDisplay(downloadQuestion(info, _)):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            self._detectDevices()
            if download:
                self._startStoreCommand(installArguments(info.id), _("Downloading {model}").format(model=info.id), then=self._startSegmentation)
                return
            self._startSegmentation()

    def _startSegmentation(self):
        p = self._parameterNode
        job = self.logic.startSegmentation(
            p.inputVolume,
            p.model,
            device=p.device,
            quality=p.quality.value,
            roiNode=p.roi,
            largestComponent=p.largestComponent,
            outputSegmentation=p.outputSegmentation,
            onProgress=self._onProgress,
            onLog=self._onLog,
            onFinished=self._onSegmentationFinished,
            organs=chosenOrgans(self._organItems()),
        )
        self._setTask(job, _("Segmenting {volume}").format(volume=p.inputVolume.GetName()))

    def onCancel(self):
        if self._task is None:
            return
        if isinstance(self._task, BatchSegmentationJob) and self._task.state != "stopping":
            self._task.cancel()  # after the current volume; a second press stops at once
            self.ui.applyButton.text = _("Stop now")
            self.ui.statusLabel.text = _("Stopping after the current volume...")
            return
        self.ui.applyButton.text = _("Cancelling...")
        self.ui.applyButton.enabled = False
        self._task.cancel()

    def _onProgress(self, fraction, stage, message, etaSeconds):
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = progressText(stage, message, etaSeconds, _)

    def _onSegmentationFinished(self, outcome):
        self._clearTask()
        result = segmentationResult(outcome, _)
        if outcome.succeeded:
            self._lastSegmentation = outcome.segmentationNode
            self.ui.show3DButton.setSegmentationNode(outcome.segmentationNode)
            self.ui.show3DButton.enabled = True
        self.ui.progressBar.value = result["progress"]
        self.ui.statusLabel.text = result["status"]
        if result["warning"]:
            self.ui.warningLabel.text = result["warning"]
            self.ui.warningLabel.show()
        if result["error"]:
            self._showFailure(result["error"], slicer.util.errorDisplay)
        self._checkCanApply()

    # ------------------------------------------------------- several volumes
    def _fillBatchVolumes(self, caller=None, event=None):
        """The volume checklist of the batch section: every scalar volume of the scene, checked unless unchecked."""
        unchecked = {data for _text, data, checked in _checklist(self.ui.batchVolumesListWidget) if not checked}
        rows = volumeChecklistRows(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"), unchecked)
        fillChecklist(self.ui.batchVolumesListWidget, rows, _checkItem)
        # re-evaluate the buttons now: the input selector's scene model observes the scene at a higher priority, so
        # the parameter-node update it causes ran before this refill (filling the list emits no itemChanged)
        self._checkCanApply()

    def _checkedBatchVolumes(self):
        ids = [data for _text, data, checked in _checklist(self.ui.batchVolumesListWidget) if checked]
        return [node for node in (slicer.mrmlScene.GetNodeByID(i) for i in ids) if node is not None]

    def onBatchApply(self):
        if not self._ensureRequirements(slicer.util.errorDisplay):  # its dialogs: not under the wait cursor
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation of several volumes."), waitCursor=True):
            p = self._parameterNode
            volumes = self._checkedBatchVolumes()
            self._statisticsCases = []
            self.ui.statisticsTable.setRowCount(0)
            self.ui.exportStatisticsButton.enabled = False
            job = self.logic.startBatchSegmentation(
                volumes,
                p.model,
                device=p.device,
                quality=p.quality.value,
                largestComponent=p.largestComponent,
                organs=chosenOrgans(self._organItems()),
                statistics=self.ui.batchStatisticsCheckBox.checked,
                onProgress=self._onProgress,
                onCaseFinished=self._onBatchCaseFinished,
                onLog=self._onLog,
                onFinished=self._onBatchFinished,
            )
            self._setTask(job, _("Segmenting {count} volumes").format(count=len(volumes)))

    def _onBatchCaseFinished(self, case):
        if case.status != "done":
            return
        self._statisticsCases.append(case)
        table = self.ui.statisticsTable
        table.sortingEnabled = False
        for row in statisticsTableRows([case]):
            index = table.rowCount
            table.insertRow(index)
            for column, text in enumerate(row):
                table.setItem(index, column, qt.QTableWidgetItem(text))
        table.sortingEnabled = True
        self.ui.exportStatisticsButton.enabled = any(c.statistics for c in self._statisticsCases)

    def _onBatchFinished(self, outcome):
        self._clearTask()
        done = len(outcome.done)
        self.ui.progressBar.value = 100 if done == len(outcome.cases) else self.ui.progressBar.value
        self.ui.statusLabel.text = batchFinishedText(outcome, _)
        if outcome.status == "failed":
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(failedVolumesText(outcome, _))

    def onExportStatistics(self):
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export statistics"), "repux-statistics.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Failed to export the statistics.")):
                writeStatisticsCsv(self._statisticsCases, path)
                self.ui.statusLabel.text = _("Statistics saved to {path}").format(path=path)

    # ---------------------------------------------------------------- results
    def _resultSegmentation(self):
        node = self._lastSegmentation
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            return node
        return None

    def _addExportDicomSegButton(self):
        """The "Export DICOM SEG..." button beside "Edit": the result of a volume loaded from Slicer's DICOM database (logic: RepUXSegmentLib.dicomexport)."""
        self.exportDicomSegButton = qt.QPushButton(_("Export DICOM SEG..."))
        self.exportDicomSegButton.toolTip = _(
            "Save the segmentation as a DICOM SEG referencing the input's DICOM series (load it back with the DICOM module and QuantitativeReporting)."
        )
        layout = getattr(self.ui, "resultButtonsLayout", None) or self.ui.editButton.parentWidget().layout()
        layout.addWidget(self.exportDicomSegButton)
        self.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)

    def onExportDicomSeg(self):
        segmentationNode = self._resultSegmentation()
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if segmentationNode is None or volumeNode is None:
            slicer.util.warningDisplay(_("Segment a volume loaded from the DICOM database first."))
            return
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export DICOM SEG"), f"{segmentationNode.GetName()}.dcm", "DICOM (*.dcm)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Failed to export the DICOM SEG.")):
                self.logic.exportDicomSeg(segmentationNode, volumeNode, path)
                self.ui.statusLabel.text = _("DICOM SEG saved to {path}").format(path=path)

    def onEditButton(self):
        segmentationNode = self._resultSegmentation()
        if segmentationNode is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to open the Segment Editor.")):
            volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(segmentationNode)
            if volumeNode is not None:
                setSourceVolume = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
                setSourceVolume(volumeNode)

    # ------------------------------------------------------------------ click to segment
    def _setupClickSection(self):
        """A collapsible "Click to segment" section: Initialize, a point list with +/- placement, Undo, a status line."""
        import ctk

        self._clickTool = None
        self._clickTimer = qt.QTimer()
        self._clickTimer.setInterval(50)
        self._clickTimer.connect("timeout()", self._onClickTimer)
        box = ctk.ctkCollapsibleButton()
        box.text = _("Click to segment")
        box.collapsed = True
        form = qt.QFormLayout(box)
        self._clickInitializeButton = qt.QPushButton(_("Initialize"))
        self._clickInitializeButton.toolTip = _("Start the engine session on the input volume and model (the model and volume stay in memory)")
        self._clickInitializeButton.connect("clicked(bool)", self.onClickInitialize)
        form.addRow(self._clickInitializeButton)
        self._clickPlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        self._clickPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self._clickPlaceWidget.buttonsVisible = False
        self._clickPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self._clickPlaceWidget.enabled = False
        self._clickPositiveButton = qt.QPushButton(_("+ organ"))
        self._clickPositiveButton.checkable = True
        self._clickPositiveButton.checked = True
        self._clickPositiveButton.toolTip = _(
            "+: a click selects the organ under it; -: a click removes the selected blob under it (shortcut: Shift+S toggles)"
        )
        self._clickPositiveButton.connect("toggled(bool)", self._onClickPolarity)
        self._clickUndoButton = qt.QPushButton(_("Undo"))
        self._clickUndoButton.shortcut = qt.QKeySequence("Ctrl+Shift+Z")
        self._clickUndoButton.connect("clicked(bool)", self.onClickUndo)
        row = qt.QHBoxLayout()
        row.addWidget(self._clickPlaceWidget)
        row.addWidget(self._clickPositiveButton)
        row.addWidget(self._clickUndoButton)
        form.addRow(_("Click:"), row)
        self._clickOrganCombo = qt.QComboBox()
        self._clickOrganCombo.toolTip = _("A positive click selects the organ under it, or grows / corrects the organ chosen here")
        self._clickOrganCombo.connect("currentIndexChanged(int)", self._onClickOrgan)
        form.addRow(_("Organ:"), self._clickOrganCombo)
        self._clickPolarityShortcut = qt.QShortcut(qt.QKeySequence("Shift+S"), slicer.util.mainWindow() or box)
        self._clickPolarityShortcut.connect("activated()", lambda: self._clickPositiveButton.toggle())
        self._clickStatusLabel = qt.QLabel(_("Press Initialize, then click an organ in a slice view."))
        self._clickStatusLabel.wordWrap = True
        form.addRow(self._clickStatusLabel)
        self.layout.insertWidget(max(self.layout.count() - 1, 0), box)

    def onClickInitialize(self):
        from RepUXSegmentLib.clicksession import ClickSegmentTool, clickPointList
        from RepUXSegmentLib.mrml import MRMLContext

        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if volume is None:
            self._clickStatusLabel.text = _("Choose the input volume first.")
            return
        self._stopClickTool()
        points = clickPointList(slicer.mrmlScene)
        model = self._parameterNode.model or None
        device = self._parameterNode.device or "auto"
        self._clickTool = ClickSegmentTool(
            MRMLContext.fromSlicer(), volume, points, self._parameterNode.outputSegmentation, model=model, device=device,
            onOutcome=self._onClickOutcome, onProgress=lambda u: setattr(self._clickStatusLabel, "text", f"{u.message} ({100 * u.fraction:.0f} %)"),
        )  # fmt: skip
        try:
            self._clickTool.start()
        except Exception as err:  # noqa: BLE001 - shown in the status line
            self._clickStatusLabel.text = _("Could not start the session: {error}").format(error=err)
            self._clickTool = None
            return
        self._clickPlaceWidget.setCurrentNode(points)
        self._clickPlaceWidget.enabled = True
        self._clickStatusLabel.text = _("Starting the session (loading the model and the volume)...")
        self._clickTimer.start()

    def _onClickPolarity(self, positive):
        self._clickPositiveButton.text = _("+ organ") if positive else _("- remove")
        if self._clickTool is not None:
            self._clickTool.positive = bool(positive)

    def _onClickOrgan(self, index):
        if self._clickTool is not None:
            self._clickTool.organ = self._clickOrganCombo.itemData(index) or None

    def _fillClickOrgans(self):
        from RepUXSegmentLib.widgethelpers import fillCombo

        names = [spec.name for _, spec in sorted(self._clickTool.specs.items())] if self._clickTool is not None else []
        self._clickOrganCombo.blockSignals(True)
        fillCombo(self._clickOrganCombo, [(_("(the organ under the click)"), ""), *((n, n) for n in names)])
        self._clickOrganCombo.blockSignals(False)
        self._onClickOrgan(0)

    def onClickUndo(self):
        if self._clickTool is None or not self._clickTool.undo():
            self._clickStatusLabel.text = _("Nothing to undo.")

    def _onClickTimer(self):
        if self._clickTool is not None and not self._clickTool.processEvents():
            self._clickTimer.stop()

    def _onClickOutcome(self, outcome):
        self._clickStatusLabel.text = outcome.describe()
        if outcome.status == "opened":
            self._fillClickOrgans()  # the session's model's organs
        if self._clickTool is not None and self._clickTool.segmentationNode is not None and self._parameterNode.outputSegmentation is None:
            self._parameterNode.outputSegmentation = self._clickTool.segmentationNode

    def _stopClickTool(self):
        tool = getattr(self, "_clickTool", None)
        if tool is not None:
            tool.stop()
            self._clickTool = None
        timer = getattr(self, "_clickTimer", None)
        if timer is not None:
            timer.stop()


class RepUXSegmentLogic(SegmentLogic, ScriptedLoadableModuleLogic):
    """Scripting entry points (RepUXSegmentLib.logic.SegmentLogic) plus the module's parameter node.

    Example (Python console)::

        import RepUXSegment
        logic = RepUXSegment.RepUXSegmentLogic()
        logic.setupPythonRequirements()  # once: PyTorch (PyTorch extension) and MONAI & co. (pip), asks first
        segmentation = logic.segment(slicer.util.getNode("CTAAbdomenPanoramix"), model="repux-amos", device="auto")
    """

    def __init__(self):
        SegmentLogic.__init__(self)
        ScriptedLoadableModuleLogic.__init__(self)  # cooperative: its super().__init__() goes on to object

    def getParameterNode(self):
        return RepUXSegmentParameterNode(super().getParameterNode())


#
# RepUXSegmentTest
#


class RepUXSegmentTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the CPU with an untrained tiny model and a synthetic CT (about a minute); the steps are in
    RepUXSegmentLib.selftest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSyntheticVolume()
        self.setUp()
        self.test_RoiRestrictsProcessing()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def test_SegmentSyntheticVolume(self):
        selftest.segmentSyntheticVolume(self, RepUXSegmentLogic)

    def test_RoiRestrictsProcessing(self):
        selftest.roiRestrictsProcessing(self, RepUXSegmentLogic)

    def test_CancelLeavesSceneUnchanged(self):
        selftest.cancelLeavesSceneUnchanged(self, RepUXSegmentLogic)
