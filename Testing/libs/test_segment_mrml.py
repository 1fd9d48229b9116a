"""RepUXSegmentLib.mrml on a real MRML scene (no child process): file round trip, ROI, import, SH."""

from __future__ import annotations

import numpy as np
import pytest
from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

pytestmark = pytest.mark.slicer


def labelArray(shape=(12, 16, 20)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:6, 3:8, 4:10] = 1
    labels[7:10, 9:14, 2:6] = 3  # value 2 absent: an empty segment
    return labels


def specs():
    from RepUXSegmentLib.mrml import SegmentSpec

    return [
        SegmentSpec(
            1,
            "liver",
            (0.8, 0.5, 0.4),
            "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^",
        ),
        SegmentSpec(2, "kidney", (0.7, 0.4, 0.3), "tag-kidney"),
        SegmentSpec(3, "spleen", (0.6, 0.4, 0.6), "tag-spleen"),
    ]


def labelmapNode(mrml, labels, ijkToRAS):
    import vtk
    from vtkmodules.util import numpy_support

    node = mrml.slicer.vtkMRMLLabelMapVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.ravel(), deep=True))
    node.SetAndObserveImageData(image)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ijkToRAS[r][c])
    node.SetIJKToRASMatrix(m)
    return node


def test_volume_file_round_trip_keeps_geometry_and_voxels_and_the_scene(mrml, tmp_path):
    import SimpleITK as sitk
    from RepUXSegmentLib.mrml import readLabelmapNrrd, writeVolumeNrrd

    ijkToRAS = syntheticIJKToRAS(leftHanded=True, angleDegrees=25.0)
    arr = syntheticCTArray((10, 12, 14))
    volume = mrml.addVolumeFromArray(arr, ijkToRAS, "lh")
    before = mrml.nodeIDs()
    path = writeVolumeNrrd(volume, tmp_path / "v.nrrd")
    assert mrml.nodeIDs() == before  # the storage node was not added to the scene
    img = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)  # same voxel order, left-handed kept
    direction = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ direction, ijkToRAS[:3, :3], atol=1e-6)
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ np.array(img.GetOrigin()), ijkToRAS[:3, 3], atol=1e-6)
    back = readLabelmapNrrd(path)
    assert back.GetScene() is None
    import vtk

    m = vtk.vtkMatrix4x4()
    back.GetIJKToRASMatrix(m)
    np.testing.assert_allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)], ijkToRAS, atol=1e-6)


def test_write_rejects_unusable_inputs(mrml, tmp_path):
    from RepUXSegmentLib.mrml import readLabelmapNrrd, writeVolumeNrrd

    label = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(ValueError, match="label map"):
        writeVolumeNrrd(label, tmp_path / "x.nrrd")
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no voxels"):
        writeVolumeNrrd(empty, tmp_path / "x.nrrd")
    import vtk

    vector = mrml.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    vector.SetAndObserveImageData(image)
    with pytest.raises(ValueError, match="3 components per voxel"):
        writeVolumeNrrd(vector, tmp_path / "x.nrrd")
    model = mrml.scene.AddNewNodeByClass("vtkMRMLModelNode", "surface")
    with pytest.raises(ValueError, match="scalar volume"):
        writeVolumeNrrd(model, tmp_path / "x.nrrd")
    with pytest.raises(OSError, match="was not written"):
        readLabelmapNrrd(tmp_path / "missing.nrrd")


