"""RepUXSegment.py imports headless (with the project's qt/ctk/ScriptedLoadableModule/parameterNodeWrapper
stand-ins in ``standins/``), its logic wrapper works on a real scene, and the .ui file matches the code."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slicer

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1] / "RepUXSegment"
MODULE_FILE = MODULE_DIR / "RepUXSegment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "RepUXSegment.ui"


def loadStandinInstaller():
    spec = importlib.util.spec_from_file_location("repux_standins_install", HERE / "standins" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def moduleFile(slicerCore, monkeypatch):
    """RepUXSegment.py imported as in Slicer, with the stand-ins registered for this test only."""
    loadStandinInstaller().installStandins(monkeypatch.setitem)
    spec = importlib.util.spec_from_file_location("RepUXSegment", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "RepUXSegment", module)
    spec.loader.exec_module(module)
    return module


def test_module_description(moduleFile):
    parent = SimpleNamespace()
    moduleFile.RepUXSegment(parent)
    assert parent.title == "RepUX Segment"
    assert parent.categories == ["Segmentation"]
    assert parent.contributors and all(parent.contributors)
    assert "RepUX-Net" in parent.helpText and "Segment Editor" in parent.helpText
    assert "arXiv:2303.05785" in parent.acknowledgementText
    assert {q.value for q in moduleFile.Quality} == {"fast", "standard", "best"}
    assert moduleFile.Quality.BEST.label().startswith("Best")


def test_parameter_node_round_trip(moduleFile, mrml, monkeypatch):
    monkeypatch.setattr(mrml.slicer, "mrmlScene", mrml.scene, raising=False)
    logic = moduleFile.RepUXSegmentLogic()
    p = logic.getParameterNode()
    assert (p.model, p.device, p.quality, p.largestComponent, p.inputVolume, p.outputSegmentation) == (
        "",
        "auto",
        moduleFile.Quality.STANDARD,
        False,
        None,
        None,
    )
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    p.inputVolume = volume
    p.quality = moduleFile.Quality.FAST
    p.model = "repux-amos"
    again = logic.getParameterNode()  # the same vtkMRMLScriptedModuleNode, found again
    assert again.inputVolume is volume and again.quality is moduleFile.Quality.FAST and again.model == "repux-amos"


@pytest.fixture
def slicerApplication(mrml, monkeypatch):
    """What the Slicer application adds to the ``slicer`` module, on top of the real MRML scene and logics.

    ``slicer.mrmlScene``, ``slicer.modules.<name>.logic()`` and ``slicer.app.temporaryPath`` point at the test
    scene; ``slicer.util.saveNode`` (which needs the application's IO manager) writes through the NRRD storage
    node; volumes made with ``slicer.util.addVolumeFromArray`` get their subject-hierarchy item, as Slicer's
    subject-hierarchy plugins do.
    """
    slicer = mrml.slicer
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)
    modules = SimpleNamespace(segmentations=SimpleNamespace(logic=lambda: mrml.segmentationsLogic), volumes=SimpleNamespace(logic=lambda: mrml.volumesLogic))
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(temporaryPath=str(mrml.tempDirectory), processEvents=lambda: None), raising=False)

    def saveNode(node, filename, properties=None):
        storage = slicer.vtkMRMLNRRDStorageNode()
        storage.SetFileName(str(filename))
        return bool(storage.WriteData(node))

    addVolumeFromArray = slicer.util.addVolumeFromArray

    def addVolumeWithItem(*args, **kwargs):
        node = addVolumeFromArray(*args, **kwargs)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
        sh.CreateItem(sh.GetSceneItemID(), node)
        return node

    monkeypatch.setattr(slicer.util, "saveNode", saveNode)
    monkeypatch.setattr(slicer.util, "addVolumeFromArray", addVolumeWithItem)
    return mrml


def test_the_self_test_passes_headless(moduleFile, slicerApplication, monkeypatch):
    """RepUXSegmentTest (what Slicer runs with "Reload and Test" / ctest), headless: logic wrapper, ROI, cancel."""
    originalInit = moduleFile.RepUXSegmentLogic.__init__

    def initWithThisPython(self):
        originalInit(self)
        self.pythonExecutable = sys.executable  # in Slicer: PythonSlicer

    monkeypatch.setattr(moduleFile.RepUXSegmentLogic, "__init__", initWithThisPython)
    test = moduleFile.RepUXSegmentTest("runTest")
    monkeypatch.setattr(test, "setUp", lambda: slicerApplication.scene.Clear(0))
    test.runTest()
    assert list(slicerApplication.tempDirectory.iterdir()) == []

    nodes = slicerApplication.nodeIDs()
    volume = slicerApplication.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="quality must be one of"):
        moduleFile.RepUXSegmentLogic().segment(volume, model="x", quality="ultra")
    assert slicerApplication.nodeIDs() == nodes


def test_importing_the_module_file_loads_nothing_heavy():
    code = f"""
import importlib.util, sys
sys.path.insert(0, {str(MODULE_DIR)!r})
import slicer
spec = importlib.util.spec_from_file_location("standins", {str(HERE / "standins" / "install.py")!r})
installer = importlib.util.module_from_spec(spec); spec.loader.exec_module(installer); installer.installStandins()
import RepUXSegment
heavy = sorted(m for m in ("torch", "monai", "SimpleITK", "nibabel", "repux.inference.segmenter", "repux.nn", "safetensors") if m in sys.modules)
print("HEAVY", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=HERE.parents[1], check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# ----------------------------------------------------------------------------- .ui file and code


def uiWidgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def widgetProperty(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def parameterNodeFields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RepUXSegmentParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    widgets = uiWidgets()
    assert len(used) > 15
    missing = sorted(used - set(widgets))
    assert not missing, f"RepUXSegment.py uses widgets that RepUXSegment.ui does not define: {missing}"


def test_parameter_names_in_the_ui_match_the_parameter_node():
    fields = parameterNodeFields()
    bound = {}
    for widget in uiWidgets().values():
        prop = widgetProperty(widget, "SlicerParameterName")
        if prop is not None:
            bound[prop.findtext("string")] = widget
    assert set(bound) <= set(fields), f"unknown SlicerParameterName: {sorted(set(bound) - set(fields))}"
    assert {"inputVolume", "quality", "roi", "outputSegmentation", "largestComponent"} <= set(bound)
    for parameter, widget in bound.items():
        annotation = fields[parameter]
        if annotation.startswith("vtkMRML"):
            assert widget.get("class") == "qMRMLNodeComboBox"
            assert [s.text for s in widgetProperty(widget, "nodeTypes").iter("string")] == [annotation]
        elif annotation == "bool":
            assert widget.get("class") == "QCheckBox"
        elif annotation == "Quality":
            assert widget.get("class") == "QComboBox"
    # model and device are filled at run time (installed models, detected GPUs): synced by hand, not bound
    assert {"model", "device"} <= set(fields) - set(bound)


def test_ui_custom_widgets_and_connections_are_declared():
    root = ET.parse(UI_FILE).getroot()
    assert root.find("class").text == "RepUXSegment"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert sorted(c for c in used if not c.startswith("Q") and c not in declared) == []
    widgets = uiWidgets()
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in widgets and connection.findtext("receiver") in widgets
    nodeSelectors = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert nodeSelectors == connected  # every node selector gets the scene


def test_the_self_test_runs_every_test_method():
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RepUXSegmentTest")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    runTest = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {n.func.attr for n in ast.walk(runTest) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert len(methods) >= 3 and methods <= called
    source = ast.get_source_segment(MODULE_FILE.read_text(), cls)
    assert "testLogic" not in source and "skip" not in source.lower()  # nothing switches the self-test off
