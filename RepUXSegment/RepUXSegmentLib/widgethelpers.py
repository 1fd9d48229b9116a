"""What the RepUX Segment and RepUX Trainer panels share, without Qt (one copy for both widgets).

The functions take the widgets they fill as duck-typed objects (``addItem``, ``findData``,
``currentIndex``...) and the translation function ``tr``, so they are tested headless and the
module files stay thin:

* :func:`reportErrors` - the error path of a GUI action: one message, never re-raised (Slicer's
  ``slicer.util.tryWithErrorDisplay`` re-raises after showing the message, which aborts a
  ``setup()`` or escapes into a ``QTimer``);
* :func:`selectComboData` - select a combo-box entry by its data (adding it when unknown);
* :func:`deviceChoices` / :func:`fillCombo` - the device list (Auto with the GPU it picks, CPU, each
  GPU with its memory, Apple MPS, "no GPU found" once detection ran);
* :func:`modelChoices` - the model list (installed, downloadable with size, official checkpoints to
  import, and the import actions);
* :func:`organItems` / :func:`chosenOrgans` - the organ checklist (default: every organ of the model);
* :func:`startRepuxCommand` - ``<python> -m repux <arguments>`` in the background;
* :func:`setWidgetStates` / :func:`fillTable` / :func:`fillChecklist` / :func:`selectedRow` / :func:`logLine` - apply what the Qt-free
  panel functions decided (widget attributes, table rows), read a table's selection, format a log line;
* :class:`ModuleWidgetMixin` - the parameter-node and device plumbing both widgets had a copy of.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .process import ProcessRunner, childEnvironment, repuxCommand

__all__ = [
    "IMPORT_MODEL_ITEM",
    "IMPORT_OFFICIAL_ITEM",
    "ErrorReport",
    "ModuleWidgetMixin",
    "askInDialog",
    "chosenOrgans",
    "deviceChoices",
    "fillChecklist",
    "fillCombo",
    "fillTable",
    "logLine",
    "modelChoices",
    "organItems",
    "reportErrors",
    "selectComboData",
    "selectedRow",
    "setWidgetStates",
    "startRepuxCommand",
]

logger = logging.getLogger(__name__)

#: model combo box entries that open a dialog instead of selecting a model
IMPORT_MODEL_ITEM = "__import-model__"
IMPORT_OFFICIAL_ITEM = "__import-official-checkpoint__"


def _identity(text: str) -> str:
    return text


class ErrorReport:
    """What :func:`reportErrors` caught (``error`` is None when the block succeeded)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.message = ""

    def __bool__(self) -> bool:
        return self.error is not None


@contextlib.contextmanager
def reportErrors(message: str, display: Callable[..., Any] | None = None) -> Iterator[ErrorReport]:
    """Run a GUI action; on an exception show ``message`` and the error once (``display(text, detailedText=...)``),
    log the traceback and go on - the exception is *not* re-raised."""
    report = ErrorReport()
    try:
        yield report
    except Exception as err:
        report.error = err
        report.message = f"{message}\n\n{err}" if message else str(err)
        details = traceback.format_exc()
        logger.error("%s\n%s", report.message, details)
        if display is not None:
            try:
                display(report.message, detailedText=details)
            except Exception:
                logger.exception("could not display the error")


def askInDialog(dialog: Any, title: str, label: str, items: Sequence[str] | None = None, text: str = "") -> str | None:
    """A choice from ``items`` (or a line of text) asked with ``dialog``, a ``qt.QInputDialog``; None when cancelled.

    ``qt.QInputDialog.getItem`` cannot be used: on Cancel Qt returns the current item, and PythonQt does not return
    the ``ok`` flag, so a cancelled choice reads like the first item.  ``exec_()`` tells (0 on Cancel).
    """
    dialog.setWindowTitle(title)
    dialog.setLabelText(label)
    if items:
        dialog.setComboBoxItems(list(items))
        dialog.setComboBoxEditable(False)
    else:
        dialog.setTextValue(text)
    if not dialog.exec_():
        return None
    return str(dialog.textValue()).strip()


