"""Inference engine and `repux segment`: geometry, progress, cancellation, bad inputs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import shared_file

from repux.config import InferenceSettings, Preprocessing
from repux.inference.segmenter import Segmenter, count_windows, keep_largest_components
from repux.io.images import read_image, read_segmentation_nrrd_labels, same_grid
from repux.labels import FLARE, LabelSet


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "repux", *args], capture_output=True, text=True, timeout=600, **kw)


def oblique_left_handed(image: sitk.Image, angle_deg: float = 20.0, interpolator=sitk.sitkNearestNeighbor, spacing_scale=(0.9, 1.1, 0.8)) -> sitk.Image:
    """Resample ``image`` onto a rotated, left-handed (det -1) grid covering it, with other spacing."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]]
    )
    direction = rot @ np.diag([1.0, -1.0, 1.0])  # flip j: left-handed
    assert np.linalg.det(direction) < 0
    sp = np.array(image.GetSpacing())
    new_sp = sp * np.array(spacing_scale)
    size = np.array(image.GetSize())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    ext = size * sp
    new_size = np.ceil(ext * 1.3 / new_sp).astype(int)
    origin = centre - direction @ ((new_size - 1) / 2 * new_sp)
    return sitk.Resample(
        image,
        new_size.tolist(),
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        new_sp.tolist(),
        direction.flatten().tolist(),
        -1024 if image.GetPixelID() != sitk.sitkUInt8 else 0,
        image.GetPixelID(),
    )


def _label_phantom():
    from repux.data.phantom import generate_phantom

    ph = generate_phantom(3, orientation="axial")
    return ph.label_map(FLARE)


class Oracle:
    """A 'model' that is the identity of the labels: its input is a label map shifted into the HU window."""

    def __init__(self, n_classes: int, prep: Preprocessing, step: float = 50.0):
        self.n = n_classes
        self.prep = prep
        self.step = step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.prep.intensity
        hu = x * (w.a_max - w.a_min) + w.a_min  # undo the HU window
        lab = torch.round(hu / self.step).clamp(0, self.n - 1).long()[:, 0]
        return torch.nn.functional.one_hot(lab, self.n).permute(0, 4, 1, 2, 3).float() * 20.0


def _dice(a: np.ndarray, b: np.ndarray, v: int) -> float:
    x, y = a == v, b == v
    return 2.0 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum())


