"""The RepUX Web state machine without a browser: a real MRML scene (slicer-core), the real Libs and engine,
a recording viewer instead of the trame views."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.slicer, pytest.mark.web]


def nrrd_bytes(shape=(20, 24, 28), spacing=(3.0, 3.0, 3.0)) -> bytes:
    """A small CT-like NRRD file's bytes (written with SimpleITK)."""
    import SimpleITK as sitk

    array = np.full(shape, -1000, np.int16)
    array[4:-4, 4:-4, 4:-4] = 40
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.nrrd"
        sitk.WriteImage(image, str(path))
        return path.read_bytes()


def test_initial_state(controller):
    state = controller.state
    tiny = {m["id"]: m for m in state["models"]}["repux-tiny-phantom"]
    assert tiny["organs"] == ["liver", "kidney", "spleen", "pancreas"] and tiny["status"] == "built-in"
    assert state["model"] == "repux-tiny-phantom" and state["organs"] == tiny["organs"]
    assert state["browser"] == {"path": "", "parent": None, "entries": [{"name": "sub", "path": "sub", "kind": "folder", "size": 0, "openable": False}]}
    assert (state["busy"], state["volume_id"], state["segments"], state["notice"]["text"]) == ("", "", [], "")


def test_user_errors_become_notices(controller, webRoot):
    assert controller.open_path("../secret.nii.gz") is None
    assert controller.state["notice"] == {"level": "error", "text": "path '../secret.nii.gz': '..' is not allowed; paths are relative to the root folder."}
    assert not controller.start_segmentation()
    assert controller.last_error == "open a CT first (Open, Upload or the demo case)."
    assert controller.add_case() is None and "segment a CT" in controller.last_error
    assert not controller.start_finetune() and "add at least two cases" in controller.last_error
    assert not controller.start_ranking() and "every volume is already a case" in controller.last_error
    assert not controller.browse("sub/../..") and "'..' is not allowed" in controller.last_error
    assert controller.state["volumes"] == [] and controller.viewer.calls == []
    assert all(line.split(" ", 1)[1].startswith("error: ") for line in controller.state["log"])


def test_upload_is_checked_before_loading(controller):
    controller.settings.max_upload_mb = 0.01
    assert controller.receive_upload("big.nrrd", nrrd_bytes()) is None
    assert "the upload limit is 0 MB" in controller.last_error
    controller.settings.max_upload_mb = 10
    assert controller.receive_upload("notes.pdf", b"%PDF-1.4" + bytes(2000)) is None
    assert "notes.pdf is not a CT image" in controller.last_error
    assert controller.receive_upload("fake.nrrd", b"%PDF-1.4" + bytes(2000)) is None
    assert "does not look like a .nrrd image" in controller.last_error
    assert controller.state["volumes"] == [] and not list((controller.work_dir / "uploads").glob("*"))
    node = controller.receive_upload("../../small ct.nrrd", nrrd_bytes())
    assert node is not None and controller.last_error == ""
    assert node.GetImageData().GetDimensions() == (28, 24, 20)
    assert [p.name for p in (controller.work_dir / "uploads").iterdir()] == ["small_ct.nrrd"]
    assert controller.state["volumes"] == [{"id": node.GetID(), "name": node.GetName(), "case": False}]
    assert controller.state["volume_id"] == node.GetID() and controller.viewer.calls == [("volume", node.GetName())]


def test_edits_are_picked_up_by_poll(controller, mrmlContext):
    """Voxel counts follow edits made by the segment editor (here: the segment's label map changed in place)."""
    slicer = mrmlContext.slicer
    volume = controller.receive_upload("ct.nrrd", nrrd_bytes())
    seg = mrmlContext.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment("liver", "liver", [0.8, 0.5, 0.4])
    controller.set_segmentation(seg.GetID())
    assert controller.state["segments"] == [{"id": segment_id, "name": "liver", "color": "#cc8066", "voxels": 0}]
    assert controller.state["mapping"][0]["target"] == "liver", "the model's organs map the segment by name"
    mask = np.zeros((20, 24, 28), np.uint8)
    mask[5:10, 5:10, 5:10] = 1
    import vtk
    from vtkmodules.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(28, 24, 20)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, seg, segment_id)
    assert controller.state["segments"][0]["voxels"] == 0
    controller.poll()
    assert controller.state["segments"][0]["voxels"] == 125
    assert not controller.refresh_segments(force=False), "nothing changed since"
    assert controller.set_mapping(segment_id, "(ignore)") and controller.state["mapping"][0]["target"] == "(ignore)"
    assert not controller.set_mapping(segment_id, "heart") and "no class 'heart'" in controller.last_error


