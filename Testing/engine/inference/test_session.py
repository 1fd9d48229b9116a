"""Click-to-segment engine (repux.inference.session.InteractiveSession): a click gives Apply's organ component, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import shared_file

from repux.labels import FLARE
from repux.progress import CancelToken


@pytest.fixture(scope="module")
def segmenter():
    from repux.inference.segmenter import Segmenter

    return Segmenter("repux-tiny-phantom", device="cpu")


def _ras_of_index(img: sitk.Image, kji) -> tuple[float, float, float]:
    k, j, i = (int(v) for v in kji)
    x, y, z = img.TransformIndexToPhysicalPoint((i, j, k))
    return (-x, -y, z)


def _apply_component(apply_labels: np.ndarray, value: int, kji) -> np.ndarray:
    """The face-connected component of Apply's organ containing the voxel (SimpleITK's default connectivity)."""
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((apply_labels == value).astype(np.uint8))))
    return cc == cc[tuple(kji)]


def _paste(result, shape) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    arr = result.array()
    i, j, k = result.offset
    out[k : k + arr.shape[0], j : j + arr.shape[1], i : i + arr.shape[2]] = arr
    return out


def _inner_voxel(truth: np.ndarray, apply_labels: np.ndarray, value: int):
    """A voxel deep inside the organ in both the truth and Apply's result."""
    from scipy import ndimage

    both = ndimage.binary_erosion((truth == value) & (apply_labels == value), iterations=2)
    pts = np.argwhere(both)
    assert len(pts), f"organ {value} not found"
    return tuple(pts[len(pts) // 2])


@pytest.mark.parametrize("orientation", ["axial", "oblique", "left-handed"])
def test_click_equals_apply_component(segmenter, orientation):
    """A1/A2/A3/A7: each click gives the organ under the point (never a mirrored one), equal to Apply's component voxel for voxel."""
    from repux.data.phantom import generate_phantom
    from repux.inference.session import InteractiveSession

    ph = generate_phantom(3, orientation=orientation, size_mm=(300, 240, 200))
    apply_labels = sitk.GetArrayFromImage(segmenter.segment(ph.image).labels)
    truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
    s = InteractiveSession(segmenter=segmenter, background=False)
    s.open(ph.image)
    state = np.zeros_like(apply_labels)
    for name in ("liver", "kidney", "spleen"):
        value = FLARE.find(name).value
        kji = _inner_voxel(truth, apply_labels, value)
        r = s.click(_ras_of_index(ph.image, kji))
        assert (r.status, r.organ, r.value, r.index) == ("added", name, value, tuple(int(v) for v in kji[::-1]))
        got = _paste(r, apply_labels.shape) == value
        want = _apply_component(apply_labels, value, kji)
        assert np.array_equal(got, want), f"{orientation} {name}: {int((got != want).sum())} voxels differ"
        if name == "kidney":  # a paired organ under one label: the clicked side only
            assert want.sum() < (apply_labels == value).sum()
        crop_origin = r.labels.GetOrigin()
        assert np.allclose(crop_origin, ph.image.TransformIndexToPhysicalPoint(r.offset))
        state[want] = value
    assert np.array_equal(sitk.GetArrayFromImage(s.label_image()), state)  # nothing else changed
    s.close()


def test_model_grid_equals_full_pass_and_corrections(segmenter):
    """Every window blended as the full pass (labels bit-equal); A4 background, outside, A5 twice, A6 undo, negative click, reset."""
    from repux.data.phantom import generate_phantom
    from repux.inference.session import InteractiveSession

    ph = generate_phantom(5, orientation="axial", size_mm=(300, 240, 200))
    prepared = segmenter.infer(segmenter.prepare(ph.image))
    s = InteractiveSession(segmenter=segmenter, background=True)
    info = s.open(ph.image)
    assert info["windows"] == s.windows_total > 1
    assert s.wait(120)
    assert s.windows_done == s.windows_total and not s._probs  # raw window outputs freed once blended
    assert np.array_equal(s._grid_labels[prepared.crop], prepared.label_crop)

    img = ph.image
    apply_labels = sitk.GetArrayFromImage(segmenter.finish(prepared).labels)
    assert s.click((1e4, 0.0, 0.0)).status == "outside"
    air = s.click(_ras_of_index(img, (0, 0, 0)))
    assert (air.status, air.message, air.labels) == ("no-organ", "no organ here", None)
    assert not sitk.GetArrayFromImage(s.label_image()).any()

    liver = FLARE.find("liver").value
    kji = _inner_voxel(sitk.GetArrayFromImage(ph.label_map(FLARE)), apply_labels, liver)
    r1 = s.click(_ras_of_index(img, kji))
    assert r1.status == "added" and r1.windows == 0  # warm: all windows were computed in the background
    r2 = s.click(_ras_of_index(img, kji))
    assert r2.status == "unchanged" and np.array_equal(sitk.GetArrayFromImage(s.label_image()) == liver, _apply_component(apply_labels, liver, kji))
    neg = s.click(_ras_of_index(img, kji), positive=False)
    assert neg.status == "removed" and not sitk.GetArrayFromImage(s.label_image()).any()
    assert s.undo().status == "undone" and (sitk.GetArrayFromImage(s.label_image()) == liver).sum() == r1.voxels
    assert s.reset().status == "reset" and not sitk.GetArrayFromImage(s.label_image()).any()
    assert s.undo().status == "undone" and (sitk.GetArrayFromImage(s.label_image()) == liver).sum() == r1.voxels

    # a positive click for an organ where it is missing grows it over voxels with probability >= the threshold
    lab, prob = s._grid_labels, s._grid_prob
    cand = np.argwhere((lab == 0) & (prob[liver] >= s.grow_threshold))
    low = np.argwhere((lab == 0) & (prob[liver] < 0.01) & (s._grid_final))
    if len(cand):
        g = cand[0]
        p = s._grid_image.TransformIndexToPhysicalPoint([int(v) for v in g])
        gr = s.click((-p[0], -p[1], p[2]), organ="liver")
        assert gr.status in ("grown", "no-organ")
    g = low[len(low) // 2]
    p = s._grid_image.TransformIndexToPhysicalPoint([int(v) for v in g])
    miss = s.click((-p[0], -p[1], p[2]), organ="liver")
    assert miss.status == "no-organ" and "probability" in miss.message
    s.close()


def test_large_organ_not_cut_at_window_edge_and_cancel(segmenter):
    """A8: with 32^3 windows the liver spans many windows and is still Apply's whole component; A10: a cancelled click changes nothing."""
    from repux.data.phantom import generate_phantom
    from repux.inference.segmenter import Segmenter
    from repux.inference.session import InteractiveSession

    small = Segmenter("repux-tiny-phantom", device="cpu", roi_size=(32, 32, 32))
    ph = generate_phantom(3, orientation="axial", size_mm=(260, 200, 160))
    apply_labels = sitk.GetArrayFromImage(small.segment(ph.image).labels)
    s = InteractiveSession(segmenter=small, background=False)
    s.open(ph.image)
    liver = FLARE.find("liver").value
    kji = _inner_voxel(sitk.GetArrayFromImage(ph.label_map(FLARE)), apply_labels, liver)
    token = CancelToken()
    token.cancel("newer click")
    c = s.click(_ras_of_index(ph.image, kji), cancel=token)
    assert c.status == "cancelled" and c.labels is None and not sitk.GetArrayFromImage(s.label_image()).any()
    r = s.click(_ras_of_index(ph.image, kji))
    want = _apply_component(apply_labels, liver, kji)
    assert r.windows > 8  # grew beyond the 8 windows around the click
    assert np.array_equal(_paste(r, apply_labels.shape) == liver, want)
    s.close()


@pytest.mark.realdata
def test_click_real_ct_equals_apply(segmenter):
    """A2 on the real CT: the liver click equals Apply's liver component voxel for voxel."""
    from repux.inference.session import InteractiveSession

    ct = sitk.ReadImage(str(shared_file("ct-abdomen", "example_ct.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file("ct-abdomen", "labels", "example_ct_flare4.nii.gz"))))
    apply_labels = sitk.GetArrayFromImage(segmenter.segment(ct).labels)
    s = InteractiveSession(segmenter=segmenter, background=False)
    s.open(ct)
    liver = FLARE.find("liver").value
    kji = _inner_voxel(ref, apply_labels, liver)
    r = s.click(_ras_of_index(ct, kji))
    assert r.organ == "liver"
    assert np.array_equal(_paste(r, apply_labels.shape) == liver, _apply_component(apply_labels, liver, kji))
    s.close()
