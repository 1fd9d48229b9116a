"""RepUXSegment batch: several volume nodes, one ``repux segment`` batch process (one model load), in a real MRML scene."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from launcher import launchedPids, makeLauncher, pidAlive
from test_segment_headless import CliRun, exportLabels, ijkToRASArray, sampleInPhysicalSpace

pytestmark = pytest.mark.slicer


def _volumes(mrml, n=2, shape=(24, 40, 48)):
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    return [
        mrml.addVolumeFromArray(
            syntheticCTArray(shape, seed=i), syntheticIJKToRAS(spacing=(3.3, 3.1, 3.5), angleDegrees=15.0 * i, leftHanded=i == 1), f"ct {i}"
        )
        for i in range(n)
    ]


def test_batch_segments_every_volume_beside_it_and_reports_a_bad_one(mrml, tiny_model_dir, tmp_path):
    from RepUXSegmentLib.batch import segmentVolumes, writeStatisticsCsv
    from RepUXSegmentLib.mrml import writeVolumeNrrd
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    good = _volumes(mrml, 2)
    bad = mrml.addVolumeFromArray(syntheticCTArray((1, 40, 48)), syntheticIJKToRAS(), "ct 1")  # one slice; same name as another volume
    sh = mrml.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    cli = CliRun(writeVolumeNrrd(good[1], tmp_path / "ct1.nrrd"), tiny_model_dir, tmp_path / "cli.nrrd", "--organs", "spleen,liver")
    progress, finishedCases, logs = [], [], []
    outcome = segmentVolumes(
        [good[0], bad, good[1]],
        str(tiny_model_dir),
        organs=("spleen", "liver"),
        statistics=True,
        device="cpu",
        quality="fast",
        context=mrml.context(),
        pythonExecutable=sys.executable,
        onProgress=lambda f, s, m, e: progress.append((f, s, m)),
        onCaseFinished=finishedCases.append,
        onLog=lambda level, text: logs.append((level, text)),
        timeout=600,
    )
    assert outcome.status == "failed" and "1 of 3 volumes failed" in outcome.errorMessage
    assert [c.status for c in outcome.cases] == ["done", "failed", "done"]
    assert "single slice" in outcome.cases[1].errorMessage
    assert [c.caseName for c in outcome.cases] == ["ct_0", "ct_1", "ct_1_2"]
    assert sorted(c.caseName for c in finishedCases) == ["ct_0", "ct_1", "ct_1_2"]
    fractions = [f for f, _s, _m in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for case in outcome.done:
        seg = case.segmentationNode
        assert seg.GetName() == f"{case.volumeNode.GetName()} segmentation"
        assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(case.volumeNode))
        segmentation = seg.GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["liver", "spleen"]
        assert set(case.volumesMl) == {"liver", "spleen"}
        assert [row["organ"] for row in case.statistics] == ["liver", "spleen"]
        assert [round(row["volume_ml"], 2) for row in case.statistics] == [case.volumesMl["liver"], case.volumesMl["spleen"]]
    # voxel for voxel what `repux segment` gives for that volume alone (left-handed, rotated: compared in physical space)
    exported = exportLabels(mrml, outcome.cases[2].segmentationNode, good[1])
    expected = sampleInPhysicalSpace(cli.result(), exported, ijkToRASArray(good[1]))
    assert np.count_nonzero(expected) > 100
    np.testing.assert_array_equal(exported, expected)
    assert os.listdir(mrml.tempDirectory) == []
    table = writeStatisticsCsv(outcome.cases, tmp_path / "statistics.csv").read_text().splitlines()
    assert table[0].startswith("volume,organ,voxels,volume_ml,hu_mean") and len(table) == 1 + 2 * 2
    assert table[1].startswith("ct 0,liver,")
    from RepUXSegmentLib.batch import STATISTICS_TABLE_HEADERS, statisticsTableRows

    rows = statisticsTableRows(outcome.cases)  # what the module's Statistics table shows
    assert len(rows) == 4 and all(len(r) == len(STATISTICS_TABLE_HEADERS) for r in rows)
    assert rows[0][:3] == ("ct 0", "liver", f"{outcome.cases[0].statistics[0]['volume_ml']:.1f}") and rows[0][-1] in ("yes", "no")


@pytest.mark.skipif(os.name == "nt", reason="the launcher script is POSIX-shaped")
def test_cancel_stops_after_the_current_case_and_keeps_it(mrml, tiny_model_dir, tmp_path):
    """Through a PythonSlicer-shaped launcher (no SIGTERM forwarding): the stop goes through the control channel."""
    from RepUXSegmentLib.logic import SegmentLogic

    volumes = _volumes(mrml, 3, shape=(40, 64, 64))
    nodesBefore = mrml.nodeIDs()
    launcher = makeLauncher(tmp_path)
    logic = SegmentLogic(context=mrml.context(), pythonExecutable=launcher)
    job = logic.startBatchSegmentation(volumes, str(tiny_model_dir), device="cpu", quality="best")
    inferring = []
    job.onProgress = lambda f, s, m, e: inferring.append(s) if s == "infer" else None
    deadline = time.monotonic() + 180
    while job.processEvents() and not inferring and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inferring, "no network progress within 180 s"
    job.cancel()
    assert job.running  # the running case goes on
    outcome = job.wait(timeout=300)
    assert outcome.status == "cancelled"
    statuses = [c.status for c in outcome.cases]
    assert statuses[0] == "done" and "cancelled" in statuses[1:] and outcome.cases[0].segmentationNode is not None
    new = mrml.nodeIDs() - nodesBefore
    kept = [c.segmentationNode.GetID() for c in outcome.done]
    assert set(kept) <= new and all(
        mrml.scene.GetNodeByID(n).IsA("vtkMRMLSegmentationNode") or mrml.scene.GetNodeByID(n).IsA("vtkMRMLDisplayNode") for n in new
    )
    assert job.runner.process.poll() is not None and os.listdir(mrml.tempDirectory) == []
    assert not any(pidAlive(p) for p in launchedPids(launcher)), "the engine under the launcher survived the batch"