def selectComboData(combo: Any, value: str) -> None:
    """Select the entry whose data is ``value``; unknown values (e.g. a folder set from a script) are added first."""
    if not value:
        combo.currentIndex = -1
        return
    index = combo.findData(value)
    if index < 0:
        combo.insertItem(0, value, value)
        index = 0
    combo.currentIndex = index


def fillCombo(combo: Any, items: Iterable[tuple[str, str]], selected: str | None = None) -> None:
    """Replace the entries of ``combo`` by ``(text, data)`` items (a ``None`` item is a separator)."""
    combo.clear()
    for item in items:
        if item is None:
            combo.insertSeparator(combo.count)
        else:
            combo.addItem(item[0], item[1])
    if selected is not None:
        selectComboData(combo, selected)


def deviceChoices(devices: Sequence[Any], detected: bool, tr: Callable[[str], str] = _identity) -> list[tuple[str, str]]:
    """``(text, device)`` items: Auto (naming the GPU it picks, or saying no GPU was found), CPU, then each GPU."""
    gpus = [d for d in devices if d.isGpu]
    if gpus:
        autoText = tr("Auto ({name})").format(name=gpus[0].name or gpus[0].device)
    elif detected:
        autoText = tr("Auto (no GPU found: CPU)")
    else:
        autoText = tr("Auto (GPU when available)")
    items = [(autoText, "auto"), (tr("CPU"), "cpu")]
    for d in gpus:
        if d.device == "mps":
            items.append((tr("Apple GPU (MPS)"), "mps"))
        else:
            memory = tr(" ({gb:.0f} GB)").format(gb=d.memoryGB) if d.memoryGB else ""
            items.append((tr("GPU {index}: {name}").format(index=d.device.partition(":")[2] or "0", name=d.name or d.device) + memory, d.device))
    return items


def modelChoices(models: Sequence[Any], tr: Callable[[str], str] = _identity, importActions: bool = True) -> list[Any]:
    """``(text, model id)`` items for the model combo box; official checkpoints to import select the import action."""
    items: list[Any] = []
    for m in models:
        text = f"{m.displayName} {m.version}".strip()
        if m.status == "downloadable":
            text += " " + tr("(download, {size:.0f} MB)").format(size=m.sizeMB)
        elif m.status == "official":
            text += " " + tr("(official checkpoint: import it first)")
            items.append((text, IMPORT_OFFICIAL_ITEM if importActions else m.id))
            continue
        items.append((text, m.id))
    if importActions:
        items += [None, (tr("Import model..."), IMPORT_MODEL_ITEM), (tr("Import official RepUX-Net checkpoint..."), IMPORT_OFFICIAL_ITEM)]
    return items


def organItems(organs: Sequence[str], unchecked: Iterable[str] = ()) -> list[tuple[str, bool]]:
    """``(organ, checked)`` rows of the organ checklist: every organ of the model card, checked unless in ``unchecked``."""
    off = {str(o).lower() for o in unchecked}
    return [(str(o), str(o).lower() not in off) for o in organs]


def chosenOrgans(items: Sequence[tuple[str, bool]]) -> tuple[str, ...] | None:
    """What ``repux segment --organs`` gets: None when every organ is checked (the engine's default: all), else the checked ones
    (``()`` when none is: nothing to segment)."""
    checked = tuple(name for name, on in items if on)
    return None if len(checked) == len(items) else checked


def setWidgetStates(ui: Any, states: dict[str, dict[str, Any]]) -> None:
    """Set ``{widget name: {attribute: value}}`` on the widgets of ``ui`` (``enabled``, ``toolTip``, ``text``...)."""
    for name, attributes in states.items():
        widget = getattr(ui, name)
        for attribute, value in attributes.items():
            setattr(widget, attribute, value)


def fillTable(table: Any, rows: Sequence[tuple[Sequence[str], str | None]], makeItem: Callable[[str], Any]) -> None:
    """Replace the rows of a table widget by ``(cells, tooltip)`` rows; ``makeItem(text)`` makes a cell
    (``qt.QTableWidgetItem``); a None tooltip leaves the cell without one."""
    table.setRowCount(len(rows))
    for row, (cells, toolTip) in enumerate(rows):
        for column, text in enumerate(cells):
            item = makeItem(text)
            if toolTip is not None:
                item.setToolTip(toolTip)
            table.setItem(row, column, item)
    table.resizeColumnsToContents()


