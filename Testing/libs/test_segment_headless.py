"""RepUXSegment end to end in a real MRML scene: Slicer storage nodes, the real ``repux segment`` child
process (``sys.executable -m repux``), the real segmentations logic.

The reference for every comparison is the engine run directly on the *original* file; label maps are
compared in physical space (through each grid's IJK->RAS), because Slicer's reader flips the k axis of
left-handed files.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slicer

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- helpers


class CliRun:
    """The engine on a file, exactly as a user would run it (started at once, so it overlaps the job under test)."""

    def __init__(self, inputPath: Path, modelDir: Path, outputPath: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "repux", "segment", "--input", str(inputPath), "--model", str(modelDir), "--output", str(outputPath)]
        cmd += ["--device", "cpu", "--quality", "fast", "--threads", "1", "--progress", "none", *extra]
        self.outputPath = outputPath
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self):
        import SimpleITK as sitk

        _out, err = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, err
        return sitk.ReadImage(str(self.outputPath))


def ijkToRASArray(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayFromVolumeNode(node) -> np.ndarray:
    from vtkmodules.util import numpy_support

    image = node.GetImageData()
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()


def sampleInPhysicalSpace(reference, slicerArray: np.ndarray, ijkToRAS: np.ndarray) -> np.ndarray:
    """Values of the SimpleITK image ``reference`` at the voxel centres of a Slicer grid (k, j, i).

    Asserts that every Slicer voxel centre falls exactly (1e-3 voxel) on a voxel centre of ``reference``,
    i.e. that the two grids are the same grid, whatever their index order.
    """
    import SimpleITK as sitk

    nk, nj, ni = slicerArray.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.vstack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ras = (ijkToRAS @ ijk)[:3]
    lps = LPS_TO_RAS @ ras
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    spacing = np.diag(reference.GetSpacing())
    continuous = np.linalg.solve(direction @ spacing, lps - np.array(reference.GetOrigin())[:, None])
    index = np.rint(continuous)
    assert np.abs(continuous - index).max() < 1e-3, "the grids differ: voxel centres do not coincide"
    size = np.array(reference.GetSize())[:, None]
    assert (index >= 0).all() and (index < size).all(), "the grids differ: voxels fall outside the reference"
    index = index.astype(int)
    ref = sitk.GetArrayFromImage(reference)  # (k, j, i) in file order
    return ref[index[2], index[1], index[0]].reshape(slicerArray.shape)


def exportLabels(mrml, segmentationNode, volumeNode) -> np.ndarray:
    """ExportAllSegmentsToLabelmapNode in the reference geometry (the input volume); returns (array, IJKToRAS)."""
    labelmap = mrml.slicer.vtkMRMLLabelMapVolumeNode()
    mrml.scene.AddNode(labelmap)
    try:
        ok = mrml.segmentationsLogic.ExportAllSegmentsToLabelmapNode(segmentationNode, labelmap, mrml.slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        assert ok
        assert labelmap.GetImageData().GetDimensions() == volumeNode.GetImageData().GetDimensions()
        np.testing.assert_allclose(ijkToRASArray(labelmap), ijkToRASArray(volumeNode), atol=1e-6)
        return arrayFromVolumeNode(labelmap)
    finally:
        mrml.scene.RemoveNode(labelmap)


def segmentTag(segment, mrml) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(mrml.slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def assertSegmentsMatchModel(mrml, segmentationNode, modelDir: Path) -> None:
    from repux.models.folder import read_model_card

    card = read_model_card(modelDir)
    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(card.labels)
    for i, label in enumerate(card.labels):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == label.name
        np.testing.assert_allclose(segment.GetColor(), label.color_float, atol=1e-6)
        tag = segmentTag(segment, mrml)
        assert tag == label.slicer_terminology()
        assert f"SCT^{label.type.value}^{label.type.meaning}" in tag
        assert segment.GetLabelValue() == label.value
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()


def makeLeftHandedObliqueVolume(path: Path) -> Path:
    """A left-handed (det -1), 20-degree rotated volume with MR-like intensities (no air at -1000 HU)."""
    import SimpleITK as sitk

    size = (44, 40, 36)
    z, y, x = np.mgrid[0 : size[2], 0 : size[1], 0 : size[0]].astype(float)
    arr = np.full((size[2], size[1], size[0]), 20.0)
    arr += 300.0 * ((((x - 20) / 14) ** 2 + ((y - 18) / 12) ** 2 + ((z - 16) / 12) ** 2) < 1)
    arr += 900.0 * ((((x - 30) / 5) ** 2 + ((y - 12) / 4) ** 2 + ((z - 8) / 6) ** 2) < 1)  # asymmetric: catches flips
    arr += np.random.default_rng(0).normal(0.0, 15.0, arr.shape)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing((3.3, 3.1, 3.7))
    t = math.radians(20.0)
    rotation = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0])
    assert np.linalg.det(rotation) < 0
    img.SetDirection(rotation.ravel().tolist())
    img.SetOrigin((-40.5, 30.25, -20.0))
    sitk.WriteImage(img, str(path))
    return path


# ----------------------------------------------------------------------------- tests


@pytest.mark.realdata
def test_example_ct_end_to_end_matches_the_cli(mrml, tiny_model_dir, tmp_path):
    from helpers import shared_file  # Testing/conftest.py: skips with a clear message without ../shared/data
    from RepUXSegmentLib.segmentation import SegmentationJob, SegmentationOptions

    ctPath = shared_file("ct-abdomen", "example_ct.nii.gz")
    volume = mrml.loadVolume(ctPath, "example_ct")
    sh = mrml.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    studyItem = sh.GetItemParent(sh.GetItemByDataNode(volume))
    nodesBefore = mrml.nodeIDs()
    cli = CliRun(ctPath, tiny_model_dir, tmp_path / "cli_labels.nii.gz")

    progress, logs, finished = [], [], []
    job = SegmentationJob(
        volume,
        SegmentationOptions(model=str(tiny_model_dir), device="cpu", quality="fast"),
        context=mrml.context(),
        pythonExecutable=sys.executable,
        onProgress=lambda f, s, m, e: progress.append((f, s, m)),
        onLog=lambda level, text: logs.append((level, text)),
        onFinished=finished.append,
    )
    outcome = job.wait(timeout=600)

    assert outcome.succeeded, outcome.errorMessage
    assert finished == [outcome]
    seg = outcome.segmentationNode
    assert seg.GetName() == "example_ct segmentation"
    assertSegmentsMatchModel(mrml, seg, tiny_model_dir)
    # editable: a normal segmentation node with display, in the scene, beside the input, on the input's geometry
    assert mrml.scene.IsNodePresent(seg) and seg.GetDisplayNode() is not None
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == studyItem
    newNodes = mrml.nodeIDs() - nodesBefore
    assert seg.GetID() in newNodes and all(
        mrml.scene.GetNodeByID(n).IsA("vtkMRMLSegmentationNode") or mrml.scene.GetNodeByID(n).IsA("vtkMRMLDisplayNode") for n in newNodes
    )

    # progress: the engine's real fractions, monotone, from the first stage to 100 %
    fractions = [f for f, _s, _m in progress]
    stages = [s for _f, s, _m in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert stages[0] == "load" and "infer" in stages and "done" in stages
    assert any("window" in m for _f, s, m in progress if s == "infer")
    assert outcome.volumesMl and set(outcome.volumesMl) == {"liver", "kidney", "spleen", "pancreas"}
    assert outcome.warnings == []  # real CT in HU: no "does not look like CT" warning
    assert os.listdir(mrml.tempDirectory) == []  # temporary input and output removed

    # voxel for voxel equal to the CLI run on the original file, in physical space
    exported = exportLabels(mrml, seg, volume)
    reference = cli.result()
    expected = sampleInPhysicalSpace(reference, exported, ijkToRASArray(volume))
    assert np.count_nonzero(expected) > 1000  # the comparison is not between two empty maps
    np.testing.assert_array_equal(exported, expected)
    assert len(np.unique(exported)) > 2


def test_left_handed_oblique_volume_into_existing_segmentation(mrml, tiny_model_dir, tmp_path):
    import SimpleITK as sitk
    from RepUXSegmentLib.segmentation import segmentVolume

    original = makeLeftHandedObliqueVolume(tmp_path / "left_handed.nrrd")
    volume = mrml.loadVolume(original, "left_handed")
    # Slicer's reader made the grid right-handed by flipping k: same physical grid, other index order
    assert np.linalg.det(ijkToRASArray(volume)[:3, :3]) > 0
    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    existing.CreateDefaultDisplayNodes()
    existing.GetSegmentation().AddEmptySegment("old", "old segment", [1.0, 1.0, 1.0])
    logs = []
    cli = CliRun(original, tiny_model_dir, tmp_path / "cli.nrrd")

    seg = segmentVolume(
        volume,
        str(tiny_model_dir),
        device="cpu",
        quality="fast",
        outputSegmentation=existing,
        context=mrml.context(),
        pythonExecutable=sys.executable,
        onLog=lambda level, text: logs.append((level, text)),
    )

    assert seg is existing and seg.GetName() == "my segmentation"
    assert seg.GetSegmentation().GetSegment("old") is None  # replaced, not appended
    assertSegmentsMatchModel(mrml, seg, tiny_model_dir)
    # the engine's warning for non-CT intensities is surfaced (as a warning, the run succeeded)
    assert any(level == "WARNING" and "do not look like CT" in text for level, text in logs)
    exported = exportLabels(mrml, seg, volume)
    reference = cli.result()
    expected = sampleInPhysicalSpace(reference, exported, ijkToRASArray(volume))
    assert np.count_nonzero(expected) > 100
    np.testing.assert_array_equal(exported, expected)
    # and the raw index order really differs (k flipped), so a naive comparison would have been wrong
    raw = sitk.GetArrayFromImage(reference)
    assert not np.array_equal(exported, raw)
    np.testing.assert_array_equal(exported, raw[::-1])
    assert os.listdir(mrml.tempDirectory) == []


def test_roi_is_passed_in_the_volume_space(mrml, tiny_model_dir, tmp_path):

    from RepUXSegmentLib.mrml import formatRoiRas, roiBoundsInVolumeSpace, writeVolumeNrrd
    from RepUXSegmentLib.segmentation import segmentVolume
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    volume = mrml.addVolumeFromArray(syntheticCTArray(), syntheticIJKToRAS(), "synthetic")  # axis-aligned: the box check below is exact
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter([-20.0, -10.0, -5.0])
    roi.SetSize(60.0, 50.0, 40.0)
    bounds = roiBoundsInVolumeSpace(roi, volume)
    np.testing.assert_allclose(bounds, [-50.0, -35.0, -25.0, 10.0, 15.0, 15.0], atol=1e-6)

    inputCopy = writeVolumeNrrd(volume, tmp_path / "synthetic.nrrd")
    cli = CliRun(inputCopy, tiny_model_dir, tmp_path / "roi.nrrd", "--roi-ras=" + formatRoiRas(bounds))

    seg = segmentVolume(volume, str(tiny_model_dir), device="cpu", quality="fast", roiRAS=bounds, context=mrml.context(), pythonExecutable=sys.executable)

    exported = exportLabels(mrml, seg, volume)
    reference = cli.result()
    np.testing.assert_array_equal(exported, sampleInPhysicalSpace(reference, exported, ijkToRASArray(volume)))
    # labels only in (about) the box: the ROI restricted the processing
    k, j, i = np.nonzero(exported)
    assert len(i) > 100
    ras = (ijkToRASArray(volume) @ np.vstack([i, j, k, np.ones(len(i))]))[:3]
    margin = 12.0  # two 4 mm model voxels plus one input voxel around the box
    for axis in range(3):
        assert ras[axis].min() >= bounds[axis] - margin and ras[axis].max() <= bounds[axis + 3] + margin
    size = np.array(exported.shape)
    assert len(i) < 0.5 * size.prod()


def test_cancel_after_first_progress_leaves_scene_and_disk_clean(mrml, tiny_model_dir):
    from RepUXSegmentLib.segmentation import SegmentationJob, SegmentationOptions
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    volume = mrml.addVolumeFromArray(syntheticCTArray((64, 96, 96)), syntheticIJKToRAS(spacing=(2.0, 2.0, 2.0)), "big")
    nodesBefore = mrml.nodeIDs()
    progress = []
    job = SegmentationJob(
        volume,
        SegmentationOptions(model=str(tiny_model_dir), device="cpu", quality="best"),
        context=mrml.context(),
        pythonExecutable=sys.executable,
        onProgress=lambda *args: progress.append(args),
    )
    job.start()
    temporary = job.tempDirectory
    assert temporary is not None and (temporary / "input.nrrd").is_file()
    import time

    deadline = time.monotonic() + 120
    while job.processEvents() and not progress and time.monotonic() < deadline:
        time.sleep(0.02)
    assert progress, "no progress line within 120 s"
    assert job.running
    job.cancel()
    outcome = job.wait(timeout=60)

    assert outcome.status == "cancelled" and outcome.segmentationNode is None
    assert job.runner.process.poll() is not None  # the engine process is gone
    assert mrml.nodeIDs() == nodesBefore  # no new nodes
    assert not temporary.exists() and os.listdir(mrml.tempDirectory) == []  # no temp files


def test_engine_failure_raises_and_leaves_scene_unchanged(mrml, tiny_model_dir, tmp_path):
    import shutil

    from RepUXSegmentLib.segmentation import SegmentationError, segmentVolume
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    volume = mrml.addVolumeFromArray(syntheticCTArray(), syntheticIJKToRAS(), "synthetic")
    nodesBefore = mrml.nodeIDs()

    with pytest.raises(SegmentationError, match="truncated or corrupted") as info:
        segmentVolume(volume, str(broken), device="cpu", context=mrml.context(), pythonExecutable=sys.executable)

    assert info.value.outcome.status == "failed" and info.value.outcome.returncode == 1
    assert mrml.nodeIDs() == nodesBefore
    assert os.listdir(mrml.tempDirectory) == []


def test_unknown_model_is_reported_before_anything_runs(mrml):
    from RepUXSegmentLib.segmentation import segmentVolume
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    from repux.errors import ModelFileError

    volume = mrml.addVolumeFromArray(syntheticCTArray((8, 16, 16)), syntheticIJKToRAS(), "tiny")
    with pytest.raises(ModelFileError, match="unknown model 'no-such-model'"):
        segmentVolume(volume, "no-such-model", context=mrml.context(), pythonExecutable=sys.executable)
    assert os.listdir(mrml.tempDirectory) == []


def test_organ_subset_gives_the_engines_labels_voxel_for_voxel(mrml, tiny_model_dir, tmp_path):
    """With some organs chosen, the engine writes them renumbered 1..k (--organs): the import must keep every voxel."""
    from RepUXSegmentLib.logic import SegmentLogic

    original = makeLeftHandedObliqueVolume(tmp_path / "subset.nrrd")
    volume = mrml.loadVolume(original, "subset")
    cli = CliRun(original, tiny_model_dir, tmp_path / "cli.nrrd", "--organs", "spleen,liver")
    logic = SegmentLogic(context=mrml.context(), pythonExecutable=sys.executable)
    seg = logic.segment(volume, str(tiny_model_dir), device="cpu", quality="fast", organs=("spleen", "liver"), timeout=600)
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["liver", "spleen"]
    exported = exportLabels(mrml, seg, volume)
    expected = sampleInPhysicalSpace(cli.result(), exported, ijkToRASArray(volume))
    assert set(np.unique(expected)) == {0, 1, 2}, "the subset should show both organs"
    np.testing.assert_array_equal(exported, expected)


def test_apply_on_a_transformed_volume_puts_the_organs_on_the_volume_in_the_world(mrml, tiny_model_dir, tmp_path):
    """Issue 23 (1), through the whole Apply path (engine child process, import): the volume sits under a rotated and
    shifted parent transform; every organ voxel the engine finds on the (untransformed) file is covered by its
    segment at the same place in the world, and the segmentation follows the volume's transform."""
    import vtk
    from RepUXSegmentLib.mrml import writeVolumeNrrd
    from RepUXSegmentLib.segmentation import segmentVolume
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS
    from test_segment_mrml import _segmentContainsWorldPoints, _worldPoints

    ijkToRAS = syntheticIJKToRAS(spacing=(4.0, 4.0, 4.0), origin=(-90.0, -80.0, -60.0), angleDegrees=20.0)
    volume = mrml.addVolumeFromArray(syntheticCTArray((32, 44, 48)), ijkToRAS, "registered ct")
    transformNode = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    transform = vtk.vtkTransform()
    transform.Translate(60.0, -25.0, 15.0)
    transform.RotateWXYZ(30.0, 0.2, 0.3, 1.0)
    transformNode.SetMatrixTransformToParent(transform.GetMatrix())
    volume.SetAndObserveTransformNodeID(transformNode.GetID())
    cli = CliRun(writeVolumeNrrd(volume, tmp_path / "local.nrrd"), tiny_model_dir, tmp_path / "cli.nrrd")  # the volume's own space

    seg = segmentVolume(volume, str(tiny_model_dir), device="cpu", quality="fast", context=mrml.context(), pythonExecutable=sys.executable)

    assert seg.GetTransformNodeID() == transformNode.GetID()
    import SimpleITK as sitk

    reference = sitk.GetArrayFromImage(cli.result())  # (k, j, i) on the volume's grid (written from it, right-handed)
    segmentation = seg.GetSegmentation()
    checked = 0
    for index in range(segmentation.GetNumberOfSegments()):
        kji = np.argwhere(reference == index + 1)
        if len(kji) == 0:
            continue
        kji = kji[:: max(1, len(kji) // 400)]  # a few hundred voxels per organ are enough
        local = (ijkToRAS @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
        inside = _segmentContainsWorldPoints(seg, segmentation.GetNthSegmentID(index), _worldPoints(transformNode, local))
        assert inside.all(), f"{segmentation.GetNthSegment(index).GetName()}: {inside.mean():.0%} of its voxels covered in the world"
        checked += len(kji)
    assert checked > 100
