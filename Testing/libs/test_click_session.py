"""Click to segment in a real MRML scene (slicer-core): placed points give the organ under them, only that segment changes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import SimpleITK as sitk
from launcher import makeLauncher

from repux.labels import FLARE

pytestmark = pytest.mark.slicer


def _component(labels: np.ndarray, value: int, kji) -> np.ndarray:
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((labels == value).astype(np.uint8))))
    return cc == cc[tuple(kji)]


def _segmentArray(segNode, segmentId, shape) -> np.ndarray:
    import slicer
    from vtkmodules.util import numpy_support

    image = slicer.vtkOrientedImageData()
    segNode.GetBinaryLabelmapRepresentation(segmentId, image)
    out = np.zeros(shape, np.uint8)
    e = image.GetExtent()
    if e[1] < e[0]:
        return out
    arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    out[e[4] : e[5] + 1, e[2] : e[3] + 1, e[0] : e[1] + 1] = arr > 0
    return out


def test_click_tool_in_mrml_scene(mrml, tmp_path):
    """A1 (named segment, only it changes), A4, A5, A6, A7 (parent transform + oblique grid), A10 (the last click wins)."""
    import slicer
    import vtk
    from RepUXSegmentLib.clicksession import ClickSegmentTool
    from RepUXSegmentLib.process import childEnvironment

    from repux.data.phantom import generate_phantom
    from repux.inference.segmenter import Segmenter

    ph = generate_phantom(3, orientation="oblique", size_mm=(300, 240, 200))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(ph.image, str(path))
    volume = mrml.loadVolume(path, "ct")
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 90.0)
    m.SetElement(1, 3, -60.0)
    m.SetElement(0, 1, -1.0), m.SetElement(1, 0, 1.0), m.SetElement(0, 0, 0.0), m.SetElement(1, 1, 0.0)  # 90 degrees about S
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    # a segmentation with a hand-drawn segment that must stay untouched
    segNode = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segNode.CreateDefaultDisplayNodes()
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segNode.SetAndObserveTransformNodeID(transform.GetID())
    points = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")

    launcher = makeLauncher(tmp_path)
    env = childEnvironment(base=dict(os.environ, OMP_NUM_THREADS="1"))
    tool = ClickSegmentTool(mrml.context(), volume, points, segNode, model="repux-tiny-phantom", device="cpu", pythonExecutable=launcher, environment=env,
                            extraArguments=["--no-background"])
    shape = tuple(reversed(volume.GetImageData().GetDimensions()))
    other = np.zeros(shape, np.uint8)
    other[2:6, 2:8, 2:9] = 1
    segNode.GetSegmentation().AddEmptySegment("manual", "manual", [1.0, 0.0, 0.0])
    tool._writeSegmentCrop("manual", (2, 8, 2, 7, 2, 5), other[2:6, 2:8, 2:9])
    tool.start()
    try:
        assert tool.waitFor(lambda: tool.ready and tool.opened, 180), tool.outcomes
        seg = Segmenter("repux-tiny-phantom", device="cpu")
        apply_labels = sitk.GetArrayFromImage(seg.segment(sitk.ReadImage(str(tool._workdir / "volume.nrrd"))).labels)
        from scipy import ndimage

        truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
        liverVoxels = np.argwhere(ndimage.binary_erosion((truth == 1) & (apply_labels == 1), iterations=2))
        liverKji = tuple(liverVoxels[len(liverVoxels) // 2])
        kidneyKji = tuple(np.argwhere(ndimage.binary_erosion((truth == 2) & (apply_labels == 2), iterations=2))[0])

        def world(kji):
            ijkToRas = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(ijkToRas)
            local = ijkToRas.MultiplyPoint([float(kji[2]), float(kji[1]), float(kji[0]), 1.0])[:3]
            toWorld = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transform, None, toWorld)
            return toWorld.TransformPoint(local)

        def clickAndWait(kji, positive=True):
            tool.positive = positive
            before = len(tool.outcomes)
            points.AddControlPoint(vtk.vtkVector3d(*world(kji)))  # fires PointPositionDefinedEvent, as a click in a view
            assert tool.waitFor(lambda: len(tool.outcomes) > before and tool.outcomes[-1].clickId == tool._latestClick, 120), tool.outcomes
            return tool.outcomes[-1]

        first = clickAndWait(liverKji)
        print("cold click", first.seconds, first.engineSeconds)
        assert (first.status, first.organ) == ("added", "liver") and first.seconds > 0
        segmentation = segNode.GetSegmentation()
        liverId = segmentation.GetSegmentIdBySegmentName("liver")
        liverSegment = segmentation.GetSegment(liverId)
        assert tuple(round(c, 3) for c in liverSegment.GetColor()) == tuple(round(c, 3) for c in FLARE.find("liver").color_float)
        tag = vtk.reference("")
        assert liverSegment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        assert str(tag) == FLARE.find("liver").slicer_terminology()  # tagged as Apply tags it
        assert np.array_equal(_segmentArray(segNode, liverId, shape) > 0, _component(apply_labels, 1, liverKji))
        assert np.array_equal(_segmentArray(segNode, "manual", shape), other)  # other segments untouched
        # the click travels with the segment, in the volume's own RAS (not the transformed world position)
        from RepUXSegmentLib.clicksession import segmentClicks

        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        local = ijkToRas.MultiplyPoint([float(liverKji[2]), float(liverKji[1]), float(liverKji[0]), 1.0])[:3]
        recorded = segmentClicks(liverSegment)
        assert len(recorded) == 1 and recorded[0]["positive"] is True and recorded[0]["organ"] is None
        assert np.allclose(recorded[0]["ras"], local, atol=1e-2)
        assert segmentClicks(segmentation.GetSegment("manual")) == []

        again = clickAndWait(liverKji)  # A5
        print("warm click", again.seconds, again.engineSeconds)
        assert again.status == "unchanged" and segmentation.GetNumberOfSegments() == 2
        air = clickAndWait((0, 0, 0))  # A4
        assert air.status == "no-organ" and segmentation.GetNumberOfSegments() == 2

        # A10: two clicks at once; only the last one's answer reaches the scene
        tool.positive = True
        points.AddControlPoint(vtk.vtkVector3d(*world(kidneyKji)))
        points.AddControlPoint(vtk.vtkVector3d(*world((0, 1, 1))))
        assert tool.waitFor(lambda: tool.outcomes[-1].clickId == tool._latestClick, 120)
        kidneyOutcome = [o for o in tool.outcomes if o.clickId == tool._latestClick - 1][0]
        assert tool.outcomes[-1].status == "no-organ"
        if kidneyOutcome.status == "cancelled":  # abandoned for the newer click: no kidney segment
            assert not segmentation.GetSegmentIdBySegmentName("kidney")
        else:  # finished before the newer click arrived: applied first, and exactly Apply's component
            assert kidneyOutcome.status == "added"
            kidneyId = segmentation.GetSegmentIdBySegmentName("kidney")
            assert np.array_equal(_segmentArray(segNode, kidneyId, shape) > 0, _component(apply_labels, 2, kidneyKji))
            assert tool.undo()
        assert segmentation.GetNumberOfSegments() == 2

        assert tool.undo()  # A6: the liver segment the first click created is gone again
        assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegmentID(0) == "manual"
        assert np.array_equal(_segmentArray(segNode, "manual", shape), other)
    finally:
        t0 = time.monotonic()
        tool.stop()
        print("stop", time.monotonic() - t0)
    assert not tool.running