def test_import_names_colours_tags_and_places_segments(mrml):
    from RepUXSegmentLib.mrml import importLabelmap

    ijkToRAS = syntheticIJKToRAS(angleDegrees=10.0)
    volume = mrml.addVolumeFromArray(syntheticCTArray((12, 16, 20)), ijkToRAS, "ct")
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    seg = importLabelmap(mrml.context(), labelmapNode(mrml, labelArray(), ijkToRAS), specs(), volume)

    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["liver", "kidney", "spleen"]
    assert seg.GetName() == "ct segmentation" and seg.GetTransformNodeID() == transform.GetID()
    import vtk

    tag = vtk.reference("")
    assert segmentation.GetNthSegment(0).GetTag("TerminologyEntry", tag) and "SCT^10200004^Liver" in str(tag)
    np.testing.assert_allclose(segmentation.GetNthSegment(2).GetColor(), (0.6, 0.4, 0.6))
    sh = mrml.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(volume))

    out = mrml.slicer.vtkMRMLLabelMapVolumeNode()
    mrml.scene.AddNode(out)
    assert mrml.segmentationsLogic.ExportAllSegmentsToLabelmapNode(seg, out, mrml.slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    from vtkmodules.util import numpy_support

    exported = numpy_support.vtk_to_numpy(out.GetImageData().GetPointData().GetScalars()).reshape(labelArray().shape)
    np.testing.assert_array_equal(exported, labelArray())


def test_failed_import_leaves_the_scene_and_the_existing_segmentation_as_they_were(mrml):
    from RepUXSegmentLib.mrml import importLabelmap

    volume = mrml.addVolumeFromArray(syntheticCTArray((12, 16, 20)), syntheticIJKToRAS(), "ct")
    broken = mrml.slicer.vtkMRMLLabelMapVolumeNode()  # no image data: Slicer refuses it
    before = mrml.nodeIDs()
    with pytest.raises(RuntimeError, match="could not import"):
        importLabelmap(mrml.context(), broken, specs(), volume)
    assert mrml.nodeIDs() == before

    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("keep", "keep me", [0.1, 0.2, 0.3])
    with pytest.raises(RuntimeError, match="could not import"):
        importLabelmap(mrml.context(), broken, specs(), volume, outputSegmentation=existing)
    segmentation = existing.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "keep me"


def test_roi_bounds_follow_the_volume_transform(mrml):
    import vtk
    from RepUXSegmentLib.mrml import formatRoiRas, roiBoundsInVolumeSpace

    volume = mrml.addVolumeFromArray(syntheticCTArray((8, 8, 8)), syntheticIJKToRAS(), "ct")
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter([0.0, 0.0, 0.0])
    roi.SetSize(20.0, 30.0, 40.0)
    assert roiBoundsInVolumeSpace(roi, volume) == pytest.approx([-10, -15, -20, 10, 15, 20])
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 100.0)  # volume moved 100 mm to the right in the world
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert roiBoundsInVolumeSpace(roi, volume) == pytest.approx([-110, -15, -20, -90, 15, 20])
    assert formatRoiRas([-110, -15, -20, -90, 15, 20]) == "-110.0000,-15.0000,-20.0000,-90.0000,15.0000,20.0000"
    with pytest.raises(ValueError, match="6 finite numbers"):
        formatRoiRas([1, 2, 3])
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "empty")
    empty.SetSize(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        roiBoundsInVolumeSpace(empty, volume)


def test_options_validate_and_build_the_command():
    from RepUXSegmentLib.segmentation import SegmentationOptions

    opts = SegmentationOptions(model="m", device="cuda:1", quality="best", roiRAS=(-1, 2, 3, 4, 5, 6), largestComponent=True, extraArguments=("--threads", "2"))
    opts.validate()
    args = opts.commandArguments("in.nrrd", "out.nrrd", "/models/m")
    assert args[:7] == ["segment", "--input", "in.nrrd", "--model", "/models/m", "--output", "out.nrrd"]
    assert args[args.index("--progress") + 1] == "json" and args[args.index("--device") + 1] == "cuda:1" and args[args.index("--quality") + 1] == "best"
    assert "--roi-ras=-1.0000,2.0000,3.0000,4.0000,5.0000,6.0000" in args and "--largest-component" in args and args[-2:] == ["--threads", "2"]
    for bad, match in [
        (SegmentationOptions(model=""), "no model"),
        (SegmentationOptions(model="m", quality="ultra"), "quality must be one of fast, standard, best"),
        (SegmentationOptions(model="m", device="tpu"), "device must be"),
        (SegmentationOptions(model="m", roiRAS=(1, 2)), "6 finite numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad.validate()


def _parentTransform(mrml, kind):
    """A parent transform for the geometry tests: a translation, a rotation with a shift, or a smooth grid warp."""
    import vtk

    scene = mrml.scene
    if kind in ("translated", "rotated"):
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", kind)
        transform = vtk.vtkTransform()
        transform.Translate(60.0, -15.0, 10.0 if kind == "rotated" else 0.0)
        if kind == "rotated":
            transform.RotateWXYZ(35.0, 0.3, 0.4, 1.0)
        node.SetMatrixTransformToParent(transform.GetMatrix())
        return node
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", kind)
    displacement = vtk.vtkImageData()
    displacement.SetOrigin(-150.0, -150.0, -150.0)
    displacement.SetSpacing(15.0, 15.0, 15.0)
    displacement.SetDimensions(21, 21, 21)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    from vtkmodules.util import numpy_support

    k, j, i = np.meshgrid(*(np.arange(21) for _ in range(3)), indexing="ij")
    x, y, z = (-150.0 + 15.0 * a for a in (i, j, k))
    field = np.stack([40.0 + 8.0 * np.sin(y / 40.0), 6.0 * np.cos(x / 50.0), 5.0 * np.sin(z / 45.0)], axis=-1)
    displacement.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(field.reshape(-1, 3), deep=True))
    grid = mrml.slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(displacement)
    node.SetAndObserveTransformToParent(grid)
    return node


def _worldPoints(transformNode, localPoints):
    """``localPoints`` (N x 3, coordinates of a node under ``transformNode``) in world coordinates."""
    import slicer
    import vtk

    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transformNode, None, toWorld)
    return np.array([toWorld.TransformPoint(list(p)) for p in localPoints])


def _segmentVoxels(segNode, segmentId):
    """The segment's binary labelmap in the segmentation node's own space (no parent transform applied), 1 inside."""
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segNode, segmentId, image, False)
    threshold = vtk.vtkImageThreshold()  # a shared labelmap holds several segments: keep this one's label value
    value = segNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    threshold.ThresholdBetween(value, value)
    threshold.SetInValue(1)
    threshold.SetOutValue(0)
    threshold.SetInputData(image)
    threshold.Update()
    result = slicer.vtkOrientedImageData()
    result.ShallowCopy(threshold.GetOutput())
    result.CopyDirections(image)
    return result


