"""Guided corrections in the click session: with a click-guidance model, a positive click naming an organ and a
negative click are fed to the network; only the connected changed region around the click changes; Undo restores it.

The network is a stand-in with known behaviour (organ where the scaled intensity passes 0.5, pushed by the heatmaps),
so the test checks the session's mechanics, not a trained model."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from repux.config import Guidance, InferenceSettings, IntensityWindow, Preprocessing
from repux.labels import LabelSet


def _predictor(x):
    import torch

    image, heat = x[:, :1], x[:, 1:]
    organ = 10.0 * (image[:, 0] - 0.5) + 20.0 * heat[:, 1] - 20.0 * heat[:, 0]
    return torch.stack([torch.zeros_like(organ), organ], 1)


@pytest.fixture
def session():
    from repux.inference.segmenter import Segmenter
    from repux.inference.session import InteractiveSession

    labels = LabelSet.from_names(["liver"])
    prep = Preprocessing(spacing=(3.0, 3.0, 3.0), intensity=IntensityWindow(a_min=0.0, a_max=100.0, b_min=0.0, b_max=1.0, clip=True), crop_foreground=False)
    seg = Segmenter(predictor=_predictor, labels=labels, preprocessing=prep, settings=InferenceSettings(roi_size=(32, 32, 32), overlap=0.25), device="cpu")
    seg.guidance = Guidance.for_labels(labels.names, sigma_mm=4.5)
    s = InteractiveSession(segmenter=seg, background=False)
    yield s
    s.close()


def _image():
    a = np.zeros((40, 40, 40), np.int16)  # (k, j, i), HU 0..100 -> 0..1
    a[10:30, 10:30, 5:20] = 90  # the organ
    a[14:26, 14:26, 20:30] = 40  # a missed lobe attached to it (below 0.5)
    a[15:25, 15:25, 0:5] = 70  # a leak: part of the organ for the model, wrong for the user
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((3.0, 3.0, 3.0))
    return img


def _ras(img, kji):
    x, y, z = img.TransformIndexToPhysicalPoint(tuple(int(v) for v in kji[::-1]))
    return (-x, -y, z)


def test_guided_corrections(session):
    img = _image()
    session.open(img)
    assert session.guided
    first = session.click(_ras(img, (20, 20, 12)))  # plain click: select mode
    assert (first.status, first.organ) == ("added", "liver")
    selected = session.label_image()
    base = sitk.GetArrayFromImage(selected) == 1
    assert base[20, 20, 2] and not base[20, 20, 25]  # the leak is in, the lobe is out
    grown = session.click(_ras(img, (20, 20, 24)), organ="liver")  # positive correction in the missed lobe
    assert grown.status == "corrected" and grown.windows >= 1, grown
    after = sitk.GetArrayFromImage(session.label_image()) == 1
    assert after[20, 20, 24] and after.sum() > base.sum()
    assert np.array_equal(after[:, :, :20], base[:, :, :20])  # nothing changed away from the click
    assert not after[:, :, 29].any()  # the heatmap's reach: the far end of the lobe stays out
    cut = session.click(_ras(img, (20, 20, 1)), positive=False)  # negative correction on the leak
    assert cut.status == "removed" and cut.voxels > 0, cut
    final = sitk.GetArrayFromImage(session.label_image()) == 1
    assert not final[20, 20, 1] and final[20, 20, 12] and final[20, 20, 24]
    assert session.undo().status == "undone"
    assert np.array_equal(sitk.GetArrayFromImage(session.label_image()) == 1, after)
    assert len(session._guide) == 1  # the negative click's guidance went with it
    assert session.undo().status == "undone"
    assert np.array_equal(sitk.GetArrayFromImage(session.label_image()) == 1, base) and session._guide == []
    # a click where the model sees nothing at all: the stand-in follows it (a small ball of "liver"), the rest is unchanged
    far = session.click(_ras(img, (2, 2, 35)), organ="liver")
    now = sitk.GetArrayFromImage(session.label_image()) == 1
    assert far.status == "corrected" and 0 < far.voxels < 300 and now[2, 2, 35]
    assert np.array_equal(now[:, :, :30], base[:, :, :30])
