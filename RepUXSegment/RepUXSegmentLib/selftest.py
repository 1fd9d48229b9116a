"""The RepUXSegment self-test (what Slicer runs with "Reload and Test" / ctest), without Qt.

``RepUXSegmentTest`` in the module file calls these functions with itself (a ``unittest.TestCase``:
assertions and ``delayDisplay``) and the logic class; they need the running Slicer application's
scene and modules (``slicer.mrmlScene``, ``slicer.modules``, ``slicer.app.temporaryPath``).
"""

import contextlib
import os
import shutil
import tempfile
import time

import slicer
import vtk

__all__ = ["cancelLeavesSceneUnchanged", "roiRestrictsProcessing", "segmentSyntheticVolume"]


@contextlib.contextmanager
def testData(test, makeLogic, angleDegrees=15.0):
    """Logic, work folder, tiny model folder and a synthetic CT volume (rotated about S by ``angleDegrees``).

    The work folder is removed afterwards.
    """
    from RepUXSegmentLib.testing import createTinyModel, syntheticCTArray, syntheticIJKToRAS

    logic = makeLogic()
    logic.setupPythonRequirements(askConfirmation=False)
    folder = tempfile.mkdtemp(prefix="RepUXSegmentTest-", dir=slicer.app.temporaryPath)
    try:
        modelDir = createTinyModel(folder)
        volume = slicer.util.addVolumeFromArray(syntheticCTArray(), ijkToRAS=syntheticIJKToRAS(angleDegrees=angleDegrees), name="RepUXSyntheticCT")
        yield logic, folder, modelDir, volume
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def exportLabels(test, segmentationNode):
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    test.assertTrue(
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(segmentationNode, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    )
    array = slicer.util.arrayFromVolume(labelmap).copy()
    slicer.mrmlScene.RemoveNode(labelmap)
    return array


def segmentSyntheticVolume(test, makeLogic):
    import numpy as np
    import SimpleITK as sitk

    import repux
    from repux.models.store import resolve_model

    test.delayDisplay("Segmenting a synthetic CT with an untrained tiny model")
    with testData(test, makeLogic) as (logic, folder, modelDir, volume):
        updates = []
        segmentationNode = logic.segment(volume, model=str(modelDir), device="cpu", quality="fast", onProgress=lambda f, s, m, e: updates.append((f, s)))

        card = resolve_model(str(modelDir))
        segmentation = segmentationNode.GetSegmentation()
        test.assertEqual(segmentation.GetNumberOfSegments(), len(card.labels))
        for i, label in enumerate(card.labels):
            segment = segmentation.GetNthSegment(i)
            test.assertEqual(segment.GetName(), label.name)
            np.testing.assert_allclose(segment.GetColor(), label.color_float, atol=1e-3)
            tag = vtk.reference("")
            test.assertTrue(segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag))
            test.assertEqual(str(tag), label.slicer_terminology())
        test.assertEqual(segmentationNode.GetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole()), volume.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        test.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)), shNode.GetItemParent(shNode.GetItemByDataNode(volume)))

        fractions = [f for f, _stage in updates]
        test.assertGreater(len(fractions), 3)
        test.assertEqual(fractions, sorted(fractions))
        test.assertEqual(fractions[-1], 1.0)
        test.assertIn("infer", [s for _f, s in updates])

        # the segmentation equals, voxel for voxel, the engine's own result for the same voxels
        exported = exportLabels(test, segmentationNode)
        test.assertEqual(exported.shape, slicer.util.arrayFromVolume(volume).shape)
        path = os.path.join(folder, "input.nrrd")
        test.assertTrue(slicer.util.saveNode(volume, path))
        reference = repux.segment(path, model=str(modelDir), device="cpu", quality="fast")
        np.testing.assert_array_equal(exported, sitk.GetArrayFromImage(reference.labels))
    test.delayDisplay("Test passed")


def roiRestrictsProcessing(test, makeLogic):
    import numpy as np

    test.delayDisplay("Segmenting inside an ROI")
    with testData(test, makeLogic, angleDegrees=0.0) as (logic, _folder, modelDir, volume):  # axis-aligned: the box check is exact
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "RepUXTestROI")
        roi.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        roi.SetSize((bounds[1] - bounds[0]) / 3, (bounds[3] - bounds[2]) / 3, (bounds[5] - bounds[4]) / 3)
        segmentationNode = logic.segment(volume, model=str(modelDir), device="cpu", quality="fast", roiNode=roi)
        labels = exportLabels(test, segmentationNode)
        ijkToRAS = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRAS)
        matrix = slicer.util.arrayFromVTKMatrix(ijkToRAS)
        k, j, i = np.nonzero(labels)
        test.assertGreater(len(i), 0, "the tiny model found nothing inside the ROI")
        ras = matrix[:3, :3] @ np.vstack([i, j, k]) + matrix[:3, 3:4]
        roiBounds = [0.0] * 6
        roi.GetRASBounds(roiBounds)
        margin = 12.0  # up to two 4 mm model voxels around the box, plus one input voxel
        for axis in range(3):
            test.assertGreaterEqual(ras[axis].min(), roiBounds[2 * axis] - margin)
            test.assertLessEqual(ras[axis].max(), roiBounds[2 * axis + 1] + margin)
    test.delayDisplay("Test passed")


def cancelLeavesSceneUnchanged(test, makeLogic):
    test.delayDisplay("Cancelling a run")
    with testData(test, makeLogic) as (logic, _folder, modelDir, volume):
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        progress = []
        job = logic.startSegmentation(volume, str(modelDir), device="cpu", quality="best", onProgress=lambda *args: progress.append(args))
        temporaryFolder = job.tempDirectory
        test.assertTrue(os.path.isdir(temporaryFolder))
        deadline = time.monotonic() + 120
        while job.processEvents() and not progress and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        test.assertTrue(progress, "no progress line within 120 s")
        job.cancel()
        outcome = job.wait(timeout=60)
        test.assertEqual(outcome.status, "cancelled")
        test.assertIsNone(outcome.segmentationNode)
        test.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        test.assertFalse(os.path.exists(temporaryFolder))
    test.delayDisplay("Test passed")