def fillChecklist(listWidget: Any, rows: Iterable[tuple[str, Any, bool]], makeItem: Callable[[str, Any, bool], Any]) -> None:
    """Replace the items of a list widget by checkable ``(text, data, checked)`` rows; ``makeItem(text, data, checked)``
    makes one (a checkable ``qt.QListWidgetItem``)."""
    listWidget.clear()
    for text, data, checked in rows:
        listWidget.addItem(makeItem(text, data, checked))


def selectedRow(table: Any) -> int | None:
    """The row of a table's selection when exactly one row is selected, else None."""
    rows = {index.row() for index in table.selectedIndexes()}
    return rows.pop() if len(rows) == 1 else None


def logLine(level: str, text: str) -> str:
    """A line of the log panel: INFO messages as they are, others prefixed with their level."""
    return text if level == "INFO" else f"{level}: {text}"


def startRepuxCommand(
    arguments: Sequence[str],
    pythonExecutable: str | None = None,
    onProgress: Callable[[Any], None] | None = None,
    onLog: Callable[[Any], None] | None = None,
    onFinished: Callable[[Any], None] | None = None,
) -> ProcessRunner:
    """Start ``<python> -m repux <arguments>`` in the background; pump it with its ``processEvents()``."""
    runner = ProcessRunner(repuxCommand(arguments, pythonExecutable), env=childEnvironment(), onProgress=onProgress, onLog=onLog, onFinished=onFinished)
    runner.start()
    return runner


def _mrmlNodeOf(wrapper: Any) -> Any:
    """The vtkMRMLScriptedModuleNode a parameterNodeWrapper wraps (``wrapper.parameterNode``)."""
    return getattr(wrapper, "parameterNode", wrapper)