def _segmentContainsWorldPoints(segNode, segmentId, worldPoints):
    """For each world point: is it inside the segment (its binary labelmap, through the segmentation's transform)?"""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    image = _segmentVoxels(segNode, segmentId)
    dims = image.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    worldToSegmentation = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, segNode.GetParentTransformNode(), worldToSegmentation)
    worldToImage = vtk.vtkMatrix4x4()
    image.GetWorldToImageMatrix(worldToImage)  # the image's "world" is the segmentation node's own space
    extent = image.GetExtent()
    inside = []
    for p in worldPoints:
        local = list(worldToSegmentation.TransformPoint(list(p))) + [1.0]
        ijk = [round(v) for v in worldToImage.MultiplyPoint(local)[:3]]
        rel = [ijk[a] - extent[2 * a] for a in range(3)]
        ok = all(0 <= rel[a] < dims[a] for a in range(3)) and voxels[rel[2], rel[1], rel[0]] > 0
        inside.append(bool(ok))
    return np.array(inside)


@pytest.mark.parametrize("kind", ["translated", "rotated", "warped"])
def test_segmentation_of_a_transformed_volume_overlaps_the_organ_in_world_coordinates(mrml, kind):
    """Issue 23 (1): the segmentation of a volume under a parent transform lies on the organ in the world."""
    from RepUXSegmentLib.mrml import importLabelmap

    shape = (16, 20, 24)
    ijkToRAS = syntheticIJKToRAS(spacing=(3.0, 2.5, 3.5), origin=(-30.0, -25.0, -28.0), angleDegrees=15.0)
    volume = mrml.addVolumeFromArray(syntheticCTArray(shape), ijkToRAS, "ct")
    transform = _parentTransform(mrml, kind)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:10, 5:12, 3:9] = 1  # the "organ" (k, j, i): off-centre, so a wrong placement cannot overlap it
    labels[11:14, 13:18, 15:21] = 3
    existing = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "previous result")
    other = _parentTransform(mrml, "translated")  # an output segmentation that sat under another transform
    existing.SetAndObserveTransformNodeID(other.GetID())
    for output in (None, existing):
        segNode = importLabelmap(mrml.context(), labelmapNode(mrml, labels, ijkToRAS), specs(), volume, outputSegmentation=output)
        assert segNode.GetTransformNodeID() == transform.GetID()
        for value, index in ((1, 0), (3, 2)):
            kji = np.argwhere(labels == value)
            local = (ijkToRAS @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]  # voxel centres in the volume's space
            world = _worldPoints(transform, local)  # where the organ is seen in the views
            segmentId = segNode.GetSegmentation().GetNthSegmentID(index)
            inside = _segmentContainsWorldPoints(segNode, segmentId, world)
            assert inside.mean() > 0.97, f"{kind}: only {inside.mean():.0%} of organ {value} is covered by its segment in world coordinates"
            from vtkmodules.util import numpy_support

            count = int(numpy_support.vtk_to_numpy(_segmentVoxels(segNode, segmentId).GetPointData().GetScalars()).sum())
            assert count == pytest.approx(len(kji), rel=0.03)  # and not much more than the organ