def test_loop_segment_curate_finetune_rank(controller, tmp_path):
    """The whole loop on the demo phantom with the built-in tiny model (5 fine-tuning iterations with Stop/Resume, 32^3 crops)."""
    demo = controller.load_demo()
    assert demo is not None and demo.GetName() == "demo phantom"
    assert controller.start_segmentation() and controller.state["busy"] == "segment"
    assert not controller.start_segmentation() and "is running" in controller.last_error
    fractions = []
    while controller.busy():
        controller.poll()
        fractions.append(controller.state["progress"]["fraction"])
        time.sleep(0.05)
    assert controller.state["notice"]["text"].startswith("segmented in") and controller.state["progress"]["stage"] == "done"
    assert fractions[-1] == 1.0 and len(set(fractions)) >= 3, f"the progress did not advance: {sorted(set(fractions))}"
    assert [s["name"] for s in controller.state["segments"]] == ["liver", "kidney", "spleen", "pancreas"]
    assert all(s["voxels"] > 100 for s in controller.state["segments"])
    assert controller.state["comparison"]["organs"] == ["liver", "kidney", "spleen", "pancreas"]
    assert ("segmentation", "demo phantom - repux-tiny-phantom") in controller.viewer.calls

    assert controller.add_case() is not None and controller.add_case() is not None
    assert len(controller.state["training_set"]["cases"]) == 2
    assert (tmp_path / "training-set" / "repux-dataset.json").is_file()
    assert controller.state["volumes"][0]["case"] is True

    # fine-tune 5 iterations; Stop after the first one (checkpoint), then Resume to the end
    controller.state["max_iterations"] = 5
    assert controller.start_finetune()
    model_id = controller.state["train"]["model_id"]
    deadline = time.monotonic() + 300
    while not controller.state["chart"]["loss"] and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.05)
    controller.stop_finetune()
    assert controller.state["train"]["status"] == "stopping"
    controller.wait(timeout=300)
    train = controller.state["train"]
    assert train["status"] == "stopped" and train["can_resume"] and train["iteration"] < 5, (train, controller.state["log"])
    assert "Resume continues" in controller.state["notice"]["text"]
    assert controller.resume_finetune()
    controller.wait(timeout=300)
    assert controller.state["train"]["status"] == "succeeded", controller.state["log"]
    assert set(range(1, 6)) <= {p[0] for p in controller.state["chart"]["loss"]} and controller.state["chart"]["dice"]
    assert model_id in [m["id"] for m in controller.state["models"]] and controller.state["model"] == model_id

    # (re-segmenting with the new model and the comparison table are walked by the browser test)
    other = controller.load_demo(seed=3)
    assert controller.start_ranking()
    controller.wait(timeout=300)
    assert [r["name"] for r in controller.state["ranking"]] == [other.GetName()]
    assert 0.0 < controller.state["ranking"][0]["mean_entropy"] <= 1.0
    assert controller.state["overlay"] == f"{other.GetName()} uncertainty" and controller.viewer.calls[-1][0] == "overlay"
    assert controller.state["volume_id"] == other.GetID()


@pytest.mark.realdata
def test_open_dicom_series_with_trame_slicer_loader(tmp_path, recordingViewer):
    """A DICOM folder of the root opens through trame-slicer's IOManager (the app's loader), on its own scene."""
    pytest.importorskip("trame_slicer", reason='trame-slicer is not installed (pip install -e ".[web]")')
    from helpers import shared_file
    from trame_slicer.core import SlicerApp

    from RepUXWeb.controller import WebController, WebSettings

    series = shared_file("dicom-ct-3slice", "series")
    from RepUXSegmentLib.mrml import MRMLContext

    app = SlicerApp()
    context = MRMLContext(app.scene, app.segmentations_logic, app.volumes_logic, None)
    web = WebController(context, recordingViewer, WebSettings(root=series.parent.parent, work_dir=tmp_path / "work"), load_files=app.io_manager.load_volumes)
    entries = {e["name"]: e for e in web.state["browser"]["entries"]}
    assert entries["dicom-ct-3slice"]["kind"] == "dicom-folder"
    node = web.open_path("dicom-ct-3slice/series")
    assert node is not None, web.last_error
    assert node.GetImageData().GetDimensions() == (512, 512, 3)
    assert web.state["volume_id"] == node.GetID() and web.viewer.calls == [("volume", node.GetName())]
    assert web.open_path("dicom-ct-3slice/../..") is None and "'..' is not allowed" in web.last_error


