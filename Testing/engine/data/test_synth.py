"""Tests of the label-map-to-CT generator (repux.data.synth) and its CLI (``repux synth``, ``repux train --synth``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import shared_file

from repux.cli.main import main
from repux.data.datasets import MANIFEST, load_dataset
from repux.data.synth import BTCV, FAT, SynthConfig, render_example, swap_sides, write_synth_dataset
from repux.errors import ConfigError

# a small config keeps the tests fast: 5 mm voxels, a short field of view below the organs
FAST = SynthConfig(spacing=(5.0, 5.0, 5.0), margin_above_mm=40.0, margin_below_mm=120.0)


def _label_map() -> sitk.Image:
    """A BTCV-valued label map of ellipsoid organs in LPS (+x patient left, +y posterior), direction diag(1,-1,1) like the shared maps."""
    n = (80, 70, 70)
    sp = 4.0
    img = np.zeros(n[::-1], np.uint8)
    z, y, x = np.ogrid[: n[2], : n[1], : n[0]]
    X, Y, Z = x * sp, (n[1] - 1 - y) * sp, z * sp  # LPS mm (y index runs anterior)

    def put(value, c, r):
        img[((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1] = value

    put(6, (110, 120, 170), (55, 50, 40))  # liver, patient right (small x)
    put(1, (230, 160, 170), (25, 30, 35))  # spleen, left
    put(2, (125, 185, 110), (18, 18, 35))  # right kidney
    put(3, (195, 185, 115), (18, 18, 35))  # left kidney
    put(8, (170, 170, 140), (9, 9, 70))  # aorta
    put(9, (145, 170, 140), (10, 10, 60))  # IVC
    put(11, (175, 140, 140), (30, 8, 8))  # pancreas
    im = sitk.GetImageFromArray(img)
    im.SetSpacing((sp, sp, sp))
    im.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    im.SetOrigin((0.0, (n[1] - 1) * sp, 0.0))
    return im


@pytest.fixture(scope="module")
def label_map() -> sitk.Image:
    return _label_map()


def _centroid_x(lab: np.ndarray, img: sitk.Image, value: int) -> float:
    idx = np.argwhere(lab == value).mean(0)[::-1]
    return img.TransformContinuousIndexToPhysicalPoint(idx.tolist())[0]


def test_same_seed_same_image_other_seed_other_image(label_map):
    a = render_example(label_map, BTCV, 3, FAST)
    b = render_example(label_map, BTCV, 3, FAST)
    c = render_example(label_map, BTCV, 4, FAST)
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert np.array_equal(sitk.GetArrayFromImage(a.labels), sitk.GetArrayFromImage(b.labels))
    assert not np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(c.image))
    assert a.image.GetSpacing() == (5.0, 5.0, 5.0) and a.image.GetPixelID() == sitk.sitkInt16


def test_organs_keep_their_labels_place_and_size(label_map):
    ex = render_example(label_map, BTCV, 1, FAST)
    lab = sitk.GetArrayFromImage(ex.labels)
    src = sitk.GetArrayFromImage(label_map)
    for value in (1, 2, 3, 6, 8, 9, 11):
        v_in = (src == value).sum() * 4.0**3
        v_out = (lab == value).sum() * 5.0**3
        assert 0.55 < v_out / v_in < 1.6, (value, v_out / v_in)  # scaling <= 12 % per axis, 5 mm sampling of small organs
    assert set(np.unique(lab)) <= set(range(14))
    # the anatomy stays on its side: liver and right kidney at smaller x (patient right) than spleen and left kidney
    assert _centroid_x(lab, ex.labels, 6) < _centroid_x(lab, ex.labels, 1)
    assert _centroid_x(lab, ex.labels, 2) < _centroid_x(lab, ex.labels, 3)


def test_background_is_split_into_tissues(label_map):
    split = render_example(label_map, BTCV, 2, SynthConfig(**{**FAST.to_dict(), "spacing": (5.0, 5.0, 5.0), "mode": "ct"}))
    flat = render_example(label_map, BTCV, 2, SynthConfig(**{**FAST.to_dict(), "spacing": (5.0, 5.0, 5.0), "mode": "ct", "background": False}))
    for ex, expect_tissues in ((split, True), (flat, False)):
        img, lab = sitk.GetArrayFromImage(ex.image), sitk.GetArrayFromImage(ex.labels)
        bg = img[lab == 0].astype(float)
        has_fat = np.mean(bg < -60) > 0.03
        has_bone = np.mean(bg > 180) > 0.002
        has_air = np.mean(bg < -850) > 0.05
        assert (has_fat and has_bone and has_air) == expect_tissues, (has_fat, has_bone, has_air)


def test_ct_priors_give_organ_hu_in_range(label_map):
    ex = render_example(label_map, BTCV, 5, SynthConfig(**{**FAST.to_dict(), "spacing": (5.0, 5.0, 5.0), "mode": "ct"}))
    img, lab = sitk.GetArrayFromImage(ex.image), sitk.GetArrayFromImage(ex.labels)
    liver = float(np.median(img[lab == 6]))
    assert 20 < liver < 160, liver  # native 40-70, portal 85-140, arterial 55-90 HU (+ global shift)
    assert ex.meta["phase"] in ("native", "portal", "arterial")


def test_swap_sides_and_mirror(label_map):
    arr = np.array([0, 1, 2, 3, 12, 13, 6], np.uint8)
    assert swap_sides(arr, BTCV).tolist() == [0, 1, 3, 2, 13, 12, 6]
    ex = render_example(label_map, BTCV, 1, SynthConfig(**{**FAST.to_dict(), "spacing": (5.0, 5.0, 5.0), "mirror": 1.0}))
    lab = sitk.GetArrayFromImage(ex.labels)
    assert ex.meta["mirrored"]
    # mirrored: the liver is on the patient's left now, and the kidney on the right side is still called "right kidney"
    assert _centroid_x(lab, ex.labels, 6) > _centroid_x(lab, ex.labels, 1)
    assert _centroid_x(lab, ex.labels, 2) < _centroid_x(lab, ex.labels, 3)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="mode"):
        SynthConfig(mode="gmm")
    with pytest.raises(ConfigError, match="spacing"):
        SynthConfig(spacing=(0.1, 3, 3))
    with pytest.raises(ConfigError, match="no organ voxel"):
        render_example(sitk.Image([10, 10, 10], sitk.sitkUInt8), BTCV, 0, FAST)


def test_dataset_holds_out_whole_label_maps_and_resumes(tmp_path, label_map):
    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(3):
        sitk.WriteImage(label_map, str(maps / f"case_{i}.nii.gz"))
    manifest = write_synth_dataset(maps, tmp_path / "ds", 2, config=FAST, val_maps=1, seed=0)
    ds = load_dataset(manifest.parent)
    assert len(ds.cases) == 6 and ds.labels.names == BTCV.names
    val_sources = {c.meta["source"] for c in ds.cases if c.split == "val"}
    train_sources = {c.meta["source"] for c in ds.cases if c.split == "train"}
    assert len(val_sources) == 1 and not (val_sources & train_sources)
    first = (tmp_path / "ds" / "imagesTr" / "case_0_s00.nii.gz").stat().st_mtime_ns
    events = []
    write_synth_dataset(maps, tmp_path / "ds", 2, config=FAST, val_maps=1, seed=0, progress=events.append)
    assert (tmp_path / "ds" / "imagesTr" / "case_0_s00.nii.gz").stat().st_mtime_ns == first  # kept, not re-rendered
    assert "0 rendered" in events[-1].message


def test_cli_synth_and_its_errors(tmp_path, label_map, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    sitk.WriteImage(label_map, str(maps / "a.nii.gz"))
    sitk.WriteImage(label_map, str(maps / "b.nii.gz"))
    rc = main(["synth", "--labels", str(maps), "-o", str(tmp_path / "out"), "--n", "1", "--synth-spacing", "6,6,6", "--synth-val-maps", "1", "-q"])
    assert rc == 0
    data = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert len(data["cases"]) == 2 and data["generator"]["config"]["spacing"] == [6.0, 6.0, 6.0]
    assert main(["synth", "--labels", str(tmp_path / "missing"), "-o", str(tmp_path / "x"), "-q"]) == 1
    assert "is not a folder of label maps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--synth", str(maps), "--dataset", str(tmp_path / "out"), "-o", str(tmp_path / "m")])


def test_real_btcv_map_renders_body_around_organs():
    src = shared_file("labelmaps", "btcv-13organ-2mm", "btcv_0001.nii.gz")
    ex = render_example(sitk.ReadImage(str(src)), BTCV, 0, SynthConfig(spacing=(4.0, 4.0, 4.0)))
    img, lab = sitk.GetArrayFromImage(ex.image), sitk.GetArrayFromImage(ex.labels)
    organs = lab > 0
    assert organs.sum() > 10000 // 8
    # every organ voxel lies inside the body: its 6 neighbours at 2 voxels are not air
    z, y, x = np.nonzero(organs)
    for dz, dy, dx in ((2, 0, 0), (-2, 0, 0), (0, 2, 0), (0, -2, 0), (0, 0, 2), (0, 0, -2)):
        nb = img[np.clip(z + dz, 0, img.shape[0] - 1), np.clip(y + dy, 0, img.shape[1] - 1), np.clip(x + dx, 0, img.shape[2] - 1)]
        assert np.mean(nb < -900) < 0.02
    assert FAT > 13  # generation labels never collide with organ values


@pytest.mark.slow
def test_recipe_builds_a_model(tmp_path):
    """scripts/build_builtin_model.sh, run small: 3 label maps, 1 example each, a 60 s budget -> a loadable 13-organ model."""
    import os
    import subprocess

    from helpers import REPO

    from repux.models.folder import read_model_card

    src = shared_file("labelmaps", "btcv-13organ-2mm")
    maps = tmp_path / "maps"
    maps.mkdir()
    for f in sorted(src.glob("*.nii.gz"))[:3]:
        (maps / f.name).symlink_to(f)
    env = dict(os.environ, LABELS=str(maps), SYNTH_N="1", VAL_MAPS="1", BUDGET="60s", MAX_IT="40", OUT=str(tmp_path / "model"))
    subprocess.run(["bash", str(REPO / "scripts" / "build_builtin_model.sh"), str(tmp_path / "work")], check=True, env=env, cwd=REPO, timeout=1800)
    card = read_model_card(tmp_path / "model")
    assert card.labels.names == BTCV.names
    assert card.preprocessing.spacing == (3.0, 3.0, 3.0)
