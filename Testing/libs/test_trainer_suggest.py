"""Next-case suggestion: not-yet-annotated volumes (scene or folder) ranked by the model's mean uncertainty,
computed by the real ``repux segment --uncertainty --summary`` child process; the uncertainty map shown as
a colour overlay on its volume."""

from __future__ import annotations

import numpy as np
import pytest
import trainer_fixtures
from trainer_fixtures import addCaseNodes, arrayFromVolumeNode, ijkToRASArray, sampleFileOnGrid

pytestmark = pytest.mark.slicer
trainer = trainer_fixtures.trainer  # pytest fixture (plain modules are not scanned for fixtures)


def test_scene_volumes_not_yet_annotated_are_ranked_and_the_map_is_overlaid(mrml, trainer, tiny_model_dir, tmp_path):
    from RepUXSegmentLib.mrml import writeVolumeNrrd
    from RepUXSegmentLib.testing import syntheticIJKToRAS
    from RepUXTrainerLib.testing import syntheticCase

    import repux

    trainer.openTrainingSet(tmp_path / "set", model=str(tiny_model_dir))
    annotated = addCaseNodes(mrml, "annotated", 1, syntheticIJKToRAS(spacing=(3.0, 3.0, 3.5)))
    trainer.addCase(annotated.volume, annotated.segmentation)
    organLike = mrml.addVolumeFromArray(syntheticCase((24, 30, 36), seed=5)[0], syntheticIJKToRAS(spacing=(3.1, 2.9, 3.3)), "organ-like")
    rng = np.random.default_rng(0)
    noise = mrml.addVolumeFromArray(rng.normal(50, 300, (20, 28, 30)).astype(np.int16), syntheticIJKToRAS(spacing=(3.0, 3.0, 3.0), angleDegrees=15.0), "noise")
    mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "some labels")

    candidates = trainer.sceneCandidates()
    assert [c.name for c in candidates] == ["organ-like", "noise"]  # the case volume and label maps are not offered
    progress = []
    ranked = trainer.rankCandidates(
        candidates, model=str(tiny_model_dir), device="cpu", onProgress=lambda done, total, c: progress.append((done, total, c.name))
    )

    assert progress == [(1, 2, "organ-like"), (2, 2, "noise")]
    assert all(c.status == "done" and 0.0 <= c.meanEntropy <= 1.0 for c in ranked)
    assert [c.meanEntropy for c in ranked] == sorted((c.meanEntropy for c in ranked), reverse=True)
    # the value is the engine's own mean uncertainty for that volume
    path = writeVolumeNrrd(organLike, tmp_path / "organ-like.nrrd")
    reference = repux.segment(str(path), model=str(tiny_model_dir), device="cpu", quality="fast", uncertainty=True)
    assert next(c for c in ranked if c.name == "organ-like").meanEntropy == pytest.approx(reference.summary["mean_entropy"], abs=1e-4)

    for i in range(3):
        mrml.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", f"view {i}")
    worst = ranked[0]
    nodes = mrml.nodeIDs()
    volume, overlay = trainer.showUncertainty(worst)
    assert volume is worst.volumeNode and overlay.GetID() not in nodes
    assert overlay.GetAttribute("RepUXTrainer.Uncertainty") == "1"
    np.testing.assert_allclose(ijkToRASArray(overlay), ijkToRASArray(volume), atol=1e-5)  # the volume's own grid
    values = arrayFromVolumeNode(overlay)
    assert values.shape == arrayFromVolumeNode(volume).shape and values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    display = overlay.GetDisplayNode()
    assert display.GetColorNodeID() in ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron", "vtkMRMLColorTableNodeRainbow")
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.1) and (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    for i in range(3):
        composite = mrml.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert (composite.GetForegroundVolumeID(), composite.GetBackgroundVolumeID(), composite.GetForegroundOpacity()) == (
            overlay.GetID(),
            volume.GetID(),
            0.5,
        )
    assert overlay not in [c.volumeNode for c in trainer.sceneCandidates()]  # an uncertainty map is never a candidate

    folder = trainer.ranking.folder
    trainer.ranking.cleanup()
    assert not folder.exists() and worst.uncertaintyPath is None
    with pytest.raises(ValueError, match="no uncertainty map"):
        trainer.showUncertainty(worst)
    assert noise is not None


def test_folder_images_are_ranked_and_a_chosen_one_is_loaded_with_its_map(mrml, trainer, tiny_model_dir, tmp_path):
    import SimpleITK as sitk
    from RepUXTrainerLib.testing import syntheticCase

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for seed in (7, 8):
        image = sitk.GetImageFromArray(syntheticCase((22, 28, 30), seed=seed)[0])
        image.SetSpacing((3.2, 3.0, 3.4))
        image.SetOrigin((10.0, -20.0, 30.0))
        image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # left-handed: Slicer's reader flips k, the map must follow physically
        sitk.WriteImage(image, str(folder / f"ct_{seed}.nii.gz"))
    (folder / "notes.txt").write_text("not an image")

    candidates = trainer.folderCandidates(folder)
    assert [c.name for c in candidates] == ["ct_7", "ct_8"] and all(c.volumeNode is None for c in candidates)
    ranked = trainer.rankCandidates(candidates, model=str(tiny_model_dir), device="cpu")
    assert [c.status for c in ranked] == ["done", "done"] and ranked[0].meanEntropy >= ranked[1].meanEntropy

    volume, overlay = trainer.showUncertainty(ranked[0])
    assert volume.GetName() == ranked[0].name and ranked[0].volumeNode is volume
    volumeBounds, overlayBounds = [0.0] * 6, [0.0] * 6
    volume.GetRASBounds(volumeBounds)
    overlay.GetRASBounds(overlayBounds)
    np.testing.assert_allclose(overlayBounds, volumeBounds, atol=1e-4)  # same physical box, whatever the index order
    values = arrayFromVolumeNode(overlay)
    np.testing.assert_allclose(values, sampleFileOnGrid(ranked[0].uncertaintyPath, values.shape, ijkToRASArray(overlay)), atol=1e-6)
    with pytest.raises(ValueError, match="not a folder"):
        trainer.folderCandidates(tmp_path / "missing")
