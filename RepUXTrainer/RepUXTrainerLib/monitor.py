"""Live monitoring of a fine-tuning run (no Qt).

:class:`TrainingProgress` turns the engine's JSON progress lines into state (iteration,
loss, validation Dice per organ, ETA...) - plain Python.

:class:`TrainingPlot` shows them in a Slicer plot: a ``vtkMRMLTableNode`` with the columns
``iteration``, ``loss``, ``lr`` and one ``dice_<organ>`` column per organ (NaN where no
validation ran), one ``vtkMRMLPlotSeriesNode`` per column and a ``vtkMRMLPlotChartNode``
(loss and Dice; the learning rate has a chart of its own, its scale is 1e-4).  The table
gets one row per progress line that carries a loss; a validation line fills the Dice
columns of the row of its iteration.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DICE_PREFIX", "TrainingPlot", "TrainingProgress", "TrainingRow", "diceColumn", "readProgressLog"]

DICE_PREFIX = "dice_"
BASE_COLUMNS = ("iteration", "loss", "lr")


def diceColumn(organ: str) -> str:
    """``dice_<organ>`` (spaces kept: Slicer column names may contain them)."""
    return f"{DICE_PREFIX}{organ}"


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


@dataclass
class TrainingRow:
    """One iteration as the table shows it (NaN for values not reported)."""

    iteration: int
    loss: float = math.nan
    lr: float = math.nan
    dice: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingProgress:
    """State of a run, from its progress lines (``data`` dicts of ``ProgressEvent``)."""

    rows: list[TrainingRow] = field(default_factory=list)
    organs: list[str] = field(default_factory=list)
    stage: str = ""
    message: str = ""
    fraction: float = 0.0
    etaSeconds: float | None = None
    iteration: int = 0
    maxIterations: int = 0
    elapsedSeconds: float = 0.0
    lastMeanDice: float | None = None
    bestMeanDice: float | None = None
    modelPath: str = ""

    def add(self, data: Mapping[str, Any]) -> str:
        """Take one progress line; returns ``"loss"``, ``"validation"``, ``"done"`` or ``"other"``."""
        self.stage = str(data.get("stage", self.stage))
        self.message = str(data.get("message", ""))
        fraction = _number(data.get("fraction"))
        if not math.isnan(fraction):
            self.fraction = min(max(fraction, 0.0), 1.0)
        eta = _number(data.get("eta_s"))
        self.etaSeconds = None if math.isnan(eta) else eta
        if "max_iterations" in data:
            self.maxIterations = int(data["max_iterations"])
        if "elapsed_s" in data:
            self.elapsedSeconds = _number(data["elapsed_s"])
        if data.get("best_mean_dice") is not None:
            self.bestMeanDice = _number(data["best_mean_dice"])
        if "iteration" in data:
            self.iteration = int(data["iteration"])
        if self.stage == "done":
            self.modelPath = str(data.get("model", ""))
            return "done"
        if "loss" in data and "iteration" in data:
            self.rows.append(TrainingRow(int(data["iteration"]), _number(data["loss"]), _number(data.get("lr"))))
            return "loss"
        if isinstance(data.get("val_dice"), Mapping) and "iteration" in data:
            dice = {str(k): (None if v is None else _number(v)) for k, v in data["val_dice"].items()}
            for organ in dice:
                if organ not in self.organs:
                    self.organs.append(organ)
            row = self.rows[-1] if self.rows and self.rows[-1].iteration == int(data["iteration"]) else None
            if row is None:
                row = TrainingRow(int(data["iteration"]))
                self.rows.append(row)
            row.dice.update({k: (math.nan if v is None else v) for k, v in dice.items()})
            self.lastMeanDice = None if data.get("val_mean_dice") is None else _number(data["val_mean_dice"])
            return "validation"
        return "other"

    @property
    def lossRows(self) -> list[TrainingRow]:
        return [r for r in self.rows if not math.isnan(r.loss)]

    @property
    def lastLoss(self) -> float | None:
        rows = self.lossRows
        return rows[-1].loss if rows else None


def readProgressLog(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The progress lines a :class:`~RepUXTrainerLib.finetune.FinetuneJob` appended to its run folder
    (one JSON object per line; unreadable lines are skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


class TrainingPlot:
    """The table, plot series and chart nodes of a run, filled as progress lines arrive.

    Args:
        scene: the MRML scene.
        name: base name of the nodes (e.g. the new model's id).
        organs: organs expected in the validation Dice (columns are also added when new ones appear).
        organColors: RGB 0..1 per organ, for the Dice series.
        tableNode: an existing table to continue (its rows are kept), e.g. after Resume.
    """

    def __init__(
        self, scene: Any, name: str, organs: Iterable[str] = (), organColors: Mapping[str, Iterable[float]] | None = None, tableNode: Any = None
    ) -> None:
        import slicer

        self.scene = scene
        self.name = name
        self.organColors = {k: tuple(float(c) for c in v) for k, v in (organColors or {}).items()}
        self.progress = TrainingProgress()
        self.seriesNodes: dict[str, Any] = {}
        if tableNode is not None and scene.IsNodePresent(tableNode):
            self.tableNode = tableNode
        else:
            self.tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"RepUX training {name}"))
        self.tableNode.SetAttribute("RepUXTrainer.Run", name)
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"RepUX training {name}"))
        self.chartNode.SetTitle(f"Fine-tuning {name}")
        self.chartNode.SetXAxisTitle("iteration")
        self.chartNode.SetYAxisTitle("loss / validation Dice")
        self.learningRateChartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"RepUX learning rate {name}"))
        self.learningRateChartNode.SetTitle(f"Learning rate {name}")
        self.learningRateChartNode.SetXAxisTitle("iteration")
        self.learningRateChartNode.SetYAxisTitle("learning rate")
        self._slicer = slicer
        for column in BASE_COLUMNS:
            self._ensureColumn(column)
        for organ in organs:
            self._ensureColumn(diceColumn(organ))
        # continue an existing table: its rows are the history
        table = self.tableNode.GetTable()
        for r in range(table.GetNumberOfRows()):
            row = TrainingRow(int(self._value(r, "iteration")), self._value(r, "loss"), self._value(r, "lr"))
            for c in range(table.GetNumberOfColumns()):
                column = table.GetColumnName(c)
                if column.startswith(DICE_PREFIX):
                    row.dice[column[len(DICE_PREFIX) :]] = self._value(r, column)
            self.progress.rows.append(row)

    # ----------------------------------------------------------------- columns
    def _value(self, row: int, column: str) -> float:
        array = self.tableNode.GetTable().GetColumnByName(column)
        return _number(array.GetValue(row)) if array is not None else math.nan

    def _ensureColumn(self, column: str) -> Any:
        import vtk

        table = self.tableNode.GetTable()
        array = table.GetColumnByName(column)
        if array is None:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            array.SetNumberOfTuples(table.GetNumberOfRows())
            array.Fill(math.nan)
            self.tableNode.AddColumn(array)
        if column != "iteration" and column not in self.seriesNodes:
            self._addSeries(column)
        return array

    def _addSeries(self, column: str) -> None:
        s = self._slicer
        existing = None
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLPlotSeriesNode")
            if node.GetTableNodeID() == self.tableNode.GetID() and node.GetYColumnName() == column:
                existing = node
                break
        label = "loss" if column == "loss" else "learning rate" if column == "lr" else f"Dice {column[len(DICE_PREFIX) :]}"
        series = existing or self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(f"{label} ({self.name})"))
        series.SetAndObserveTableNodeID(self.tableNode.GetID())
        series.SetXColumnName("iteration")
        series.SetYColumnName(column)
        series.SetPlotType(s.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        if column == "loss":
            series.SetColor(0.1, 0.1, 0.1)
            series.SetMarkerStyle(s.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        elif column == "lr":
            series.SetColor(0.4, 0.4, 0.8)
            series.SetMarkerStyle(s.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        else:
            series.SetColor(*self.organColors.get(column[len(DICE_PREFIX) :], (0.8, 0.3, 0.3)))
            series.SetMarkerStyle(s.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetMarkerSize(8)
        chart = self.learningRateChartNode if column == "lr" else self.chartNode
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        self.seriesNodes[column] = series

    @property
    def columnNames(self) -> list[str]:
        table = self.tableNode.GetTable()
        return [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]

    def column(self, name: str) -> list[float]:
        """The values of a column (NaN where empty)."""
        table = self.tableNode.GetTable()
        return [self._value(r, name) for r in range(table.GetNumberOfRows())]

    @property
    def numberOfRows(self) -> int:
        return self.tableNode.GetTable().GetNumberOfRows()

    # ------------------------------------------------------------------- rows
    def add(self, data: Mapping[str, Any]) -> str:
        """Take one progress line (the ``data`` of a ``ProgressEvent``); returns its kind (see :meth:`TrainingProgress.add`)."""
        kind = self.progress.add(data)
        if kind == "loss":
            row = self.progress.rows[-1]
            self._appendRow({"iteration": row.iteration, "loss": row.loss, "lr": row.lr})
        elif kind == "validation":
            iteration = int(data["iteration"])
            dice = {diceColumn(k): (math.nan if v is None else _number(v)) for k, v in data["val_dice"].items()}
            for column in dice:
                self._ensureColumn(column)
            table = self.tableNode.GetTable()
            last = table.GetNumberOfRows() - 1
            if last >= 0 and int(self._value(last, "iteration")) == iteration:
                wasModifying = self.tableNode.StartModify()
                for column, value in dice.items():
                    table.GetColumnByName(column).SetValue(last, value)
                table.Modified()
                self.tableNode.EndModify(wasModifying)
            else:
                self._appendRow({"iteration": iteration, **dice})
        return kind

    def _appendRow(self, values: Mapping[str, float]) -> None:
        table = self.tableNode.GetTable()
        wasModifying = self.tableNode.StartModify()
        row = table.InsertNextBlankRow(math.nan)
        for column, value in values.items():
            array = table.GetColumnByName(column)
            if array is not None:
                array.SetValue(row, float(value))
        table.Modified()
        self.tableNode.EndModify(wasModifying)

    def clear(self) -> None:
        """Remove all rows (a fresh start)."""
        table = self.tableNode.GetTable()
        wasModifying = self.tableNode.StartModify()
        for c in range(table.GetNumberOfColumns()):
            table.GetColumn(c).SetNumberOfTuples(0)
        table.SetNumberOfRows(0)
        table.Modified()
        self.tableNode.EndModify(wasModifying)
        self.progress = TrainingProgress()

    def removeNodes(self) -> None:
        """Remove the table, series and chart nodes from the scene."""
        for node in [*self.seriesNodes.values(), self.chartNode, self.learningRateChartNode, self.tableNode]:
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.seriesNodes = {}