class ModuleWidgetMixin:
    """What both module widgets do the same way, written once and without Qt (the widget supplies ``self.ui``,
    ``self.logic``, ``addObserver``/``removeObserver`` from ``VTKObservationMixin`` and ``_startPolling()``):

    * the parameter node: connect/disconnect the GUI and observe it (``setParameterNode``, ``exit``);
    * the log panel (``_appendLog``, ``_onLog``, ``_showFailure``);
    * GUI updates made by the code, which the change handlers skip (``with self._syncing():``), and the end of
      ``cleanup()`` (``_stopBackground``);
    * the device list: detected in the background with ``repux info --json`` (``_detectDevices``), shown with
      :func:`deviceChoices`, the choice stored in the parameter node's ``device`` (``onDeviceChanged``).

    ``tr`` is the module's translation function (``slicer.i18n.tr``).
    """

    tr: Callable[[str], str] = staticmethod(_identity)

    def _initSharedState(self) -> None:
        self._parameterNode: Any = None
        self._parameterNodeGuiTag: Any = None
        self._parameterNodeGuiBinding: Any = None  # (wrapper, tag) the GUI is connected to
        self._pollTimer: Any = None
        self._deviceRunner: Any = None
        self._devicesDetected = False
        self._syncingGui = False

    # parameter node
    #
    # The GUI is connected once per parameter node and stays connected while the panel is hidden: each
    # ``connectGui`` adds Qt connections and an observer of the node that Slicer never removes, and Slicer 5.8's
    # ``connectGui`` returns no tag, so ``disconnectGui(tag)`` cannot undo it (fixed in 5.10).  Connecting on every
    # module entry piled the bindings up.  ``getParameterNode()`` makes a new wrapper each call: the bound wrapper
    # is kept while it wraps the same vtkMRMLScriptedModuleNode.
    def setParameterNode(self, inputParameterNode: Any) -> None:
        import vtk

        self._stopObservingParameterNode()
        bound = self._parameterNodeGuiBinding
        if inputParameterNode is not None and bound is not None and _mrmlNodeOf(bound[0]) is _mrmlNodeOf(inputParameterNode):
            inputParameterNode = bound[0]  # already connected to the GUI
        else:
            self._releaseGui()
            if inputParameterNode is not None:
                self._parameterNodeGuiTag = inputParameterNode.connectGui(self.ui)
                self._parameterNodeGuiBinding = (inputParameterNode, self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _releaseGui(self) -> None:
        """Disconnect the GUI from the parameter node it is bound to (another node comes, or the scene closes)."""
        bound, self._parameterNodeGuiBinding, self._parameterNodeGuiTag = self._parameterNodeGuiBinding, None, None
        if bound is None:
            return
        wrapper, tag = bound
        if tag is not None:
            wrapper.disconnectGui(tag)
            return
        # Slicer 5.8: no tag; its wrapper keeps the connections by tag in _parameterGUIs
        for anyTag in list(getattr(wrapper, "_parameterGUIs", {}) or {}):
            wrapper.disconnectGui(anyTag)

    def _stopObservingParameterNode(self) -> None:
        """Remove the panel's observer of the parameter node, if it is there (VTKObservationMixin warns "does not
        have observer" otherwise: exit() then Close Scene or cleanup() removed it twice)."""
        import vtk

        node = self._parameterNode
        if node and self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def exit(self) -> None:
        # the GUI stays bound (see setParameterNode); only this panel's observer goes
        self._stopObservingParameterNode()

    @contextlib.contextmanager
    def _syncing(self) -> Iterator[None]:
        """GUI updates made by the code (not the user): the change handlers skip them while this block runs."""
        self._syncingGui = True
        try:
            yield
        finally:
            self._syncingGui = False

    def _stopBackground(self) -> None:
        """The end of ``cleanup()``: stop the device detection and the poll timer, remove the observers."""
        if self._deviceRunner is not None:
            self._deviceRunner.cancel(block=True)
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self._releaseGui()
        self.removeObservers()

    def _ensureRequirements(self, display: Callable[..., Any]) -> bool:
        """Install the missing Python packages (PyTorch extension, pip; asks first) *outside* any wait cursor: the
        confirmation and progress dialogs must not sit under one.  False (the error shown once with ``display``,
        ``slicer.util.errorDisplay``) when it failed or the user declined."""
        with reportErrors(self.tr("Failed to install the Python packages."), display) as failed:
            self.logic.setupPythonRequirements(askConfirmation=True)
        return not failed

    # log panel
    def _appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _onLog(self, level: str, text: str) -> None:
        self._appendLog(logLine(level, text))

    def _showFailure(self, message: str, display: Callable[..., Any]) -> None:
        """A task failed: open the log panel and show ``message`` once (``display`` is ``slicer.util.errorDisplay``),
        the end of the log as its details."""
        self.ui.logCollapsibleButton.collapsed = False
        display(message, detailedText=self.ui.logTextEdit.toPlainText()[-5000:])

    # devices
    def onDeviceChanged(self, index: int) -> None:
        if self._syncingGui or self._parameterNode is None or index < 0:
            return
        self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def _setDeviceChoices(self, devices: Sequence[Any]) -> None:
        with self._syncing():
            selected = self._parameterNode.device if self._parameterNode else None
            fillCombo(self.ui.deviceComboBox, deviceChoices(devices, self._devicesDetected, self.tr), selected)

    def _detectDevices(self) -> None:
        from .dependencies import torchStatus
        from .models import deviceInfoArguments

        if self._deviceRunner is not None or self._devicesDetected or torchStatus() != "ok":
            return
        self._deviceRunner = self.logic.startRepuxCommand(deviceInfoArguments(), onFinished=self._onDevicesDetected)
        self._startPolling()

    def _onDevicesDetected(self, runner: Any) -> None:
        from .models import parseDeviceInfo

        self._deviceRunner = None
        if not runner.succeeded:
            logger.info("GPU detection failed: %s", runner.errorMessage)
            return
        try:
            devices = parseDeviceInfo(runner.stdoutLines)
        except ValueError as err:
            logger.warning("%s", err)
            return
        self._devicesDetected = True
        self._setDeviceChoices(devices)
