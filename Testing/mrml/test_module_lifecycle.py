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
from widget_fakes import FakeWidget

pytestmark = pytest.mark.slicer
trainerModuleFile = trainer_fixtures.trainerModuleFile  # pytest fixture
slicerApp = trainer_fixtures.slicerApp  # pytest fixture


def segmentationNodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]


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
