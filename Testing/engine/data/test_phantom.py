"""Tests of the synthetic abdominal CT phantom generator (repux.data.phantom)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from repux.data.datasets import MANIFEST, load_dataset
from repux.data.phantom import (
    HU_RANGES,
    ORIENTATIONS,
    PHANTOM_LABELS,
    STRUCTURES,
    Phantom,
    generate_phantom,
    phantom_grid,
    write_phantom_dataset,
)
from repux.errors import Cancelled, ConfigError
from repux.io.images import same_grid
from repux.labels import AMOS, FLARE, Label, LabelSet
from repux.progress import CancelToken

# a field of view around the organs keeps the fine (1.5 mm) geometry phantoms fast
ORGAN_FOV = (300.0, 240.0, 200.0)
FINE = (1.5, 1.5, 1.5)
THIN = ("esophagus", "right adrenal gland", "left adrenal gland")


def _arrays(ph: Phantom) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.labels)


def _direction(img: sitk.Image) -> np.ndarray:
    return np.array(img.GetDirection(), dtype=float).reshape(3, 3)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    """Physical (LPS) centroid of a label."""
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(labels) == value)
    idx = np.stack([i, j, k]).mean(axis=1)
    return np.array(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


@pytest.fixture(scope="module")
def axial_fine() -> Phantom:
    return generate_phantom(11, spacing=FINE, orientation="axial", size_mm=ORGAN_FOV, noise_hu=0)


@pytest.fixture(scope="module")
def axial_seeds() -> list[Phantom]:
    """Phantoms of three seeds on the default axial grid (2 mm, 3.5 mm slices)."""
    return [generate_phantom(s, spacing=(2.0, 2.0, 3.5), orientation="axial") for s in (0, 1, 2)]


# --------------------------------------------------------------------------------------------
# structures and label sets
# --------------------------------------------------------------------------------------------


def test_structures_are_known_organs_with_codes():
    assert list(STRUCTURES.values()) == list(range(1, len(STRUCTURES) + 1))
    for lab in PHANTOM_LABELS:
        assert lab.type is not None, f"{lab.name} has no SNOMED code"
        assert STRUCTURES[lab.name] == lab.value
    assert set(HU_RANGES) == set(STRUCTURES)
    for must in ("liver", "right kidney", "left kidney", "spleen", "pancreas", "vertebral column", "aorta", "inferior vena cava", "gallbladder", "stomach"):
        assert must in STRUCTURES


def test_label_map_flare_merges_kidneys(axial_seeds):
    ph = axial_seeds[0]
    full = sitk.GetArrayFromImage(ph.labels)
    flare_img = ph.label_map(FLARE)
    flare = sitk.GetArrayFromImage(flare_img)
    assert flare_img.GetPixelID() == sitk.sitkUInt8
    assert same_grid(flare_img, ph.labels)
    assert set(np.unique(flare).tolist()) == {0, 1, 2, 3, 4}
    kidney = FLARE.find("kidney").value
    np.testing.assert_array_equal(flare == kidney, (full == STRUCTURES["right kidney"]) | (full == STRUCTURES["left kidney"]))
    np.testing.assert_array_equal(flare == FLARE.find("liver").value, full == STRUCTURES["liver"])
    np.testing.assert_array_equal(flare == FLARE.find("spleen").value, full == STRUCTURES["spleen"])
    np.testing.assert_array_equal(flare == FLARE.find("pancreas").value, full == STRUCTURES["pancreas"])
    # structures outside FLARE (spine, aorta, stomach...) are background
    assert not np.any(flare[full == STRUCTURES["vertebral column"]])
    assert not np.any(flare[full == STRUCTURES["aorta"]])


def test_label_map_sided_aliases_and_absent_labels(axial_seeds):
    ph = axial_seeds[0]
    full = sitk.GetArrayFromImage(ph.labels)
    amos = sitk.GetArrayFromImage(ph.label_map(AMOS))
    np.testing.assert_array_equal(amos == AMOS.find("right kidney").value, full == STRUCTURES["right kidney"])
    np.testing.assert_array_equal(amos == AMOS.find("left kidney").value, full == STRUCTURES["left kidney"])
    np.testing.assert_array_equal(amos == AMOS.find("inferior vena cava").value, full == STRUCTURES["inferior vena cava"])
    assert not np.any(amos == AMOS.find("urinary bladder").value)  # not drawn: stays empty
    # aliases in a label file: "postcava" is the IVC, "spine" the vertebral column
    custom = LabelSet([Label(1, "postcava", (0, 0, 255)), Label(2, "spine", (255, 255, 0))])
    out = sitk.GetArrayFromImage(ph.label_map(custom))
    np.testing.assert_array_equal(out == 1, full == STRUCTURES["inferior vena cava"])
    np.testing.assert_array_equal(out == 2, full == STRUCTURES["vertebral column"])
    # the full phantom label set round-trips
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ph.label_map(PHANTOM_LABELS)), full)
    with pytest.raises(ConfigError, match="label_set"):
        ph.label_map(["liver"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_same_phantom_different_seed_differs():
    a = generate_phantom(5, size_mm=ORGAN_FOV)  # random spacing, orientation and noise level
    b = generate_phantom(5, size_mm=ORGAN_FOV)
    c = generate_phantom(6, size_mm=ORGAN_FOV)
    for x, y in ((a.image, b.image), (a.labels, b.labels)):
        assert same_grid(x, y, tol=0.0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
    assert a.image.GetPixelID() == sitk.sitkInt16 and a.labels.GetPixelID() == sitk.sitkUInt8
    assert a.seed == 5 and a.meta["noise_hu"] == b.meta["noise_hu"]
    # another seed: another grid (random spacing/orientation) and other anatomy
    assert not same_grid(a.image, c.image)
    a2 = generate_phantom(5, spacing=(4.0, 4.0, 4.0), orientation="axial", noise_hu=0)
    c2 = generate_phantom(6, spacing=(4.0, 4.0, 4.0), orientation="axial", noise_hu=0)
    assert not np.array_equal(sitk.GetArrayFromImage(a2.labels), sitk.GetArrayFromImage(c2.labels))
    assert not np.array_equal(sitk.GetArrayFromImage(a2.image), sitk.GetArrayFromImage(c2.image))


def test_noise_level_and_anatomy_independent_of_noise():
    quiet = generate_phantom(3, spacing=(4.0, 4.0, 4.0), orientation="axial", noise_hu=0)
    noisy = generate_phantom(3, spacing=(4.0, 4.0, 4.0), orientation="axial", noise_hu=20)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(quiet.labels), sitk.GetArrayFromImage(noisy.labels))
    diff = sitk.GetArrayFromImage(noisy.image).astype(float) - sitk.GetArrayFromImage(quiet.image)
    air = sitk.GetArrayFromImage(quiet.image) > -900  # away from the -1024 clip
    assert 17.0 < diff[air].std() < 23.0
    for s in range(6):
        assert 10.0 <= generate_phantom(s, spacing=(8.0, 8.0, 8.0)).meta["noise_hu"] <= 25.0


# --------------------------------------------------------------------------------------------
# geometry: the anatomy lives in physical space
# --------------------------------------------------------------------------------------------


def test_orientations_and_handedness():
    dets = {}
    for o in ORIENTATIONS[1:]:
        d = _direction(phantom_grid(4, spacing=(8.0, 8.0, 8.0), orientation=o))
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
        dets[o] = round(float(np.linalg.det(d)))
    assert dets == {"axial": 1, "coronal": 1, "sagittal": 1, "left-handed": -1, "oblique": 1, "left-handed-oblique": -1}
    oblique = _direction(phantom_grid(4, orientation="oblique"))
    angle = np.degrees(np.arccos((np.trace(oblique) - 1.0) / 2.0))
    assert 8.0 <= angle <= 15.01
    # "random" draws both handedness, permutations, oblique and axis-aligned grids and anisotropic spacing
    grids = [phantom_grid(s) for s in range(24)]
    signs = {round(float(np.linalg.det(_direction(g)))) for g in grids}
    assert signs == {-1, 1}
    aligned = [np.allclose(np.abs(_direction(g)), np.round(np.abs(_direction(g)))) for g in grids]
    assert any(aligned) and not all(aligned)
    assert any(int(np.argmax(np.abs(_direction(g)[:, 2]))) != 2 for g in grids)  # some slices are not axial
    for g in grids:
        sx, sy, sz = g.GetSpacing()
        assert 1.5 <= sx == sy <= 2.5 and 2.5 <= sz <= 5.0
    # the grid is centred on the anatomy
    g = grids[0]
    centre = g.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in g.GetSize()])
    np.testing.assert_allclose(centre, (0.0, 0.0, 0.0), atol=1e-6)


def test_left_handed_grid_holds_the_same_anatomy(axial_fine):
    lh = generate_phantom(11, spacing=FINE, orientation="left-handed", size_mm=ORGAN_FOV, noise_hu=0)
    assert np.linalg.det(_direction(lh.labels)) == pytest.approx(-1.0)
    assert np.linalg.det(_direction(axial_fine.labels)) == pytest.approx(1.0)
    res = sitk.GetArrayFromImage(sitk.Resample(lh.labels, axial_fine.labels, sitk.Transform(), sitk.sitkNearestNeighbor, 255))
    ref = sitk.GetArrayFromImage(axial_fine.labels)
    for name, v in STRUCTURES.items():
        assert _dice(res == v, ref == v) >= 0.95, name
    # the array really is stored the other way round (slice order flipped), not just relabelled
    assert not np.array_equal(sitk.GetArrayFromImage(lh.labels), ref)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lh.labels)[::-1], ref)


def test_oblique_grid_holds_the_same_anatomy(axial_fine):
    ob = generate_phantom(11, spacing=FINE, orientation="left-handed-oblique", size_mm=ORGAN_FOV, noise_hu=0)
    d = _direction(ob.labels)
    assert np.linalg.det(d) == pytest.approx(-1.0)
    assert not np.allclose(np.abs(d), np.round(np.abs(d)), atol=0.05)  # really oblique
    res = sitk.GetArrayFromImage(sitk.Resample(ob.labels, axial_fine.labels, sitk.Transform(), sitk.sitkNearestNeighbor, 255))
    ref = sitk.GetArrayFromImage(axial_fine.labels)
    covered = res != 255  # compare where both grids have voxels
    for name, v in STRUCTURES.items():
        dice = _dice((res == v) & covered, (ref == v) & covered)
        assert dice >= (0.75 if name in THIN else 0.95), f"{name}: Dice {dice:.3f}"
    # organ centroids agree in physical space (well inside both fields of view)
    for name in ("right kidney", "left kidney", "pancreas", "gallbladder", "duodenum"):
        v = STRUCTURES[name]
        np.testing.assert_allclose(_centroid_mm(ob.labels, v), _centroid_mm(axial_fine.labels, v), atol=1.5, err_msg=name)
    # the image intensities follow the anatomy too
    img = sitk.GetArrayFromImage(sitk.Resample(ob.image, axial_fine.image, sitk.Transform(), sitk.sitkLinear, -1000))
    liver = (ref == STRUCTURES["liver"]) & covered
    assert abs(np.median(img[liver]) - np.median(sitk.GetArrayFromImage(axial_fine.image)[liver])) < 5.0


def test_anatomy_in_patient_coordinates(axial_fine):
    """Right organs at -x (LPS), the spine posterior (+y), the liver above the kidneys."""
    c = {name: _centroid_mm(axial_fine.labels, v) for name, v in STRUCTURES.items() if name not in THIN}
    assert c["liver"][0] < -30 and c["spleen"][0] > 60 and c["right kidney"][0] < -40 < 40 < c["left kidney"][0]
    assert c["inferior vena cava"][0] < c["vertebral column"][0] < c["aorta"][0]
    assert c["vertebral column"][1] > c["aorta"][1] > c["pancreas"][1]
    assert c["right kidney"][1] > c["liver"][1]
    assert c["liver"][2] > c["right kidney"][2] and c["spleen"][2] > c["left kidney"][2]
    assert c["gallbladder"][0] < 0 and c["gallbladder"][2] < c["liver"][2]


# --------------------------------------------------------------------------------------------
# realism: HU, volumes, window
# --------------------------------------------------------------------------------------------


def test_hu_in_documented_ranges(axial_seeds):
    for ph in axial_seeds:
        img, lab = _arrays(ph)
        for name, v in STRUCTURES.items():
            m = lab == v
            assert m.any(), f"seed {ph.seed}: {name} missing"
            lo, hi = HU_RANGES[name]
            med = float(np.median(img[m]))
            assert lo <= med <= hi, f"seed {ph.seed}: {name} median {med} HU not in {lo}..{hi}"
        # air in front of the abdomen (y < -140 mm: the first rows of an axial LPS grid)
        rows = int((-140.0 - ph.image.GetOrigin()[1]) / ph.image.GetSpacing()[1])
        air = img[:, :rows, :]
        assert abs(float(np.median(air)) + 1000.0) <= 5.0
        assert abs(float(air.mean()) + 1000.0) <= 10.0
        assert img.min() >= -1024 and img.max() > 600  # cortical bone present
        # lung bases posteriorly at the cranial end (z grows with k on an axial LPS grid), none at the caudal end
        ox, oy = ph.image.GetOrigin()[:2]
        sx, sy = ph.image.GetSpacing()[:2]
        back, deep = int((50.0 - oy) / sy), int((100.0 - oy) / sy)
        left, right = int((-100.0 - ox) / sx), int((100.0 - ox) / sx)  # inside the body
        lung_top = np.count_nonzero(img[-3:, back:deep, left:right] < -700)
        lung_bottom = np.count_nonzero(img[:3, back:deep, left:right] < -700)
        assert lung_top > 200 and lung_bottom < 20, (lung_top, lung_bottom)
        # gas in the bowel (small bowel and colon in the lower abdomen)
        assert np.count_nonzero(img[: img.shape[0] // 2, rows:back, :] < -700) > 200


def test_organ_volumes_plausible(axial_seeds):
    for ph in axial_seeds:
        _, lab = _arrays(ph)
        ml = float(np.prod(ph.labels.GetSpacing())) / 1000.0
        vol = {name: np.count_nonzero(lab == v) * ml for name, v in STRUCTURES.items()}
        assert 1000 <= vol["liver"] <= 2500, vol["liver"]
        assert 100 <= vol["spleen"] <= 400, vol["spleen"]
        assert 100 <= vol["right kidney"] <= 250, vol["right kidney"]
        assert 100 <= vol["left kidney"] <= 250, vol["left kidney"]
        assert vol["pancreas"] >= 40, vol["pancreas"]
        assert 5 <= vol["gallbladder"] <= 100 and 100 <= vol["stomach"] <= 1200


def test_pancreas_thick_enough_to_learn(axial_seeds):
    """Eroding the pancreas by 2 voxels (4 mm in-plane) must leave most of it: it is not a thin ribbon."""
    ph = axial_seeds[1]
    pancreas = sitk.Cast(ph.labels == STRUCTURES["pancreas"], sitk.sitkUInt8)
    eroded = sitk.BinaryErode(pancreas, [2, 2, 1])
    kept = np.count_nonzero(sitk.GetArrayViewFromImage(eroded)) / np.count_nonzero(sitk.GetArrayViewFromImage(pancreas))
    assert kept > 0.3


def test_organs_fit_the_model_window(axial_seeds):
    img, lab = _arrays(axial_seeds[2])
    for name in ("liver", "spleen", "pancreas", "right kidney", "left kidney"):
        vals = img[lab == STRUCTURES[name]]
        lo, hi = np.percentile(vals, [1, 99])
        assert -125 < lo and hi < 275, f"{name}: 1-99th percentile {lo}..{hi} outside the -125..275 HU window"
    # organs differ from each other and from fat in the window (learnable contrast)
    fat = np.median(img[(lab == 0) & (img > -150) & (img < -50)])
    assert fat < -60
    assert np.median(img[lab == STRUCTURES["right kidney"]]) - np.median(img[lab == STRUCTURES["liver"]]) > 25


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


def test_write_phantom_dataset_round_trip(tmp_path):
    events = []
    manifest = write_phantom_dataset(tmp_path / "ds", 4, seed=20, spacing=(4.0, 4.0, 5.0), progress=events.append)
    assert manifest == tmp_path / "ds" / MANIFEST and manifest.is_file()
    ds = load_dataset(tmp_path / "ds")
    assert ds.layout == "repux"
    assert ds.labels.names == FLARE.names
    assert [lab.type for lab in ds.labels] == [lab.type for lab in FLARE]
    assert [c.id for c in ds.cases] == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert {c.split for c in ds.cases} == {"train", "val"}
    assert len(ds.by_split("val")) == 1 and len(ds.by_split("train")) == 3
    assert [c.meta["seed"] for c in ds.cases] == [20, 21, 22, 23]
    for c in ds.cases:
        img, lab = sitk.ReadImage(str(c.image)), sitk.ReadImage(str(c.label))
        assert c.image.name == f"{c.id}.nii.gz" and c.image.parent.name == "imagesTr" and c.label.parent.name == "labelsTr"
        assert same_grid(img, lab)
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist()) == {0, 1, 2, 3, 4}
    # reproducible: case i is generate_phantom(seed + i)
    ph = generate_phantom(22, spacing=(4.0, 4.0, 5.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ds.cases[2].image))), sitk.GetArrayFromImage(ph.image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ds.cases[2].label))), sitk.GetArrayFromImage(ph.label_map(FLARE)))
    # progress: monotone fractions ending at 1
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(events) >= 5
    data = json.loads(manifest.read_text())
    assert data["generator"]["seed"] == 20 and data["generator"]["n"] == 4
    assert not list((tmp_path / "ds").rglob("*.tmp*"))


def test_write_phantom_dataset_custom_labels_and_cancel(tmp_path):
    amos_like = LabelSet.from_names(["spleen", "right kidney", "left kidney", "aorta"], name="four")
    ds = load_dataset(write_phantom_dataset(tmp_path / "a", 2, label_set=amos_like, spacing=(6.0, 6.0, 6.0), orientation="left-handed", val_fraction=0.5))
    assert ds.labels.names == ["spleen", "right kidney", "left kidney", "aorta"]
    lab = sitk.ReadImage(str(ds.cases[0].label))
    assert np.linalg.det(_direction(lab)) == pytest.approx(-1.0)
    assert set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist()) == {0, 1, 2, 3, 4}
    assert sorted(c.split for c in ds.cases) == ["train", "val"]

    token = CancelToken()

    def cancel_after_first(event):
        if event.fraction > 0:
            token.cancel("stop")

    with pytest.raises(Cancelled):
        write_phantom_dataset(tmp_path / "b", 3, spacing=(6.0, 6.0, 6.0), progress=cancel_after_first, cancel=token)
    assert not (tmp_path / "b" / MANIFEST).exists()


# --------------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"orientation": "diagonal"}, "orientation"),
        ({"spacing": (0.0, 1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"size_mm": (300.0, -1.0, 200.0)}, "size_mm"),
        ({"noise_hu": -3.0}, "noise_hu"),
        ({"spacing": (0.1, 0.1, 0.1)}, "voxels"),
    ],
)
def test_generate_phantom_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_phantom(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be"),
        ({"n": 2, "val_fraction": 1.0}, "val_fraction"),
        ({"n": 2, "label_set": LabelSet.from_names(["urinary bladder"])}, "no phantom structure"),
        ({"n": 2, "orientation": "upside-down"}, "orientation"),
    ],
)
def test_write_phantom_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_phantom_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x" / MANIFEST).exists()