@pytest.mark.parametrize("crop", [True, False])
def test_oracle_lands_on_anatomy_through_oblique_left_handed_grid(crop):
    """Phantom labels -> oblique left-handed grid -> segment (identity oracle) -> back to the phantom grid: Dice >= 0.99."""
    truth = _label_phantom()
    moved = oblique_left_handed(truth, spacing_scale=(0.5, 0.55, 0.45))  # finer, so the round trip itself loses nothing
    # the input "CT": label value v -> 50 v HU (inside the -125..275 window), air around the body
    ct = sitk.Cast(moved, sitk.sitkInt16) * 50
    ct = sitk.Mask(ct, sitk.Cast(sitk.BinaryDilate(moved > 0, [12] * 3), sitk.sitkUInt8), outsideValue=-1000)
    # model grid = the re-oriented input grid, so the identity model is exact there
    spacing = sitk.DICOMOrient(ct, "RAS").GetSpacing()
    prep = Preprocessing(spacing=spacing, foreground_threshold=-500, crop_foreground=crop)
    seg = Segmenter(
        predictor=Oracle(FLARE.num_classes, prep),
        labels=FLARE,
        preprocessing=prep,
        settings=InferenceSettings(roi_size=(96, 96, 96), overlap=0.25),
        device="cpu",
    )
    result = seg.segment(ct)
    assert same_grid(result.labels, ct) and result.labels.GetDirection() == ct.GetDirection()
    assert np.linalg.det(np.array(result.labels.GetDirection()).reshape(3, 3)) < 0
    out = sitk.GetArrayFromImage(result.labels)
    for lab in FLARE:
        assert _dice(out, sitk.GetArrayFromImage(moved), lab.value) >= 0.999, lab.name
    back = sitk.Resample(result.labels, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    for lab in FLARE:
        assert _dice(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(truth), lab.value) >= 0.99, lab.name


def test_oracle_through_resampling_to_a_coarser_model_grid():
    """With resampling inside the pipeline (model grid coarser than the input), each organ still lands in place."""
    truth = _label_phantom()
    moved = oblique_left_handed(truth)
    prep = Preprocessing(spacing=(2.5, 2.5, 3.0))
    b = sitk.GetArrayFromImage(truth)
    for lab in FLARE:
        # one organ at a time (200 HU in a 0 HU body) so that interpolated intensities cannot mimic another organ
        organ = sitk.Cast(moved == lab.value, sitk.sitkInt16) * 200
        ct = sitk.Mask(organ, sitk.Cast(sitk.BinaryDilate(moved > 0, [12] * 3), sitk.sitkUInt8), outsideValue=-1000)
        seg = Segmenter(
            predictor=Oracle(2, prep, step=200.0),
            labels=LabelSet([lab.with_value(1)]),
            preprocessing=prep,
            settings=InferenceSettings(roi_size=(64, 64, 64)),
            device="cpu",
        )
        back = sitk.Resample(seg.segment(ct).labels, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        a = sitk.GetArrayFromImage(back)
        assert _dice(a, (b == lab.value).astype(np.uint8), 1) >= 0.9, lab.name
        ca = np.argwhere(a == 1).mean(0) * np.array(truth.GetSpacing()[::-1])
        cb = np.argwhere(b == lab.value).mean(0) * np.array(truth.GetSpacing()[::-1])
        assert np.linalg.norm(ca - cb) < 1.5, lab.name  # a flip or shift would move the organ by centimetres


def test_largest_component_keeps_two_for_unsided_kidney():
    arr = np.zeros((40, 20, 20), np.uint8)
    arr[2:8, 2:8, 2:8] = 1  # liver big
    arr[30:32, 2:4, 2:4] = 1  # liver fragment
    arr[10:16, 10:16, 10:16] = 2  # kidney right
    arr[20:25, 10:15, 10:15] = 2  # kidney left
    arr[35:36, 18:19, 18:19] = 2  # kidney speck
    out = keep_largest_components(arr, FLARE)
    assert (out == 1).sum() == 216 and (out == 2).sum() == 216 + 125


def test_count_windows_matches_monai():
    assert count_windows((96, 96, 96), (96, 96, 96), 0.5) == 1
    assert count_windows((50, 60, 70), (96, 96, 96), 0.5) == 1
    assert count_windows((200, 150, 96), (96, 96, 96), 0.5) == 12
    assert count_windows((244, 202, 168), (96, 96, 96), 0.7) > 2 * count_windows((244, 202, 168), (96, 96, 96), 0.5)


@pytest.mark.realdata
def test_segment_real_ct_same_grid_and_slicer_segmentation(tiny_model_dir, tmp_path):
    ct = shared_file("ct-abdomen", "example_ct.nii.gz")
    out = tmp_path / "seg.seg.nrrd"
    r = _run(["segment", "-i", str(ct), "-m", str(tiny_model_dir), "-o", str(out), "--summary", str(tmp_path / "s.json"), "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    seg, img = read_image(out), read_image(ct)
    assert same_grid(seg, img)
    meta = read_segmentation_nrrd_labels(out)
    assert [meta[v]["Name"] for v in (1, 2, 3, 4)] == ["liver", "kidney", "spleen", "pancreas"]
    assert "SCT^10200004^Liver" in meta[1]["Tags"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["volumes_ml"]) == {"liver", "kidney", "spleen", "pancreas"}
    assert summary["model"]["id"] == "tiny-test" and len(summary["model"]["sha256"]) == 64
    assert {"load", "preprocess", "infer", "postprocess"} <= set(summary["timings_s"])


@pytest.mark.realdata
def test_segment_dicom_series_folder(tiny_model_dir, tmp_path):
    folder = shared_file("dicom-ct-3slice")
    out = tmp_path / "dicom_seg.nii.gz"
    r = _run(["segment", "-i", str(folder), "-m", str(tiny_model_dir), "-o", str(out), "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    ref = read_image(folder / "series")
    assert same_grid(read_image(out), ref) and ref.GetSize() == (512, 512, 3)
    # 3 slices of 1 mm: far thinner than the model's window, so the user is warned (CLI log and summary)
    assert "covers only" in r.stderr and "along S-I" in r.stderr and "unreliable" in r.stderr


def test_thin_extent_warnings_name_the_axis_and_sizes():
    from repux.config import Preprocessing
    from repux.inference.segmenter import thin_extent_warnings

    prep = Preprocessing(spacing=(1.5, 1.5, 2.0))
    assert thin_extent_warnings((200, 180, 150), (96, 96, 96), prep) == []
    (w,) = thin_extent_warnings((200, 180, 2), (96, 96, 96), prep)
    assert "covers only about 4 mm along S-I" in w and "2 voxels of 2 mm" in w and "192 mm" in w


def test_segment_jpeg2000_dicom_and_left_handed_nrrd(tiny_model_dir, tmp_path):
    # a JPEG 2000 (lossless) compressed series written with GDCM
    arr = (np.random.default_rng(0).normal(40, 30, (8, 48, 48))).astype(np.int16)
    arr[:, :4] = -1000
    img = sitk.GetImageFromArray(arr)
    folder = tmp_path / "j2k"
    folder.mkdir()
    w = sitk.ImageFileWriter()
    w.SetImageIO("GDCMImageIO")
    w.KeepOriginalImageUIDOn()
    for i in range(arr.shape[0]):
        sl = img[:, :, i]
        sl.SetMetaData("0020|0032", f"0\\0\\{i * 2.5}")
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.42")
        sl.SetMetaData("0028|0030", "2\\2")
        sl.SetMetaData("0008|0060", "CT")
        w.SetFileName(str(folder / f"{i:03d}.dcm"))
        w.SetCompressor("JPEG2000")
        w.SetUseCompression(True)
        w.Execute(sl)
    assert b"1.2.840.10008.1.2.4.90" in (folder / "000.dcm").read_bytes()  # really JPEG 2000
    loaded = read_image(folder)
    assert np.array_equal(sitk.GetArrayFromImage(loaded), arr)
    assert _run(["segment", "-i", str(folder), "-m", str(tiny_model_dir), "-o", str(tmp_path / "j.nrrd")]).returncode == 0
    assert same_grid(read_image(tmp_path / "j.nrrd"), loaded)
    # a left-handed, oblique NRRD
    ct = sitk.GetImageFromArray((np.random.default_rng(1).normal(40, 30, (30, 40, 44))).astype(np.int16))
    ct.SetSpacing((3.0, 3.5, 4.0))
    lh = oblique_left_handed(ct, 25, sitk.sitkLinear)
    sitk.WriteImage(lh, str(tmp_path / "lh.nrrd"))
    r = _run(["segment", "-i", str(tmp_path / "lh.nrrd"), "-m", str(tiny_model_dir), "-o", str(tmp_path / "lh_seg.nrrd")])
    assert r.returncode == 0, r.stderr
    out = read_image(tmp_path / "lh_seg.nrrd")
    assert same_grid(out, read_image(tmp_path / "lh.nrrd")) and np.linalg.det(np.array(out.GetDirection()).reshape(3, 3)) < 0


def test_progress_json_is_monotone_and_ends_at_one(tiny_model_dir, tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(2).normal(40, 30, (40, 60, 60)).astype(np.int16))
    img.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    r = _run(["segment", "-i", str(tmp_path / "ct.nii.gz"), "-m", str(tiny_model_dir), "-o", str(tmp_path / "o.nii.gz"), "--progress", "json"])
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert all({"stage", "fraction", "message", "eta_s"} <= set(e) for e in events)
    fr = [e["fraction"] for e in events]
    assert fr == sorted(fr) and fr[-1] == 1.0 and 0 <= fr[0] < 0.1
    assert any(e["stage"] == "infer" and "windows_total" in e for e in events)
    assert events[-1]["stage"] == "done" and events[-1]["outputs"]["labels"].endswith("o.nii.gz")


def test_sigterm_stops_promptly_without_output(tmp_path):
    # a slow model: the small preset, fine spacing, many windows
    from repux.models.folder import save_model
    from repux.nn import create_model

    save_model(
        create_model("small", out_channels=5),
        tmp_path / "slow",
        labels=FLARE,
        preprocessing=Preprocessing(spacing=(1.0, 1.0, 1.0)),
        inference=InferenceSettings(roi_size=(96, 96, 96), overlap=0.75),
    )
    img = sitk.GetImageFromArray(np.random.default_rng(2).normal(40, 30, (60, 120, 120)).astype(np.int16))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "never.seg.nrrd"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repux", "segment", "-i", str(tmp_path / "ct.nii.gz"), "-m", str(tmp_path / "slow"), "-o", str(out), "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    assert json.loads(first)["stage"] == "load"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    proc.stdout.close()
    proc.stderr.close()
    assert rc != 0 and elapsed < 5.0, (rc, elapsed)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def _bad(tmp_path, image, name="bad.nii.gz"):
    p = tmp_path / name
    sitk.WriteImage(image, str(p))
    return p


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", "does not exist"),
        ("2d", "2-D image"),
        ("4d", "4-D image"),
        ("constant", "empty: every voxel has the value"),
        ("nan", "NaN or infinite"),
        ("budget", "--max-voxels"),
        ("unknown_model", "Did you mean 'tiny-test'"),
        ("bad_output", "unsupported file type"),
    ],
)
def test_bad_inputs_give_one_line_error_and_exit_1(case, pattern, tmp_path, tiny_model_dir):
    from repux.models.store import ModelStore

    ModelStore().import_model(tiny_model_dir)
    rng = np.random.default_rng(0)
    ok = sitk.GetImageFromArray(rng.normal(0, 300, (20, 30, 30)).astype(np.int16))
    inp, model, extra, output = None, "tiny-test", [], str(tmp_path / "o.nii.gz")
    if case == "missing":
        inp = tmp_path / "nope.nii.gz"
    elif case == "2d":
        inp = _bad(tmp_path, sitk.GetImageFromArray(rng.normal(0, 1, (30, 30)).astype(np.float32)))
    elif case == "4d":
        inp = _bad(tmp_path, sitk.GetImageFromArray(rng.normal(0, 1, (2, 10, 10, 10)).astype(np.float32), isVector=False))
    elif case == "constant":
        inp = _bad(tmp_path, sitk.GetImageFromArray(np.full((10, 20, 20), -1000, np.int16)))
    elif case == "nan":
        a = rng.normal(0, 300, (10, 20, 20)).astype(np.float32)
        a[3, 4, 5] = np.nan
        inp = _bad(tmp_path, sitk.GetImageFromArray(a), "nan.mha")  # (the NIfTI writer turns NaN into 0)
    elif case == "budget":
        inp, extra = _bad(tmp_path, ok), ["--max-voxels", "1000"]
    elif case == "unknown_model":
        inp, model = _bad(tmp_path, ok), "tiny-tst"
    elif case == "bad_output":
        inp, output = _bad(tmp_path, ok), str(tmp_path / "o.png")
    r = _run(["segment", "-i", str(inp), "-m", model, "-o", output, *extra])
    assert r.returncode == 1, r.stderr
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("repux: error:")]
    assert len(err_lines) == 1 and pattern in err_lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not Path(output).exists()


def test_tampered_model_and_non_ct_warning(tmp_path, tiny_model_dir):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    mr = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 800, (20, 32, 32)).astype(np.int16))  # MR-like: no air
    mr.SetSpacing((4.0, 4.0, 4.0))
    inp = _bad(tmp_path, mr, "mr.nii.gz")
    r = _run(["segment", "-i", str(inp), "-m", str(m), "-o", str(tmp_path / "o.nii.gz")])
    assert r.returncode == 0 and "do not look like CT" in r.stderr
    w = m / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[100] ^= 1
    w.write_bytes(bytes(data))
    r = _run(["segment", "-i", str(inp), "-m", str(m), "-o", str(tmp_path / "o2.nii.gz")])
    assert r.returncode == 1 and "sha256" in r.stderr and "modified or corrupted" in r.stderr
    assert not (tmp_path / "o2.nii.gz").exists()


def test_roi_restricts_processing(tmp_path, tiny_model_dir):
    img = sitk.GetImageFromArray(np.random.default_rng(3).normal(60, 20, (40, 50, 50)).astype(np.int16))
    img.SetSpacing((4.0, 4.0, 4.0))
    seg = Segmenter(tiny_model_dir, device="cpu")
    full = seg.segment(img)
    # RAS box covering the image's first quarter along i (LPS x -> RAS -x)
    roi = seg.segment(img, roi_ras=(-48.0, -200.0, -10.0, 0.0, 10.0, 200.0))
    assert roi.summary["processed_size"][0] < full.summary["processed_size"][0]
    a = sitk.GetArrayFromImage(roi.labels)
    assert (a[:, :, 20:] == 0).all()


def test_uncertainty_and_summary(tmp_path, tiny_model_dir):
    img = sitk.GetImageFromArray(np.random.default_rng(4).normal(60, 40, (30, 40, 40)).astype(np.int16))
    img.SetSpacing((4.0, 4.0, 4.0))
    res = Segmenter(tiny_model_dir, device="cpu", uncertainty=True, largest_component=True).segment(img)
    u = sitk.GetArrayFromImage(res.uncertainty)
    assert same_grid(res.uncertainty, img) and 0.0 <= u.min() and u.max() <= 1.0 + 1e-6
    assert 0.0 <= res.summary["mean_entropy"] <= 1.0


def test_label_set_shapes():
    ls = LabelSet.from_names(["liver", "left kidney"])
    assert ls.by_value(2).modifier.meaning == "Left"
    assert "SCT^7771000^Left" in ls.by_value(2).slicer_terminology()
