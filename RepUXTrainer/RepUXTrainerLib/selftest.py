"""The RepUXTrainer self-test (what Slicer runs with "Reload and Test" / ctest), without Qt.

``RepUXTrainerTest`` in the module file calls these functions with itself (a ``unittest.TestCase``)
and the logic class.  The whole loop runs on the CPU: synthetic cases, a tiny untrained base model,
a 4-iteration fine-tuning that is stopped and resumed, re-segmentation, uncertainty ranking (about a
minute).  The model store is redirected to a temporary folder, so the user's store is untouched.
"""

import contextlib
import os
import shutil
import tempfile
import time

import slicer

__all__ = ["annotateFinetuneResegmentLoop", "curateCases"]


@contextlib.contextmanager
def workspace(test, makeLogic):
    """A logic, a temporary folder (also the model store), a tiny base model; all removed afterwards."""
    from RepUXSegmentLib.testing import createTinyModel

    folder = tempfile.mkdtemp(prefix="RepUXTrainerTest-", dir=slicer.app.temporaryPath)
    previousHome = os.environ.get("REPUX_HOME")
    os.environ["REPUX_HOME"] = os.path.join(folder, "store")
    logic = makeLogic()
    try:
        logic.setupPythonRequirements(askConfirmation=False)
        yield logic, folder, createTinyModel(os.path.join(folder, "base"))
    finally:
        logic.shutdown()
        if previousHome is None:
            os.environ.pop("REPUX_HOME", None)
        else:
            os.environ["REPUX_HOME"] = previousHome
        shutil.rmtree(folder, ignore_errors=True)

def addCase(name, seed, coarseSegmentation=False, angleDegrees=0.0):
    from RepUXSegmentLib.mrml import MRMLContext
    from RepUXSegmentLib.testing import syntheticIJKToRAS

    from RepUXTrainerLib.testing import addSegmentationFromLabels, coarseGrid, flareLikeSegments, labelsOnGrid, syntheticCase

    ct, labels = syntheticCase((24, 32, 36), seed=seed)
    ijkToRAS = syntheticIJKToRAS(spacing=(3.0, 2.8, 3.4), angleDegrees=angleDegrees)
    volume = slicer.util.addVolumeFromArray(ct, ijkToRAS=ijkToRAS, name=name)
    segmentationGrid, segmentationLabels = ijkToRAS, labels
    if coarseSegmentation:
        segmentationGrid = coarseGrid(ijkToRAS)
        segmentationLabels = labelsOnGrid(labels, ijkToRAS, (12, 16, 18), segmentationGrid)
    segmentation = addSegmentationFromLabels(MRMLContext.fromSlicer(), segmentationLabels, segmentationGrid, flareLikeSegments(), f"{name} segmentation")
    return volume, segmentation

def pump(test, logic, condition, timeout):
    deadline = time.monotonic() + timeout
    while logic.processEvents() and not condition():
        slicer.app.processEvents()
        test.assertLess(time.monotonic(), deadline, "timed out")
        time.sleep(0.05)

def curateCases(test, makeLogic):
    import numpy as np

    test.delayDisplay("Adding cases to a training set")
    with workspace(test, makeLogic) as (logic, folder, modelDir):
        trainingSet = logic.openTrainingSet(os.path.join(folder, "set"), model=str(modelDir))
        volume, segmentation = addCase("Case A", 1, angleDegrees=20.0)
        mapping = logic.mapSegments(segmentation)
        test.assertEqual([e.label for e in mapping], ["liver", "kidney", "spleen", None])  # Lesion: unknown
        export = logic.addCase(volume, segmentation, mapping=mapping)
        test.assertEqual(export.ignoredSegments, ["Lesion"])
        test.assertEqual(export.resampled, "")
        coarseVolume, coarseSegmentation = addCase("Case B", 2, coarseSegmentation=True, angleDegrees=-15.0)
        export = logic.addCase(coarseVolume, coarseSegmentation, addNewClasses=True)
        test.assertIn("spacing", export.resampled)
        test.assertEqual(trainingSet.labels.names[-1], "Lesion")
        test.assertEqual([r.name for r in logic.cases()], ["Case A", "Case B"])
        # the written label map is the segmentation on the volume's voxels
        _reviewVolume, reviewSegmentation = logic.loadCase(export.caseId)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(reviewSegmentation, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        test.assertEqual(slicer.util.arrayFromVolume(labelmap).shape, slicer.util.arrayFromVolume(coarseVolume).shape)
        test.assertEqual(int(np.max(slicer.util.arrayFromVolume(labelmap))), trainingSet.labels.find("Lesion").value)
    test.delayDisplay("Test passed")

def annotateFinetuneResegmentLoop(test, makeLogic):
    from RepUXSegmentLib.models import findModel, listModels

    test.delayDisplay("Fine-tuning a tiny model on two synthetic cases (CPU)")
    with workspace(test, makeLogic) as (logic, folder, modelDir):
        logic.openTrainingSet(os.path.join(folder, "set"), model=str(modelDir))
        for name, seed in (("Case A", 1), ("Case B", 2)):
            volume, segmentation = addCase(name, seed)
            logic.addCase(volume, segmentation, addNewClasses=True)
        unannotated, _segmentation = addCase("Case C", 3)

        updates = []
        job = logic.startFinetune(
            str(modelDir),
            "repux-selftest-finetuned",
            onProgress=updates.append,
            maxIterations=4,
            valInterval=4,
            checkpointInterval=10,
            device="cpu",
            roiSize=32,
            extraArguments=("--augmentation", "none", "--warmup", "1"),
        )
        pump(test, logic, lambda: any("loss" in u.extra for u in updates), timeout=600)
        outcome = logic.stopFinetune(wait=True, timeout=600)
        test.assertEqual(outcome.status, "stopped", outcome.errorMessage)
        test.assertTrue(job.checkpointPath.is_file())

        test.delayDisplay("Resuming")
        job = logic.resumeFinetune(onProgress=updates.append)
        outcome = job.wait(timeout=900)
        test.assertTrue(outcome.succeeded, outcome.errorMessage)
        lossLines = [u.to_dict() for u in updates if "loss" in u.extra]
        test.assertEqual(lossLines[-1]["iteration"], 4)
        test.assertEqual(logic.plot.numberOfRows, len(lossLines))
        test.assertEqual(logic.plot.column("loss"), [line["loss"] for line in lossLines])
        test.assertIn("dice_Lesion", logic.plot.columnNames)
        info = findModel("repux-selftest-finetuned", listModels())
        test.assertIsNotNone(info)
        test.assertIn("Lesion", info.labels)

        test.delayDisplay("Re-segmenting with the new model")
        segmentation = logic.resegment(unannotated, device="cpu", quality="fast")
        segments = segmentation.GetSegmentation()
        test.assertEqual([segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())], list(info.labels))
        test.assertEqual(segmentation.GetAttribute("RepUX.Model"), "repux-selftest-finetuned")

        test.delayDisplay("Ranking the next case by uncertainty")
        ranked = logic.rankCandidates(device="cpu")
        test.assertEqual([c.name for c in ranked], ["Case C"])  # the two cases are annotated already
        test.assertTrue(0.0 <= ranked[0].meanEntropy <= 1.0)
        volume, overlay = logic.showUncertainty(ranked[0])
        test.assertIs(volume, unannotated)
        test.assertEqual(overlay.GetAttribute("RepUXTrainer.Uncertainty"), "1")
    test.delayDisplay("Test passed")
