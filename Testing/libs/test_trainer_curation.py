"""RepUXTrainer case curation on a real MRML scene: cases written through Slicer's storage nodes and the
segmentations logic, checked against the nodes in physical space (SimpleITK reads the files); label
mapping by name and SNOMED code, unknown segments flagged or added as classes; remove, rename, reopen,
reload for review."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trainer_fixtures
from trainer_fixtures import addCaseNodes, arrayFromVolumeNode, ijkToRASArray, sampleFileOnGrid

pytestmark = pytest.mark.slicer
trainer = trainer_fixtures.trainer  # pytest fixture (plain modules are not scanned for fixtures)


def grid(spacing, origin, angleDegrees=0.0, leftHanded=False):
    from RepUXSegmentLib.testing import syntheticIJKToRAS

    return syntheticIJKToRAS(spacing=spacing, origin=origin, leftHanded=leftHanded, angleDegrees=angleDegrees)


@pytest.fixture
def twoCases(mrml, trainer, tiny_model_dir, tmp_path):
    """A training set (FLARE classes of the tiny model) and two cases in the scene:
    A on a left-handed oblique grid with its segmentation on the same grid,
    B with its segmentation on a 2x coarser grid whose voxel centres are shifted."""
    from RepUXTrainerLib.testing import coarseGrid

    trainingSet = trainer.openTrainingSet(tmp_path / "my set", model=str(tiny_model_dir))
    a = addCaseNodes(mrml, "patient A", 1, grid((3.0, 2.5, 3.5), (-60.0, -50.0, -40.0), angleDegrees=20.0, leftHanded=True))
    bGrid = grid((2.5, 2.0, 3.0), (-50.0, -40.0, -30.0))
    b = addCaseNodes(mrml, "patient B", 2, bGrid, segmentationGrid=coarseGrid(bGrid))
    return trainingSet, a, b


def test_two_cases_are_written_on_the_volume_grid_with_the_training_set_values(mrml, trainer, twoCases):
    from repux.data.check import check_dataset
    from repux.data.datasets import load_dataset

    trainingSet, a, b = twoCases
    assert trainingSet.labels.names == ["liver", "kidney", "spleen", "pancreas"] and trainingSet.referenceModel == "tiny-test"
    nodesBefore = mrml.nodeIDs()

    mappingA = trainer.mapSegments(a.segmentation)
    assert [(e.segment.name, e.label, e.matchedBy) for e in mappingA] == [
        ("Liver", "liver", "name"),
        ("Segment_2", "kidney", "terminology"),
        ("spleen", "spleen", "name"),
        ("Lesion", None, ""),
    ]
    assert [e.segment.name for e in mappingA.unknown()] == ["Lesion"]
    # clicks recorded on a segment by the click tool travel into the case (by class), in the volume's RAS
    from RepUXSegmentLib.clicksession import CLICKS_TAG

    liver = a.segmentation.GetSegmentation().GetSegment(a.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver"))
    liver.SetTag(CLICKS_TAG, json.dumps([{"ras": [-60.0, 10.0, 25.0], "positive": True, "organ": None}]))
    exportA = trainer.addCase(a.volume, a.segmentation, mappingA, sourceModel="repux-amos")  # Lesion not added: ignored
    exportB = trainer.addCase(b.volume, b.segmentation, addNewClasses=True)

    assert mrml.nodeIDs() == nodesBefore  # the export left no node behind
    assert exportA.resampled == "" and exportA.ignoredSegments == ["Lesion"] and exportA.newClasses == []
    assert "spacing 5 x 4 x 6 mm instead of 2.5 x 2 x 3 mm" in exportB.resampled, exportB.resampled
    assert exportB.newClasses == ["Lesion"] and exportB.ignoredSegments == []
    assert any("resampled onto the volume's grid" in line for line in exportB.messages())
    assert trainingSet.labels.names == ["liver", "kidney", "spleen", "pancreas", "Lesion"] and trainingSet.labels.find("Lesion").value == 5

    # files, read without Slicer, against the nodes: same physical grid, same voxels
    for case, export, valueMap in ((a, exportA, {1: 1, 2: 2, 3: 3, 4: 0}), (b, exportB, {1: 1, 2: 2, 3: 3, 4: 5})):
        shape, matrix = case.ct.shape, ijkToRASArray(case.volume)
        np.testing.assert_array_equal(sampleFileOnGrid(export.imagePath, shape, matrix), arrayFromVolumeNode(case.volume))
        lookup = np.zeros(256, dtype=np.int64)
        for source, target in valueMap.items():
            lookup[source] = target
        expected = lookup[case.labels]
        written = sampleFileOnGrid(export.labelPath, shape, matrix)
        assert np.count_nonzero(expected) > 500
        np.testing.assert_array_equal(written, expected)
    # B really was resampled: its segmentation grid is coarser, the file is on the volume's finer grid
    assert b.segmentationLabels.shape != b.ct.shape
    # the left-handed oblique grid of A is kept as it is (no flip, no reorientation)
    import SimpleITK as sitk

    image = sitk.ReadImage(str(exportA.imagePath))
    assert np.linalg.det(np.array(image.GetDirection()).reshape(3, 3)) < 0

    # the manifest: what the table shows is in each case's meta; the engine reads the folder as it is
    rows = trainingSet.rows()
    assert [(r.id, r.name, r.organs, r.sourceModel) for r in rows] == [
        ("patient_A", "patient A", ("liver", "kidney", "spleen"), "repux-amos"),
        ("patient_B", "patient B", ("liver", "kidney", "spleen", "Lesion"), ""),
    ]
    assert rows[1].resampled == exportB.resampled and len(rows[0].addedDate) == 16
    manifest = json.loads(trainingSet.manifestPath.read_text())
    assert manifest["cases"][0]["segments"] == {"Liver": "liver", "Segment_2": "kidney", "spleen": "spleen", "Lesion": None}
    assert manifest["cases"][1]["voxels"]["Lesion"] > 0 and manifest["repux_trainer"]["reference_model"] == "tiny-test"
    assert manifest["cases"][0]["clicks"] == {"liver": [{"ras": [-60.0, 10.0, 25.0], "positive": True, "organ": None}]}
    assert "clicks" not in manifest["cases"][1]
    dataset = load_dataset(trainingSet.root)
    assert dataset.labels.names == trainingSet.labels.names and [c.id for c in dataset.cases] == ["patient_A", "patient_B"]
    assert all(not r.errors for r in check_dataset(dataset))
    assert a.volume.GetAttribute("RepUXTrainer.CaseId") == "patient_A"
    warnings = trainingSet.warnings()
    assert len(warnings) == 1 and "pancreas" in warnings[0]


def test_label_mapping_by_name_alias_code_and_side():
    from RepUXTrainerLib.mapping import LabelMapping, SegmentInfo, labelForNewSegment
    from RepUXTrainerLib.testing import terminologyTag

    from repux.labels import AMOS, FLARE

    tissue = (
        "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    segments = [
        SegmentInfo("s1", "Liver_corrected", terminology=terminologyTag("10200004", "Liver")),
        SegmentInfo("s2", "kidney left", terminology=terminologyTag("64033007", "Kidney", "7771000", "Left")),
        SegmentInfo("s3", "Gall-Bladder"),
        SegmentInfo("s4", "Segment_4", terminology=tissue),
        SegmentInfo("s5", "Postcava"),
    ]
    flare = LabelMapping.build(segments, FLARE)
    assert [(e.label, e.matchedBy) for e in flare] == [
        ("liver", "terminology"),
        ("kidney", "terminology (left/right ignored)"),
        (None, ""),
        (None, ""),
        (None, ""),
    ]
    amos = LabelMapping.build(segments, AMOS)
    assert [(e.label, e.matchedBy) for e in amos] == [
        ("liver", "terminology"),
        ("left kidney", "name"),  # "kidney left" is a known alias
        ("gallbladder", "name"),
        (None, ""),
        ("inferior vena cava", "name"),
    ]
    assert [e.status for e in flare] == ["mapped", "mapped", "unknown", "unknown", "unknown"]
    flare.addUnknownAsNewClasses()
    assert [e.status for e in flare.newClasses()] == ["new class"] * 3
    flare.setTarget("s4", "spleen", FLARE)
    assert flare.entry("s4").matchedBy == "manual" and flare.entry("s4").status == "mapped"
    flare.setTarget("s1", None)
    assert flare.entry("s1").status == "ignored" and "Liver_corrected: ignored" in flare.summary()
    assert flare.segmentIdsByLabel(FLARE.names) == {"kidney": ["s2"], "spleen": ["s4"]}
    with pytest.raises(ValueError, match="no class 'tumour'"):
        flare.setTarget("s1", "tumour", FLARE)
    with pytest.raises(ValueError, match="no segment with id 'nope'"):
        flare.entry("nope")

    # new classes keep what is known about the structure: terminology codes, else the known organ's
    gallbladder = labelForNewSegment(SegmentInfo("x", "Gall-Bladder", (0.5, 0.6, 0.4)), 5)
    assert gallbladder.type is None  # "Gall-Bladder" is not a key of the organ table: no invented codes
    aorta = labelForNewSegment(SegmentInfo("x", "aorta", (1.0, 0.0, 0.0)), 6)
    assert aorta.type.value == "15825003" and aorta.color == (255, 0, 0) and aorta.value == 6
    coded = labelForNewSegment(SegmentInfo("x", "Tumor", terminology=terminologyTag("108369006", "Neoplasm")), 7)
    assert coded.type.value == "108369006" and "SCT^108369006^Neoplasm" in coded.slicer_terminology()
    generic = labelForNewSegment(SegmentInfo("x", "Segment_4", terminology=tissue), 8)
    assert generic.type is None


def test_remove_rename_reopen_and_review(mrml, trainer, twoCases):
    from RepUXTrainerLib.logic import TrainerLogic
    from RepUXTrainerLib.trainingset import TrainingSet

    trainingSet, a, b = twoCases
    exportA = trainer.addCase(a.volume, a.segmentation, addNewClasses=True)
    exportB = trainer.addCase(b.volume, b.segmentation)
    trainer.renameCase(exportA.caseId, "  Patient A (corrected twice) ")
    trainer.removeCase(exportB.caseId)
    assert not exportB.imagePath.exists() and not exportB.labelPath.exists()
    with pytest.raises(ValueError, match="no case 'patient_B'"):
        trainer.removeCase(exportB.caseId)
    with pytest.raises(ValueError, match="cannot be empty"):
        trainer.renameCase(exportA.caseId, " ")

    # "after a restart": a new logic on a fresh scene opens the folder
    mrml.scene.Clear(0)
    again = TrainerLogic(context=mrml.context())
    reopened = again.openTrainingSet(trainingSet.root)
    assert [(r.id, r.name, r.organs) for r in reopened.rows()] == [("patient_A", "Patient A (corrected twice)", ("liver", "kidney", "spleen", "Lesion"))]
    assert reopened.labels == trainingSet.labels and TrainingSet.open(trainingSet.root).labels.names[-1] == "Lesion"

    volume, segmentation = again.loadCase("patient_A")
    assert volume.GetName() == "Patient A (corrected twice)" and segmentation.GetName() == "Patient A (corrected twice) segmentation"
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == reopened.labels.names
    for i, label in enumerate(reopened.labels):
        np.testing.assert_allclose(seg.GetNthSegment(i).GetColor(), label.color_float, atol=1e-6)
    # the reloaded segmentation is the file's label map, on the reloaded volume's grid, physically
    out = mrml.slicer.vtkMRMLLabelMapVolumeNode()
    mrml.scene.AddNode(out)
    assert mrml.segmentationsLogic.ExportAllSegmentsToLabelmapNode(segmentation, out, mrml.slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    reloaded = arrayFromVolumeNode(out)
    np.testing.assert_array_equal(reloaded, sampleFileOnGrid(exportA.labelPath, reloaded.shape, ijkToRASArray(out)))
    np.testing.assert_array_equal(arrayFromVolumeNode(volume), sampleFileOnGrid(exportA.imagePath, reloaded.shape, ijkToRASArray(volume)))
    sh = mrml.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    folder = sh.GetItemParent(sh.GetItemByDataNode(volume))
    assert sh.GetItemName(folder) == "Training set: my set" and sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == folder
    # a reviewed case is not offered as a next case
    assert volume.GetID() not in {c.volumeNode.GetID() for c in again.sceneCandidates()}


def test_refused_inputs_leave_folder_and_scene_as_they_were(mrml, trainer, twoCases, tiny_model_dir, tmp_path):
    from RepUXTrainerLib.testing import SegmentSpec, addSegmentationFromLabels
    from RepUXTrainerLib.trainingset import TrainingSetError

    trainingSet, a, _b = twoCases
    manifest = trainingSet.manifestPath.read_text()
    unknown = addSegmentationFromLabels(
        mrml.context(), a.labels, ijkToRASArray(a.volume), [SegmentSpec(1, "Segment_1"), SegmentSpec(2, "blob")], "unknown only"
    )
    nodes = mrml.nodeIDs()
    with pytest.raises(ValueError, match="none of the segments .* maps to a class"):
        trainer.addCase(a.volume, unknown)
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    with pytest.raises(ValueError, match="choose a scalar|label map"):
        trainer.addCase(labelmap, a.segmentation)
    mrml.scene.RemoveNode(labelmap)
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="has no segments"):
        trainer.addCase(a.volume, empty)
    mrml.scene.RemoveNode(empty)
    stale = trainer.mapSegments(a.segmentation)
    a.segmentation.GetSegmentation().AddEmptySegment("added", "added later", [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="changed since their mapping was made"):
        trainer.addCase(a.volume, a.segmentation, stale)
    assert trainingSet.manifestPath.read_text() == manifest and trainingSet.cases == []
    assert [p.name for p in trainingSet.root.rglob("*") if p.is_file()] == ["repux-dataset.json"]
    assert mrml.nodeIDs() == nodes

    (tmp_path / "not empty").mkdir()
    (tmp_path / "not empty" / "notes.txt").write_text("x")
    with pytest.raises(TrainingSetError, match="not empty"):
        trainer.openTrainingSet(tmp_path / "not empty", model=str(tiny_model_dir))
    with pytest.raises(TrainingSetError, match="choose a model first"):
        trainer.openTrainingSet(tmp_path / "new set")
    trainer.openTrainingSet(trainingSet.root)
    with pytest.raises(ValueError, match="add at least 2"):
        trainer.finetuneOptions(str(tiny_model_dir))


@pytest.mark.realdata
def test_real_ct_with_an_amos_segmentation_becomes_a_flare_case(mrml, trainer, tiny_model_dir, tmp_path):
    """The real CT with its 15-organ (AMOS) segmentation, as RepUX Segment would produce it (names, colours,
    SNOMED tags), added to a training set with the 4 FLARE classes: both kidneys merge into "kidney" by
    their terminology code, the 10 other organs are flagged unknown, and the written label map equals the
    data set's own FLARE label map voxel for voxel (both come from the same TotalSegmentator output)."""
    from helpers import shared_file  # skips with a clear message without ../shared/data
    from RepUXSegmentLib.mrml import SegmentSpec, importLabelmap

    from repux.labels import AMOS

    ctPath = shared_file("ct-abdomen", "example_ct_sm.nii.gz")
    amosPath = shared_file("ct-abdomen", "labels", "example_ct_sm_amos15.nii.gz")
    flarePath = shared_file("ct-abdomen", "labels", "example_ct_sm_flare4.nii.gz")
    trainingSet = trainer.openTrainingSet(tmp_path / "set", model=str(tiny_model_dir))
    volume = mrml.loadVolume(ctPath, "example_ct_sm")
    labelmap = mrml.volumesLogic.AddArchetypeVolume(str(amosPath), "amos labels", 1)
    specs = [SegmentSpec(lab.value, lab.name, tuple(lab.color_float), lab.slicer_terminology()) for lab in AMOS]
    segmentation = importLabelmap(mrml.context(), labelmap, specs, volume)

    mapping = trainer.mapSegments(segmentation)
    assert {e.segment.name: (e.label, e.matchedBy) for e in mapping.mapped()} == {
        "spleen": ("spleen", "name"),
        "right kidney": ("kidney", "terminology (left/right ignored)"),
        "left kidney": ("kidney", "terminology (left/right ignored)"),
        "liver": ("liver", "name"),
        "pancreas": ("pancreas", "name"),
    }
    assert len(mapping.unknown()) == 10 and "gallbladder" in [e.segment.name for e in mapping.unknown()]
    export = trainer.addCase(volume, segmentation, mapping, sourceModel="repux-amos")

    assert export.resampled == "" and len(export.ignoredSegments) == 10
    shape, matrix = arrayFromVolumeNode(volume).shape, ijkToRASArray(volume)
    written = sampleFileOnGrid(export.labelPath, shape, matrix)
    reference = sampleFileOnGrid(flarePath, shape, matrix)
    assert np.count_nonzero(reference == 2) > 1000  # both kidneys are in these slices
    np.testing.assert_array_equal(written, reference)
    np.testing.assert_array_equal(sampleFileOnGrid(export.imagePath, shape, matrix), sampleFileOnGrid(ctPath, shape, matrix))
    assert trainingSet.rows()[0].organs == ("liver", "kidney", "spleen", "pancreas") and trainingSet.warnings() == [
        "the training set has 1 case(s); fine-tuning needs at least 2 (one is held out for validation)."
    ]
