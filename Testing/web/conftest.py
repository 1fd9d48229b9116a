"""Fixtures of the RepUX Web tests: a real MRML scene (slicer-core) and a controller with a recording viewer."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class RecordingViewer:
    """Stands in for the trame views: records what the controller asked to show."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def show_volume(self, volume_node) -> None:
        self.calls.append(("volume", volume_node.GetName()))

    def show_segmentation(self, segmentation_node, volume_node) -> None:
        self.calls.append(("segmentation", segmentation_node.GetName()))

    def show_overlay(self, volume_node, overlay_node) -> None:
        self.calls.append(("overlay", overlay_node.GetName()))

    def place_points(self, point_list_node) -> None:
        self.calls.append(("place", point_list_node.GetName()))

    def stop_placing(self) -> None:
        self.calls.append(("place", ""))


@pytest.fixture
def recordingViewer():
    return RecordingViewer()


@pytest.fixture
def mrmlContext(tmp_path):
    """Scene, application, colors, volumes, segmentations and subject-hierarchy logics (no Qt, no views)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e '.[test]')")
    from RepUXSegmentLib.mrml import MRMLContext

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    context = MRMLContext.headless(str(jobs))
    scene, appLogic = context.scene, context.applicationLogic
    yield SimpleNamespace(context=context, scene=scene, slicer=slicer, appLogic=appLogic)
    scene.Clear(1)


@pytest.fixture
def webRoot(tmp_path):
    """A file-browser root with one image, one sub-folder and a secret file outside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.nii.gz").write_bytes(b"\x1f\x8b secret")
    return root


@pytest.fixture
def controller(mrmlContext, webRoot, tmp_path):
    from RepUXWeb.controller import WebController, WebSettings

    settings = WebSettings(
        root=webRoot,
        work_dir=tmp_path / "work",
        dataset=tmp_path / "training-set",
        python=sys.executable,
        model="repux-tiny-phantom",
        finetune={
            "maxIterations": 2,
            "roiSize": 32,
            "valInterval": 1,
            "checkpointInterval": 10,
            "threads": 1,
            "learningRate": 1e-3,
            "extraArguments": ("--augmentation", "none", "--warmup", "1"),
        },
    )
    web = WebController(mrmlContext.context, RecordingViewer(), settings)
    yield web
    web.shutdown()
