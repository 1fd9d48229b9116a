"""--precision auto: bf16 only where the CPU has bf16 matrix hardware, and bf16 keeps the built-in model's labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import repux.device as device_module
from repux.device import autocast_dtype, precision_name


def test_auto_is_bf16_only_on_cpus_with_bf16_matrix_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "bf16_is_fast", lambda d: False)
    assert autocast_dtype(cpu, "auto") is None, "an AVX2-only CPU must stay on fp32 (bf16 is emulated there: slower)"
    monkeypatch.setattr(device_module, "bf16_is_fast", lambda d: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setenv("REPUX_CPU_BF16", "0")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp32") is None
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["float32", "bfloat16", "float16"]


def test_the_segmenter_follows_the_policy(monkeypatch, tiny_model_dir):
    from repux.inference.segmenter import Segmenter

    monkeypatch.setattr(device_module, "bf16_is_fast", lambda d: True)
    assert Segmenter(tiny_model_dir, device="cpu", precision="auto").amp_dtype is torch.bfloat16
    monkeypatch.setattr(device_module, "bf16_is_fast", lambda d: False)
    assert Segmenter(tiny_model_dir, device="cpu", precision="auto").amp_dtype is None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


@pytest.mark.slow  # minutes where bf16 is emulated (AVX2-only CPUs); seconds on AMX / AVX-512 BF16
@pytest.mark.realdata
@pytest.mark.parametrize("model", ["repux-tiny-phantom", "repux-tiny-abdomen-ct"])
def test_bf16_keeps_the_built_in_models_labels_on_the_real_ct(model):
    """Per-organ Dice >= 0.99 between bf16 and fp32 on the shared real CT (organs of >= 200 voxels in fp32)."""
    import SimpleITK as sitk
    from helpers import shared_file

    from repux.inference.segmenter import Segmenter

    ct = sitk.ReadImage(str(shared_file("ct-abdomen", "example_ct.nii.gz")))
    fp32 = Segmenter(model, device="cpu", precision="fp32").segment(ct)
    bf16 = Segmenter(model, device="cpu", precision="bf16").segment(ct)
    assert bf16.summary["precision"] == "bfloat16" and fp32.summary["precision"] == "float32"
    a, b = sitk.GetArrayFromImage(fp32.labels), sitk.GetArrayFromImage(bf16.labels)
    checked = 0
    for label in fp32.label_set:
        ma = a == label.value
        if ma.sum() < 200:
            continue
        checked += 1
        assert _dice(ma, b == label.value) >= 0.99, f"{model}: {label.name} changes under bf16"
    assert checked >= 2, "too few organs found to compare"
