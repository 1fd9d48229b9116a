"""RepUXTrainer.py imports headless (the project's qt/ctk/ScriptedLoadableModule/parameterNodeWrapper stand-ins),
its parameter node and logic wrapper work on a real scene, its self-test passes headless (a real short
fine-tuning in a child process), and the .ui file matches the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
import trainer_fixtures
from trainer_fixtures import HERE, REPO, TRAINER_DIR

pytestmark = pytest.mark.slicer
slicerApp = trainer_fixtures.slicerApp  # pytest fixture (plain modules are not scanned for fixtures)
trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture (plain modules are not scanned for fixtures)

MODULE_FILE = TRAINER_DIR / "RepUXTrainer.py"
UI_FILE = TRAINER_DIR / "Resources" / "UI" / "RepUXTrainer.ui"


def test_module_description(trainerModuleFile):
    parent = SimpleNamespace()
    trainerModuleFile.RepUXTrainer(parent)
    assert parent.title == "RepUX Trainer" and parent.categories == ["Segmentation"]
    assert parent.dependencies == ["RepUXSegment"]  # the engine and RepUXSegmentLib come with RepUXSegment
    assert "fine-tune" in parent.helpText and "Resume" in parent.helpText and "uncertainty" in parent.helpText
    assert "arXiv:2303.05785" in parent.acknowledgementText


def test_parameter_node_round_trip(trainerModuleFile, mrml, monkeypatch):
    monkeypatch.setattr(mrml.slicer, "mrmlScene", mrml.scene, raising=False)
    logic = trainerModuleFile.RepUXTrainerLogic()
    p = logic.getParameterNode()
    assert (p.maxIterations, p.timeBudgetMinutes, p.device, p.learningRate, p.valFraction, p.validationInterval, p.addUnknownAsNewClasses) == (
        300,
        0.0,
        "auto",
        0.0002,
        0.2,
        50,
        False,
    )
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    p.inputVolume, p.maxIterations, p.learningRate, p.baseModel = volume, 120, 5e-5, "repux-amos"
    again = logic.getParameterNode()
    assert (again.inputVolume, again.maxIterations, again.learningRate, again.baseModel) == (volume, 120, 5e-5, "repux-amos")
    # the logic wrapper is the Qt-free TrainerLogic, on the application's scene
    from RepUXTrainerLib.logic import TrainerLogic

    assert isinstance(logic, TrainerLogic) and logic.context.scene is mrml.scene and logic.trainingSet is None
    assert logic.requirementsPath().endswith("requirements.txt") and (REPO / "RepUXSegment" / "Resources" / "requirements.txt").samefile(
        logic.requirementsPath()
    )


def test_the_self_test_passes_headless(trainerModuleFile, slicerApp, monkeypatch, _isolated_store):
    """RepUXTrainerTest (what Slicer runs with "Reload and Test" / ctest), headless: curation, fine-tune with
    stop/resume, re-segmentation through RepUXSegment's logic, uncertainty ranking."""
    originalInit = trainerModuleFile.RepUXTrainerLogic.__init__

    def initWithThisPython(self):
        originalInit(self)
        self.pythonExecutable = sys.executable  # in Slicer: PythonSlicer

    monkeypatch.setattr(trainerModuleFile.RepUXTrainerLogic, "__init__", initWithThisPython)
    test = trainerModuleFile.RepUXTrainerTest("runTest")
    monkeypatch.setattr(test, "setUp", lambda: slicerApp.scene.Clear(0))
    test.runTest()
    import os

    assert os.environ["REPUX_HOME"] == str(_isolated_store)  # the test's own store was removed and the variable restored
    assert list(_isolated_store.glob("*")) == [] and list(slicerApp.tempDirectory.iterdir()) == []


def test_importing_the_module_file_loads_nothing_heavy():
    code = f"""
import importlib.util, sys
sys.path[:0] = [{str(REPO / "RepUXSegment")!r}, {str(TRAINER_DIR)!r}]
import slicer
spec = importlib.util.spec_from_file_location("standins", {str(HERE / "standins" / "install.py")!r})
installer = importlib.util.module_from_spec(spec); spec.loader.exec_module(installer); installer.installStandins()
import RepUXTrainer, RepUXTrainerLib.logic
heavy = sorted(m for m in ("torch", "monai", "SimpleITK", "nibabel", "repux.inference.segmenter", "repux.nn", "repux.training.trainer", "safetensors") if m in sys.modules)
print("HEAVY", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# ----------------------------------------------------------------------------- .ui file and code


def uiWidgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def widgetProperty(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def parameterNodeFields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RepUXTrainerParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    widgets = uiWidgets()
    assert len(used) > 25
    missing = sorted(used - set(widgets))
    assert not missing, f"RepUXTrainer.py uses widgets that RepUXTrainer.ui does not define: {missing}"
    containers = ("QLabel", "ctkCollapsibleButton", "qMRMLWidget")
    unused = sorted(n for n, w in widgets.items() if w.get("class") not in containers and n not in used and widgetProperty(w, "SlicerParameterName") is None)
    assert unused == [], f"controls of the .ui file that neither the code nor the parameter node drives: {unused}"


def test_parameter_names_in_the_ui_match_the_parameter_node():
    fields = parameterNodeFields()
    bound = {}
    for widget in uiWidgets().values():
        prop = widgetProperty(widget, "SlicerParameterName")
        if prop is not None:
            bound[prop.findtext("string")] = widget
    assert set(bound) <= set(fields), f"unknown SlicerParameterName: {sorted(set(bound) - set(fields))}"
    expectedClass = {"bool": "QCheckBox", "int": "QSpinBox", "float": "QDoubleSpinBox", "str": "QLineEdit"}
    for parameter, widget in bound.items():
        annotation = re.sub(r"^Annotated\[(\w+), .*\]$", r"\1", fields[parameter])  # Annotated[int, WithinRange(...)] -> int
        if annotation.startswith("vtkMRML"):
            assert widget.get("class") == "qMRMLNodeComboBox"
            assert [s.text for s in widgetProperty(widget, "nodeTypes").iter("string")] == [annotation]
        else:
            assert widget.get("class") == expectedClass[annotation], (parameter, widget.get("class"))
    # filled at run time (installed models, detected GPUs) or set by the code: synced by hand, not bound
    assert set(fields) - set(bound) == {"baseModel", "device", "resultModel"}


def test_ui_custom_widgets_and_connections_are_declared():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("class").text == "RepUXTrainer"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert sorted(c for c in used if not c.startswith("Q") and c not in declared) == []
    widgets = uiWidgets()
    nodeSelectors = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert nodeSelectors == connected == {"inputVolumeSelector", "inputSegmentationSelector"}
    for name in ("trainingSetPathLineEdit", "candidateFolderPathLineEdit"):
        assert widgetProperty(widgets[name], "filters").findtext("set") == "ctkPathLineEdit::Dirs"


def test_the_self_test_runs_every_test_method_and_cannot_be_switched_off():
    source = MODULE_FILE.read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RepUXTrainerTest")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    runTest = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {n.func.attr for n in ast.walk(runTest) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert len(methods) >= 2 and methods <= called
    segment = ast.get_source_segment(source, cls)
    assert "testLogic" not in segment and "skip" not in segment.lower()
    # thin module file: no bare except, no assert statements outside the test class
    assert not re.search(r"except\s*:", source)
    others = [n for n in tree.body if n is not cls]
    assert not [n for node in others for n in ast.walk(node) if isinstance(n, ast.Assert)]