def test_organ_subset_is_passed_to_the_engine(controller, monkeypatch):
    """Only the chosen organs become segments: the subset goes to `repux segment --organs`, in the model's order."""
    import RepUXSegmentLib.segmentation as segmentation

    started = []

    class RecordingJob:
        running = False

        def __init__(self, volume, options, **kwargs):
            started.append(options)

        def start(self):
            pass

    monkeypatch.setattr(segmentation, "SegmentationJob", RecordingJob)
    assert controller.receive_upload("small.nrrd", nrrd_bytes()) is not None
    controller.state["organs"] = ["spleen", "liver"]
    assert controller.start_segmentation(), controller.last_error
    assert started[-1].organs == ("liver", "spleen") and "--organs" in started[-1].commandArguments("in.nrrd", "out.nrrd", "/m")
    controller.state["busy"] = ""
    controller.state["organs"] = list(controller.state["model_organs"])
    assert controller.start_segmentation(), controller.last_error
    assert started[-1].organs is None  # all organs: no --organs


def test_click_to_segment(controller, mrmlContext):
    """Initialize -> a placed point on the liver gives the liver segment (named, voxels) -> undo -> background -> end."""
    import vtk
    from RepUXSegmentLib.clicksession import CLICK_POINTS_NAME
    import SimpleITK as sitk
    from scipy import ndimage

    from repux.data.phantom import generate_phantom
    from repux.labels import FLARE

    controller.settings.session_arguments = ("--threads", "1")
    assert not controller.start_clicks() and controller.last_error == "open a CT first (Open, Upload or the demo case)."
    volume = controller.load_demo()
    assert controller.start_clicks(), controller.last_error
    points = mrmlContext.scene.GetFirstNodeByName(CLICK_POINTS_NAME)
    assert controller.viewer.calls[-1] == ("place", CLICK_POINTS_NAME) and controller.state["click"]["placing"]
    assert controller.state["click"]["status"] == "starting"
    tool = controller.click_tool

    def poll_until(predicate, timeout=180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            controller.poll()
            if predicate():
                return True
            time.sleep(0.02)
        return False

    assert poll_until(lambda: tool.ready and tool.opened), tool.outcomes
    assert controller.state["click"]["status"] == "ready" and "session open" in controller.state["click"]["message"]

    ph = generate_phantom(7, spacing=(3.0, 3.0, 3.0), orientation="axial")
    truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
    kji = np.argwhere(ndimage.binary_erosion(truth == 1, iterations=4))
    kji = kji[len(kji) // 2]
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    ras = ijk_to_ras.MultiplyPoint([float(kji[2]), float(kji[1]), float(kji[0]), 1.0])[:3]

    def click(position, positive=True):
        controller.set_click_positive(positive)
        before = len(tool.outcomes)
        points.AddControlPoint(vtk.vtkVector3d(*position))  # fires PointPositionDefinedEvent, as a placed point in a view
        assert poll_until(lambda: len(tool.outcomes) > before and tool.outcomes[-1].clickId == tool._latestClick), tool.outcomes
        return tool.outcomes[-1]

    first = click(ras)
    assert (first.status, first.organ) == ("added", "liver"), first
    assert controller.state["segmentation_id"] == tool.segmentationNode.GetID()  # the clicks' segmentation is the edited one
    assert [g["name"] for g in controller.state["segments"]] == ["liver"] and controller.state["segments"][0]["voxels"] > 1000
    assert controller.state["click"]["message"].startswith("liver") and controller.state["click"]["message"].endswith(" s")
    assert controller.undo_click() and controller.state["segments"] == []
    air = click(ijk_to_ras.MultiplyPoint([0.0, 0.0, 0.0, 1.0])[:3])
    assert air.status == "no-organ" and controller.state["segments"] == [] and controller.state["click"]["message"] == "no organ here"
    assert not controller.undo_click() and controller.state["click"]["message"] == "nothing to undo"
    controller.set_click_organ("spleen")
    assert tool.organ == "spleen" and controller.state["click_organ"] == "spleen"
    controller.set_click_organ("heart")
    assert tool.organ == "spleen" and "organ 'heart' is not one of the model's organs" in controller.state["notice"]["text"]
    controller.set_click_organ("")
    assert tool.organ is None
    controller.stop_clicks()
    assert controller.click_tool is None and controller.state["click"]["status"] == "off" and not tool.running
    assert controller.viewer.calls[-1] == ("place", "")
