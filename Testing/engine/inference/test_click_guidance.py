"""Clicks as input: heatmaps, the click simulators, the windowed guided prediction and Dice after N clicks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from repux.inference.guidance import GridClick, GuidedWindows, click_heatmaps, next_click, noc, sample_clicks, sigma_voxels


def test_heatmaps_peak_at_the_click_in_its_channel():
    heat = click_heatmaps((20, 20, 20), [GridClick((5, 6, 7), 2), GridClick((15, 15, 15), 0)], 3, (2.0, 2.0, 1.0))
    assert heat.shape == (3, 20, 20, 20) and heat.dtype == np.float32
    assert heat[2, 5, 6, 7] == 1.0 and heat[0, 15, 15, 15] == 1.0 and not heat[1].any()
    assert heat[2, 7, 6, 7] == pytest.approx(np.exp(-0.5), rel=1e-5)  # 2 voxels = 1 sigma along the first axis
    assert heat[2, 5, 6, 9] == pytest.approx(np.exp(-2.0), rel=1e-5)  # 2 voxels = 2 sigmas along the last
    assert heat[2, 12, 6, 7] == 0.0  # beyond 3 sigmas
    shifted = click_heatmaps((10, 10, 10), [GridClick((5, 6, 7), 2)], 3, (2.0, 2.0, 1.0), offset=(3, 3, 3))
    assert np.array_equal(shifted[2], heat[2, 3:13, 3:13, 3:13]) and not shifted[0].any()  # the other click lies outside this box
    assert sigma_voxels(4.5, (1.5, 3.0, 9.0)) == (3.0, 1.5, 0.5)


def test_next_click_is_the_deepest_voxel_of_the_largest_error():
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[5:25, 5:25, 5:25] = 1
    pred = truth.copy()
    pred[5:15, 5:25, 5:25] = 0  # a missed half (large)
    pred[26:29, 26:29, 26:29] = 1  # a small leak
    c = next_click(pred, truth, 1)
    assert c.channel == 1 and pred[c.index] == 0 and truth[c.index] == 1
    assert c.index == (9, 9, 9)  # depth 5 (the slab's half thickness): the first voxel of that plateau in C order
    pred[5:15] = truth[5:15]
    leak = next_click(pred, truth, 1)
    assert leak == GridClick((27, 27, 27), 0)  # a negative click: background there
    pred[26:29, 26:29, 26:29] = 0
    assert next_click(pred, truth, 1) is None
    assert noc([0.5, 0.8, 0.86, 0.95], 0.85) == 2 and noc([0.5, 0.8], 0.9) is None


def test_sample_clicks_are_seeded_and_inside_the_errors():
    rng = np.random.default_rng
    truth = np.zeros((24, 24, 24), np.uint8)
    truth[4:20, 4:20, 4:20] = 2
    pred = truth.copy()
    pred[4:10] = 0
    pred[20:23, 1:5, 1:5] = 1
    a = sample_clicks(pred, truth, 5, rng(3))
    assert a == sample_clicks(pred, truth, 5, rng(3)) and len(a) == 2  # two error regions: at most one click each
    for c in a:
        assert pred[c.index] != truth[c.index] and c.channel == truth[c.index]
    assert sample_clicks(truth, truth, 3, rng(0)) == []


@pytest.fixture(scope="module")
def guidance_model(tmp_path_factory):
    """The built-in phantom model with zero-weight guidance channels (untrained for clicks)."""
    from repux.config import Guidance
    from repux.models.folder import load_model, save_model
    from repux.models.store import resolve_model
    from repux.nn.guidance import add_guidance_channels

    card = resolve_model("repux-tiny-phantom")
    net, card = load_model(card)
    add_guidance_channels(net, card.labels.num_classes)
    out = tmp_path_factory.mktemp("guided") / "phantom-guided"
    save_model(net, out, labels=card.labels, preprocessing=card.preprocessing, inference=card.inference, guidance=Guidance.for_labels(card.labels.names))
    return out


def test_apply_with_a_guidance_model_equals_the_automatic_model(guidance_model):
    """B2: without clicks, Apply with the extended model gives the automatic model's labels voxel for voxel."""
    from repux.data.phantom import generate_phantom
    from repux.inference.segmenter import Segmenter

    image = generate_phantom(5, spacing=(3.0, 3.0, 3.0), orientation="axial").image
    auto = Segmenter("repux-tiny-phantom", device="cpu", threads=1)
    guided = Segmenter(guidance_model, device="cpu", threads=1)
    assert guided.guidance is not None and auto.guidance is None
    a = sitk.GetArrayFromImage(auto.segment(image).labels)
    b = sitk.GetArrayFromImage(guided.segment(image).labels)
    assert a.any() and np.array_equal(a, b)
    # the windowed guided prediction without clicks is the same full pass; a click re-runs only the windows it reaches
    prepared = guided.prepare(image)
    windows = GuidedWindows(guided, prepared.x, guided.preprocessing.spacing)
    lab0 = windows.labels()
    ref = guided.infer(guided.prepare(image)).label_crop
    assert np.array_equal(lab0, ref)
    n = windows.windows_run
    assert n == len(windows.slices)
    click = GridClick(tuple(int(v) for v in np.argwhere(lab0 == 1)[0]), 1)
    reached = sum(bool(windows._reaching([click], i)) for i in range(len(windows.slices)))
    assert reached >= 1
    windows.labels([click])
    assert windows.windows_run - n == reached  # only the windows the click's heatmap reaches run again
    windows.labels([click])
    assert windows.windows_run - n == reached  # the same clicks again: all from the cache


def test_click_curve_reports_dice_after_each_click(guidance_model):
    from repux.data.phantom import generate_phantom
    from repux.inference.guidance import click_curve
    from repux.inference.segmenter import Segmenter
    from repux.labels import FLARE

    ph = generate_phantom(6, spacing=(3.0, 3.0, 3.0), orientation="axial")
    seg = Segmenter(guidance_model, device="cpu", threads=1)
    out = click_curve(seg, ph.image, ph.label_map(FLARE), [(1, 1), (3, 3)], 2)
    for value in (1, 3):
        curve = out[value]["dice"]
        assert len(curve) == 3 and curve[0] > 0.5
        # zero-weight guidance: clicks change nothing yet (a trained guidance model is what makes them count)
        assert curve[1] == curve[0] and curve[2] == curve[0]
        assert all(len(c) == 4 for c in out[value]["clicks"])
    assert out["windows_run"] >= 1
