"""RepUXTrainer: annotate -> fine-tune -> re-segment, with RepUX-Net in 3D Slicer.

This file is thin on purpose: the module description, the widget (GUI only), a logic
wrapper and the self-test.  Everything else lives in the Qt-free ``RepUXTrainerLib``
package (training set, label mapping, fine-tuning job, live plot, uncertainty ranking),
in ``RepUXSegmentLib`` (process runner, MRML helpers, model listing) and in the ``repux``
engine, which trains in a background ``PythonSlicer -m repux finetune`` process.
"""

import logging
import os
from typing import Annotated

import qt
import slicer
from RepUXSegmentLib.dependencies import ensureDependencies
from RepUXSegmentLib.widgethelpers import (
    ModuleWidgetMixin,
    askInDialog,
    fillCombo,
    fillTable,
    modelChoices,
    reportErrors,
    selectComboData,
    selectedRow,
    setWidgetStates,
    startRepuxCommand,
)
from RepUXTrainerLib import selftest
from RepUXTrainerLib.logic import TrainerLogic
from RepUXTrainerLib.mapping import segmentsOf
from RepUXTrainerLib.panel import (
    IGNORE_ITEM,  # noqa: F401 (the module's names of the mapping-table choices, kept for scripts)
    NEW_CLASS_ITEM,  # noqa: F401
    applyMappingChoice,
    buttonStates,
    caseTableRows,
    chooseResumeRun,
    finetuneFinishedText,
    finetuneProgressText,
    finetuneSettings,
    mappingRows,
    rankingTableRows,
    resegmentFinishedText,
    resultModelText,
    trainingSetInfoText,
)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)

#: QSettings keys (remembered across sessions)
SETTINGS_TRAINING_SET = "RepUXTrainer/TrainingSetFolder"
SETTINGS_CANDIDATE_FOLDER = "RepUXTrainer/CandidateFolder"

#
# RepUXTrainer
#


class RepUXTrainer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RepUX Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["RepUXSegment"]
        self.parent.contributors = ["RepUX developers"]
        self.parent.helpText = _(
            "Improve a RepUX-Net model with your own corrected segmentations. Add cases (a CT volume and its corrected "
            "segmentation) to a training set folder, fine-tune a model on them in a background process (Stop writes a "
            "checkpoint, Resume continues), watch the loss and validation Dice live, then re-segment with the new model, "
            "which also appears in RepUX Segment. Next case ranks unannotated volumes by the model's uncertainty so you "
            "correct the most informative one first. For research use only, not for diagnosis. "
            'See <a href="https://github.com/RepUX/SlicerRepUX">the documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "RepUX-Net: Lee H.H. et al., Scaling Up 3D Kernels with Bayesian Frequency Re-parameterization for "
            "Medical Image Segmentation, MICCAI 2023 (arXiv:2303.05785). Training uses MONAI and PyTorch."
        )


#
# Parameter node
#


