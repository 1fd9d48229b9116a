"""Cohorts and standard outputs: --organs, slab-wise stitching, batch, shards, DICOM SEG, statistics, memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from repux.errors import ConfigError
from repux.inference import Segmenter, stream_argmax


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "repux", *args], capture_output=True, text=True, timeout=600, **kw)


def _body(shape=(30, 40, 40), seed=4, spacing=(4.0, 4.0, 4.0)) -> sitk.Image:
    """A small CT-like volume (k, j, i): air around a soft-tissue body with brighter blobs."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    a = np.full(shape, -1000.0, np.float32)
    body = ((i - shape[2] / 2) / (shape[2] * 0.45)) ** 2 + ((j - shape[1] / 2) / (shape[1] * 0.4)) ** 2 <= 1
    a[body] = 40.0
    a[body & (i < shape[2] / 2) & (k > 5)] = 120.0
    a += rng.normal(0, 10, shape).astype(np.float32)
    img = sitk.GetImageFromArray(a.astype(np.int16))
    img.SetSpacing(spacing)
    return img


# ------------------------------------------------------------------------------------ stitching
@pytest.mark.parametrize("shape, roi, overlap", [((70, 50, 130), (32, 32, 32), 0.5), ((20, 40, 25), (32, 32, 32), 0.25), ((40, 36, 64), (32, 32, 48), 0.6)])
def test_slab_stitching_equals_monai_sliding_window(shape, roi, overlap):
    from monai.inferers import sliding_window_inference

    from repux.inference import entropy_map

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 5, 3, padding=1)

    def pred(b):
        return torch.softmax(conv(b), 1)

    x = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        ref = sliding_window_inference(x, roi, 2, pred, overlap=overlap, mode="gaussian")[0]
        labels, ent = stream_argmax(x, pred, roi_size=roi, overlap=overlap, sw_batch_size=3, entropy=True)
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert (labels == ref.argmax(0).numpy()).all()
    assert np.abs(ent - entropy_map(ref).numpy()).max() < 1e-5


# ------------------------------------------------------------------------------------ --organs
def test_organs_subset_renumbers_and_drops_the_others(tiny_model_dir):
    img = _body()
    full = Segmenter(tiny_model_dir, device="cpu").segment(img)
    sub = Segmenter(tiny_model_dir, device="cpu", organs=["Spleen", "LIVER"])
    assert sub.labels.names == ["liver", "spleen"] and [lab.value for lab in sub.labels] == [1, 2]
    res = sub.segment(img)
    a, f = res.array(), full.array()
    expected = np.zeros_like(f)
    expected[f == 1] = 1  # liver
    expected[f == 3] = 2  # spleen (value 3 in the model)
    assert (a == expected).all()
    assert set(res.summary["volumes_ml"]) == {"liver", "spleen"} and res.summary["organs"] == ["liver", "spleen"]
    assert Segmenter(tiny_model_dir, device="cpu", organs="kidney").labels.names == ["kidney"]


def test_unknown_organ_lists_the_models_organs(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"'heart' is not an organ of this model; choose among liver, kidney, spleen, pancreas"):
        Segmenter(tiny_model_dir, device="cpu", organs="liver,heart")


def test_cli_organs_writes_only_those_segments(tiny_model_dir, tmp_path):
    from repux.imageio import read_segmentation_nrrd_labels

    inp = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_body(), str(inp))
    out = tmp_path / "o.seg.nrrd"
    r = _run(["segment", "-i", str(inp), "-m", str(tiny_model_dir), "-o", str(out), "--organs", "liver,Pancreas", "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    meta = read_segmentation_nrrd_labels(out)
    assert [meta[v]["Name"] for v in sorted(meta)] == ["liver", "pancreas"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max() <= 2
    r = _run(["segment", "-i", str(inp), "-m", str(tiny_model_dir), "-o", str(tmp_path / "x.nii.gz"), "--organs", "lung"])
    assert r.returncode == 1 and r.stderr.count("repux: error:") == 1 and "'lung'" in r.stderr and "liver, kidney, spleen, pancreas" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.nii.gz").exists()
