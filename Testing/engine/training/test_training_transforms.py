"""Recorded clicks travel with the label through the training transforms (load on the model grid, crops, flips, affine)."""

import math

import numpy as np
import SimpleITK as sitk
from monai.transforms import Compose

from repux.config import Preprocessing
from repux.data.datasets import Case
from repux.labels import LabelSet
from repux.training.transforms import CLICKS_KEY, click_indices, deterministic_transforms, random_transforms


def _oblique_case(tmp_path, left_handed: bool):
    """A CT with an oblique (and optionally left-handed) direction, one ball organ (label 1) and the RAS of its centre."""
    size = (40, 36, 30)
    c = np.array([14.0, 20.0, 13.0])  # the ball's centre (i, j, k)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    ball = ((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2) <= 6.0**2
    img = sitk.GetImageFromArray(np.where(ball, 150, 40).astype(np.int16))
    lab = sitk.GetImageFromArray(ball.astype(np.uint8))
    a = math.radians(25)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    if left_handed:
        rot = rot @ np.diag([1, 1, -1])
    for o in (img, lab):
        o.SetSpacing((2.0, 2.2, 2.5))
        o.SetOrigin((-40.0, 30.0, 100.0))
        o.SetDirection(rot.ravel().tolist())
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(lab, str(tmp_path / "lab.nii.gz"))
    lps = img.TransformContinuousIndexToPhysicalPoint(c.tolist())
    return tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz", [-lps[0], -lps[1], lps[2]]


def test_recorded_clicks_land_on_their_organ_through_crops_and_augmentation(tmp_path):
    prep = Preprocessing(spacing=(3.0, 3.0, 3.0))
    labels = LabelSet.from_names(["liver"])
    for left_handed in (False, True):
        d = tmp_path / f"lh{int(left_handed)}"
        d.mkdir()
        image, label, ras = _oblique_case(d, left_handed)
        item = {"image": str(image), "label": str(label), "click_ras": [ras, [900.0, 0.0, 0.0], ["x", 1, 2]]}
        loaded = Compose(deterministic_transforms(prep, clicks=True))(dict(item))
        points = click_indices(loaded[CLICKS_KEY])
        assert len(points) == 1  # the point outside the grid and the malformed one are dropped
        assert int(loaded["label"][0][points[0]]) == 1  # RAS -> model grid through the image geometry (oblique, left-handed)
        # the crops are those of the same seed without clicks (MONAI's RandAffine draws once per key, so only up to it)
        crop_only = Compose(deterministic_transforms(prep, clicks=True) + random_transforms((16, 16, 16), 2, labels, "none", "classes", clicks=True))
        plain = Compose(deterministic_transforms(prep) + random_transforms((16, 16, 16), 2, labels, "none", "classes"))
        for seed in range(4):
            crop_only.set_random_state(seed=seed)
            plain.set_random_state(seed=seed)
            for crop, ref in zip(crop_only(dict(item)), plain({"image": str(image), "label": str(label)})):
                assert np.array_equal(np.asarray(crop["image"]), np.asarray(ref["image"]))
        chain = Compose(deterministic_transforms(prep, clicks=True) + random_transforms((16, 16, 16), 2, labels, "strong", "classes", clicks=True))
        seen = 0
        for seed in range(12):
            chain.set_random_state(seed=seed)
            for crop in chain(dict(item)):
                for p in click_indices(crop[CLICKS_KEY]):
                    seen += 1
                    assert int(crop["label"][0][p]) == 1, (left_handed, seed, p)
        assert seen >= 4  # crops that hold the click (half the crops are centred on the organ)


def test_case_recorded_clicks_reads_the_curated_meta():
    case = Case(
        "c1",
        image=None,  # type: ignore[arg-type]
        label=None,  # type: ignore[arg-type]
        meta={
            "clicks": {
                "liver": [{"ras": [1, 2.5, -3], "positive": True, "organ": "liver"}, {"ras": [1, 2]}, "junk"],
                "spleen": [{"ras": [4.0, 5.0, True]}, {"ras": [-7.0, 8.0, 9.0], "positive": False}],
            }
        },
    )
    assert case.recorded_clicks() == [[1.0, 2.5, -3.0], [-7.0, 8.0, 9.0]]
    assert Case("c2", None, None, meta={"clicks": "nope"}).recorded_clicks() == []  # type: ignore[arg-type]