@parameterNodeWrapper
class RepUXTrainerParameterNode:
    """GUI state saved with the scene (the training-set folder is remembered in the application settings).

    inputVolume, inputSegmentation - the case to add (and the volume to re-segment).
    addUnknownAsNewClasses - add segments that match no class as new classes.
    baseModel, newModelId - model to fine-tune and id of the result ("" = automatic).
    maxIterations, timeBudgetMinutes (0 = none), device, learningRate, freezeEncoderIterations,
    valFraction, validationInterval - fine-tuning settings.
    resultModel - id of the latest fine-tuned model.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    addUnknownAsNewClasses: bool = False
    baseModel: str = ""
    newModelId: str = ""
    # the ranges of the .ui spin boxes: parameterNodeWrapper sets a bound spin box's range from these
    # (without them it resets it to the whole int / float range)
    maxIterations: Annotated[int, WithinRange(1, 1000000)] = 300
    timeBudgetMinutes: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    device: str = "auto"
    learningRate: Annotated[float, WithinRange(1e-06, 0.1)] = 0.0002
    freezeEncoderIterations: Annotated[int, WithinRange(0, 1000000)] = 0
    valFraction: Annotated[float, WithinRange(0.0, 0.9)] = 0.2
    validationInterval: Annotated[int, WithinRange(1, 1000000)] = 50
    resultModel: str = ""


#
# RepUXTrainerWidget
#


class RepUXTrainerWidget(ModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel; all work is delegated to RepUXTrainerLogic / RepUXTrainerLib."""

    tr = staticmethod(_)  # translation of the shared helpers' texts

    def __init__(self, parent=None):
        # attributes first: ScriptedLoadableModuleWidget.__init__ calls setup() itself when parent is None
        VTKObservationMixin.__init__(self)
        self._initSharedState()  # parameter node, device detection, poll timer (RepUXSegmentLib.widgethelpers.ModuleWidgetMixin)
        self.logic = None
        self._models = []
        self._mapping = None
        self._mappedSegmentation = None
        self._caseRows = []
        self._candidates = []
        self._resumableRuns = []
        ScriptedLoadableModuleWidget.__init__(self, parent)

    # ------------------------------------------------------------------ set-up
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RepUXTrainer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RepUXTrainerLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self._onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.openTrainingSetButton.connect("clicked(bool)", self.onOpenTrainingSet)
        self.ui.casesTable.connect("itemSelectionChanged()", self._updateButtons)
        self.ui.reviewCaseButton.connect("clicked(bool)", self.onReviewCase)
        self.ui.renameCaseButton.connect("clicked(bool)", self.onRenameCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.addUnknownCheckBox.connect("toggled(bool)", self._onAddUnknownToggled)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.baseModelComboBox.connect("currentIndexChanged(int)", self.onBaseModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.showChartButton.connect("clicked(bool)", self.onShowChart)
        self.ui.resegmentButton.connect("clicked(bool)", self.onResegment)
        self.ui.candidateSourceComboBox.connect("currentIndexChanged(int)", self._updateButtons)
        self.ui.rankButton.connect("clicked(bool)", self.onRank)
        self.ui.candidatesTable.connect("itemSelectionChanged()", self._updateButtons)
        self.ui.showUncertaintyButton.connect("clicked(bool)", self.onShowUncertainty)

        for table in (self.ui.casesTable, self.ui.mappingTable, self.ui.candidatesTable):
            table.horizontalHeader().setStretchLastSection(True)
        self.ui.trainingSetPathLineEdit.settingKey = "RepUXTrainer/TrainingSetFolderHistory"
        self.ui.candidateFolderPathLineEdit.settingKey = "RepUXTrainer/CandidateFolderHistory"
        settings = qt.QSettings()
        self.ui.trainingSetPathLineEdit.currentPath = settings.value(SETTINGS_TRAINING_SET, "")
        self.ui.candidateFolderPathLineEdit.currentPath = settings.value(SETTINGS_CANDIDATE_FOLDER, "")
        self._setDeviceChoices([])
        self.refreshModels()
        self.initializeParameterNode()
        self._openRememberedTrainingSet()
        self._detectDevices()
        self._refreshResumableRuns()

    def cleanup(self):
        if self.logic is not None:
            # a running fine-tuning is stopped with a checkpoint (Resume continues it next time); the application
            # exit waits for it, up to 2 minutes: say so in a progress dialog
            dialog = []

            def onWaiting(waited, atMost):
                if not dialog:
                    dialog.append(
                        slicer.util.createProgressDialog(
                            labelText=_("Stopping the fine-tuning: its checkpoint is being written (at most {minutes:.0f} minutes)...").format(
                                minutes=atMost / 60
                            ),
                            maximum=int(atMost),
                            windowTitle=_("RepUX Trainer"),
                        )
                    )
                dialog[0].value = int(waited)
                slicer.app.processEvents()

            try:
                self.logic.shutdown(onWaiting=onWaiting)
            finally:
                if dialog:
                    dialog[0].close()
        self._stopBackground()

    def enter(self):
        self.initializeParameterNode()
        self.refreshModels()
        self._refreshResumableRuns()

    def _refreshResumableRuns(self):
        """Runs stopped in this or an earlier session that Resume can continue (scanned now, not on every GUI update)."""
        self._resumableRuns = self.logic.resumableRuns()
        self._updateButtons()

    def onSceneStartClose(self, caller, event):
        self.logic.cancelSceneJobs()  # re-segmentations and the ranking would import into the next scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.logic.job is not None and self.logic.job.running:
            self.logic.reattachPlot()  # the training goes on; its plot nodes went with the scene
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            candidates = self.logic.sceneCandidates()
            if candidates:
                p.inputVolume = candidates[0].volumeNode
        if not p.baseModel and self._models:
            p.baseModel = self._models[0].id

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        if p is not None:
            with self._syncing():
                selectComboData(self.ui.baseModelComboBox, p.baseModel)
                selectComboData(self.ui.deviceComboBox, p.device)
            if p.inputSegmentation is not self._mappedSegmentation:
                self._refreshMapping()
            self.ui.resultModelLabel.text = resultModelText(p.resultModel, _)
        self._updateButtons()

    def onBaseModelChanged(self, index):
        if not self._syncingGui and self._parameterNode is not None and index >= 0:
            self._parameterNode.baseModel = self.ui.baseModelComboBox.itemData(index) or ""

    # ------------------------------------------------------------------ state
    def _selectedCase(self):
        row = selectedRow(self.ui.casesTable)
        return self._caseRows[row] if row is not None and row < len(self._caseRows) else None

    def _selectedCandidate(self):
        row = selectedRow(self.ui.candidatesTable)
        return self._candidates[row] if row is not None and row < len(self._candidates) else None

    def _updateButtons(self, *args):
        if self.logic is None:
            return
        states = buttonStates(
            self.logic,
            self._parameterNode,
            hasCase=self._selectedCase() is not None,
            hasMapping=self._mapping is not None,
            resumableRuns=self._resumableRuns,
            candidatesFromFolder=self.ui.candidateSourceComboBox.currentIndex == 1,
            hasCandidate=self._selectedCandidate() is not None,
            tr=_,
        )
        setWidgetStates(self.ui, states)

    def _startPolling(self):
        if not self._pollTimer.isActive():
            self._pollTimer.start()
        self._updateButtons()

    def _onPollTimer(self):
        # called by a QTimer: nothing may escape from here (tryWithErrorDisplay would re-raise)
        busy = False
        with reportErrors(_("The background RepUX task failed."), slicer.util.errorDisplay) as failed:
            if self._deviceRunner is not None:
                self._deviceRunner.processEvents()
            busy = self.logic.processEvents()
        if failed:
            self._deviceRunner = None
            self.ui.statusLabel.text = _("Failed: {message}").format(message=failed.error)
        if not busy and self._deviceRunner is None:
            self._pollTimer.stop()
        self._updateButtons()

    # ------------------------------------------------------------ models/devices
    def refreshModels(self):
        # never re-raises (tryWithErrorDisplay would): setup(), enter() and the poll path call this; only installed
        # models are listed (the catalog is not read)
        with reportErrors(_("Failed to list the RepUX models."), slicer.util.errorDisplay):
            self._models = self.logic.models()
            with self._syncing():
                fillCombo(self.ui.baseModelComboBox, modelChoices(self._models, _, importActions=False))
            self._onParameterNodeModified()

    def _refreshOtherModules(self):
        """The RepUX Segment panel lists the new model at once (if it was opened already)."""
        segmentWidget = getattr(slicer.modules, "RepUXSegmentWidget", None)
        if segmentWidget is not None and hasattr(segmentWidget, "refreshModels"):
            segmentWidget.refreshModels()

    # ------------------------------------------------------------ training set
    def _openRememberedTrainingSet(self):
        """Reopen last session's training set; a broken one must not stop the module from opening (one message, no popup)."""
        folder = self.ui.trainingSetPathLineEdit.currentPath
        failed = None
        if folder and os.path.isfile(os.path.join(folder, "repux-dataset.json")):
            message = _("The training set of the last session ({folder}) cannot be opened; choose a folder again.").format(folder=folder)
            with reportErrors(message) as failed:
                self.logic.openTrainingSet(folder)
        self._refreshCases()
        if failed:
            self.ui.trainingSetInfoLabel.text = failed.message
            self._appendLog(failed.message)

    def onOpenTrainingSet(self):
        folder = self.ui.trainingSetPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to open the training set."), waitCursor=True):
            self.logic.openTrainingSet(folder, model=self._parameterNode.baseModel or None)
            self.ui.trainingSetPathLineEdit.addCurrentPathToHistory()
            qt.QSettings().setValue(SETTINGS_TRAINING_SET, folder)
            self._appendLog(_("Training set {folder}: {count} cases.").format(folder=folder, count=len(self.logic.trainingSet)))
        self._refreshCases()
        self._refreshMapping()

    def _refreshCases(self):
        trainingSet = self.logic.trainingSet
        self._caseRows = self.logic.cases()
        fillTable(self.ui.casesTable, caseTableRows(self._caseRows, _), qt.QTableWidgetItem)
        self.ui.trainingSetInfoLabel.text = trainingSetInfoText(trainingSet, _)
        self._updateButtons()

    def _refreshMapping(self, addUnknown=None):
        p = self._parameterNode
        segmentation = p.inputSegmentation if p is not None else None
        self._mappedSegmentation = segmentation
        table = self.ui.mappingTable
        table.setRowCount(0)
        self._mapping = None
        if segmentation is None or self.logic.trainingSet is None:
            self._updateButtons()
            return
        self._mapping = self.logic.mapSegments(segmentation)
        if p.addUnknownAsNewClasses if addUnknown is None else addUnknown:
            self._mapping.addUnknownAsNewClasses(True)
        rows = mappingRows(self._mapping, self.logic.trainingSet.labels.names, _)
        table.setRowCount(len(rows))
        for row, mappingRow in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(mappingRow["segment"]))
            combo = qt.QComboBox()
            fillCombo(combo, mappingRow["choices"])
            combo.currentIndex = max(combo.findData(mappingRow["current"]), 0)
            combo.connect("currentIndexChanged(int)", lambda index, row=row, combo=combo: self._onMappingChanged(row, combo.itemData(index)))
            table.setCellWidget(row, 1, combo)
            item = qt.QTableWidgetItem(mappingRow["how"])
            if not mappingRow["known"]:
                item.setForeground(qt.QBrush(qt.QColor("darkorange")))
            table.setItem(row, 2, item)
        table.resizeColumnsToContents()
        self._updateButtons()

    def _onMappingChanged(self, row, data):
        applyMappingChoice(self._mapping, row, data)

    def _onAddUnknownToggled(self, checked):
        self._refreshMapping(addUnknown=checked)  # the parameter node may not have the new value yet

    def onAddCase(self):
        p = self._parameterNode
        if self._mapping is not None and not self._mapping.matches(segmentsOf(p.inputSegmentation)):
            self._refreshMapping()
            slicer.util.infoDisplay(
                _("The segments changed since the mapping was shown. Check the mapping, then press Add again."), windowTitle=_("RepUX Trainer")
            )
            return
        export = None
        with slicer.util.tryWithErrorDisplay(_("Failed to add the case."), waitCursor=True):
            export = self.logic.addCase(p.inputVolume, p.inputSegmentation, mapping=self._mapping)
            for line in export.messages():
                self._appendLog(line)
            self.ui.statusLabel.text = _("Added case '{case}'.").format(case=export.caseId)
        if export is not None and export.resampled:  # after the wait cursor is gone
            slicer.util.infoDisplay(
                _("The segmentation was on another grid than the volume and was resampled onto the volume's voxels:\n{how}").format(how=export.resampled),
                windowTitle=_("RepUX Trainer"),
            )
        self._refreshCases()
        self._refreshMapping()

    def onReviewCase(self):
        case = self._selectedCase()
        if case is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the case."), waitCursor=True):
            volume, segmentation = self.logic.loadCase(case.id)
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            self._parameterNode.inputVolume = volume
            self._parameterNode.inputSegmentation = segmentation

    def onRenameCase(self):
        case = self._selectedCase()
        if case is None:
            return
        name = qt.QInputDialog.getText(slicer.util.mainWindow(), _("Rename case"), _("New name:"), qt.QLineEdit.Normal, case.name)
        if not name or not name.strip():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to rename the case.")):
            self.logic.renameCase(case.id, name)
        self._refreshCases()

    def onRemoveCase(self):
        case = self._selectedCase()
        if case is None:
            return
        if not slicer.util.confirmOkCancelDisplay(_("Remove case '{case}' and delete its two files?").format(case=case.name)):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to remove the case.")):
            self.logic.removeCase(case.id)
        self._refreshCases()

    # ----------------------------------------------------------------- fine-tune
    def onStart(self):
        p = self._parameterNode
        if not self._ensureRequirements(slicer.util.errorDisplay):  # its dialogs: not under the wait cursor
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            self.ui.logTextEdit.clear()
            self.logic.startFinetune(
                p.baseModel,
                p.newModelId.strip() or None,
                onProgress=self._onFinetuneProgress,
                onLog=self._onLog,
                onFinished=self._onFinetuneFinished,
                **finetuneSettings(p),
            )
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Preparing the data...")
            self.onShowChart()
            self._startPolling()

    def onStop(self):
        self.logic.stopFinetune()
        self.ui.statusLabel.text = _("Stopping after the current iteration (a checkpoint is written)...")
        self._updateButtons()

    def onResume(self):
        run = None
        if self.logic.job is None:  # a run stopped in an earlier session: which one (asked before the wait cursor)
            # not QInputDialog.getItem: it returns the current item on Cancel (PythonQt has no ok flag)
            ask = lambda names: askInDialog(qt.QInputDialog(slicer.util.mainWindow()), _("Resume fine-tuning"), _("Stopped run:"), items=names)
            run = chooseResumeRun(self._resumableRuns, ask)
            if run is None:
                return
        with slicer.util.tryWithErrorDisplay(_("Failed to resume fine-tuning."), waitCursor=True):
            runDirectory = str(run.resolvedRunDirectory()) if run is not None else None
            self.logic.resumeFinetune(runDirectory=runDirectory, onProgress=self._onFinetuneProgress, onLog=self._onLog, onFinished=self._onFinetuneFinished)
            self.ui.statusLabel.text = _("Resuming...")
            self.onShowChart()
            self._startPolling()

    def _onFinetuneProgress(self, update):
        self.ui.progressBar.value = round(100 * update.fraction)
        self.ui.statusLabel.text = finetuneProgressText(self.logic.progress, update, _)

    def _onFinetuneFinished(self, outcome):
        if outcome.succeeded:
            # the scene may have been closed while the run went on (the widget then has no parameter node): the
            # result goes to the current scene's one
            p = self._parameterNode if self._parameterNode is not None else self.logic.getParameterNode()
            p.resultModel = outcome.modelId
            self.ui.progressBar.value = 100
        self.ui.statusLabel.text = finetuneFinishedText(outcome, _)
        if outcome.succeeded:
            self.refreshModels()
            self._refreshOtherModules()
            self.ui.resultCollapsibleButton.collapsed = False
        elif outcome.status not in ("stopped", "cancelled"):
            self._showFailure(_("Fine-tuning failed:\n{message}").format(message=outcome.errorMessage), slicer.util.errorDisplay)
        self._refreshResumableRuns()

    def onShowChart(self):
        plot = self.logic.plot
        if plot is None:
            return
        # never re-raises: onStart and onResume call this inside their own error display (one message, not two)
        with reportErrors(_("Failed to show the training plot."), slicer.util.errorDisplay):
            slicer.modules.plots.logic().ShowChartInLayout(plot.chartNode)

    # ---------------------------------------------------------------- new model
    def onResegment(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            volume = p.inputVolume
            self.logic.startResegmentation(
                volume,
                p.resultModel,
                device=p.device,
                onProgress=lambda fraction, stage, message, eta: setattr(self.ui.progressBar, "value", round(100 * fraction)),
                onLog=self._onLog,
                onFinished=self._onResegmentFinished,
            )
            self.ui.statusLabel.text = _("Segmenting {volume} with {model}...").format(volume=volume.GetName(), model=p.resultModel)
            self._startPolling()

    def _onResegmentFinished(self, outcome):
        if outcome.succeeded:
            self.ui.statusLabel.text = resegmentFinishedText(outcome, _)
        elif outcome.status != "cancelled":
            slicer.util.errorDisplay(_("Segmentation failed:\n{message}").format(message=outcome.errorMessage))
        self._updateButtons()

    # ---------------------------------------------------------------- next case
    def onRank(self):
        ranking = self.logic.ranking
        if ranking is not None and ranking.running:
            ranking.cancel()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to rank the volumes."), waitCursor=True):
            if self.ui.candidateSourceComboBox.currentIndex == 1:
                folder = self.ui.candidateFolderPathLineEdit.currentPath
                candidates = self.logic.folderCandidates(folder)
                qt.QSettings().setValue(SETTINGS_CANDIDATE_FOLDER, folder)
            else:
                candidates = self.logic.sceneCandidates()
            self._candidates = []
            self.ui.candidatesTable.setRowCount(0)
            self.logic.startRanking(
                candidates,
                model=p.resultModel or p.baseModel,
                device=p.device,
                onProgress=lambda done, total, candidate: setattr(self.ui.statusLabel, "text", _("Uncertainty: {done}/{total}").format(done=done, total=total)),
                onLog=self._onLog,
                onFinished=self._onRankingFinished,
            )
            self._startPolling()

    def _onRankingFinished(self, ranking):
        self._candidates = ranking.ranked()
        fillTable(self.ui.candidatesTable, rankingTableRows(self._candidates, _), qt.QTableWidgetItem)
        if self._candidates and self._candidates[0].meanEntropy is not None:
            self.ui.candidatesTable.selectRow(0)
            self.ui.statusLabel.text = _("Most uncertain: {name}. Correct it next.").format(name=self._candidates[0].name)
        self._updateButtons()

    def onShowUncertainty(self):
        candidate = self._selectedCandidate()
        if candidate is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to show the uncertainty map."), waitCursor=True):
            volume, overlay = self.logic.showUncertainty(candidate)
            slicer.util.setSliceViewerLayers(background=volume, foreground=overlay, foregroundOpacity=0.5, fit=True)
            self._parameterNode.inputVolume = volume


#
# RepUXTrainerLogic
#


class RepUXTrainerLogic(TrainerLogic, ScriptedLoadableModuleLogic):
    """Scripting entry points; the work is done by RepUXTrainerLib.logic.TrainerLogic.

    Example (Python console)::

        import RepUXTrainer
        logic = RepUXTrainer.RepUXTrainerLogic()
        logic.setupPythonRequirements()
        logic.openTrainingSet("/data/liver-corrections", model="repux-amos")   # created with the model's organs
        logic.addCase(getNode("CT1"), getNode("CT1 segmentation"))
        logic.addCase(getNode("CT2"), getNode("CT2 segmentation"), addNewClasses=True)
        outcome = logic.finetune(maxIterations=200, device="auto")          # blocking
        job = logic.startFinetune(maxIterations=200)                         # or in the background:
        logic.processEvents(); logic.progress.rows[-1].loss                  # pump, read progress
        logic.stopFinetune(wait=True); logic.resumeFinetune()                # checkpoint, continue
        logic.resegment(getNode("CT3"), outcome.modelId)
        ranked = logic.rankCandidates()                                      # next case: most uncertain first
        logic.showUncertainty(ranked[0])
    """

    def __init__(self):
        TrainerLogic.__init__(self)
        # Slicer's ScriptedLoadableModuleLogic.__init__ calls super().__init__(): with TrainerLogic before it in the
        # MRO that goes on to object, so TrainerLogic.__init__ runs once
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return RepUXTrainerParameterNode(super().getParameterNode())

    @staticmethod
    def requirementsPath():
        """RepUXSegment's requirements file (the engine's Python packages), next to RepUXSegmentLib."""
        import RepUXSegmentLib

        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(RepUXSegmentLib.__file__))), "Resources", "requirements.txt")

    def setupPythonRequirements(self, askConfirmation=True):
        """Install PyTorch (PyTorch extension) and MONAI & co. (pip) when missing, as RepUX Segment does."""
        ensureDependencies(self.requirementsPath(), askConfirmation=askConfirmation, requester="RepUX")

    def startRepuxCommand(self, arguments, onProgress=None, onLog=None, onFinished=None):
        """Start ``<python> -m repux <arguments>`` in the background; pump it with its ``processEvents()``."""
        return startRepuxCommand(arguments, self.pythonExecutable, onProgress=onProgress, onLog=onLog, onFinished=onFinished)

    def _startSegmentationJob(self, volumeNode, model, device, quality, onProgress, onLog, onFinished):
        """Re-segmentation goes through RepUX Segment's logic (same job, same result as its Apply button)."""
        from RepUXSegment import RepUXSegmentLogic

        segmentLogic = RepUXSegmentLogic()
        segmentLogic.pythonExecutable = self.pythonExecutable
        return segmentLogic.startSegmentation(
            volumeNode, model=model, device=device, quality=quality, onProgress=onProgress, onLog=onLog, onFinished=onFinished
        )


#
# RepUXTrainerTest
#


class RepUXTrainerTest(ScriptedLoadableModuleTest):
    """Runs the whole loop inside Slicer on the CPU (about a minute); the steps are in RepUXTrainerLib.selftest.

    The model store is redirected to a temporary folder for the test, so the user's store is untouched.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CurateCases()
        self.setUp()
        self.test_AnnotateFinetuneResegmentLoop()

    def test_CurateCases(self):
        selftest.curateCases(self, RepUXTrainerLogic)

    def test_AnnotateFinetuneResegmentLoop(self):
        selftest.annotateFinetuneResegmentLoop(self, RepUXTrainerLogic)
