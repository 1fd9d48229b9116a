"""CUDA checks (marker ``gpu``; not in CI): the GPU computes what the CPU computes, in fp32 and with bf16 autocast.

Run on a machine with an NVIDIA GPU and a CUDA build of torch::

    python -m pytest -m gpu Testing/device/test_gpu.py -v

``REPUX_GPU_TEST_DEVICE=cpu`` runs the same checks on the CPU (to check the tests themselves on a machine
without a GPU); the default is ``cuda``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import shared_file

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("REPUX_GPU_TEST_DEVICE", "cuda")


@pytest.fixture(scope="module")
def device():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"no CUDA device visible to torch {torch.__version__} (set REPUX_GPU_TEST_DEVICE=cpu to check the tests on the CPU)")
    dev = torch.device(DEVICE)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # parity in true fp32
        torch.backends.cudnn.allow_tf32 = False
    return dev


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    denominator = int(x.sum()) + int(y.sum())
    return 1.0 if denominator == 0 else 2.0 * int(np.logical_and(x, y).sum()) / denominator


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_large_kernel_conv_on_the_device_equals_the_cpu_reference(device, algorithm):
    from repux.nn.lkconv import depthwise_conv3d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 24, 20, 28, dtype=torch.float64, generator=g)
    w = torch.randn(4, 1, 21, 21, 21, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    gy = torch.randn(2, 4, 24, 20, 28, dtype=torch.float64, generator=g)
    ref_in = [t.clone().requires_grad_(True) for t in (x, w, b)]
    ref = torch.nn.functional.conv3d(ref_in[0], ref_in[1], ref_in[2], padding=10, groups=4)
    (ref * gy).sum().backward()
    dev_in = [t.to(device).requires_grad_(True) for t in (x, w, b)]
    out = depthwise_conv3d(dev_in[0], dev_in[1], dev_in[2], algorithm=algorithm)
    (out * gy.to(device)).sum().backward()
    for got, want in zip((out, *(t.grad for t in dev_in)), (ref, *(t.grad for t in ref_in))):
        got = got.detach().cpu()
        want = want.detach()
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-8 * float(want.abs().max() + 1))


def test_bfr_gradient_on_the_device_is_bfm_times_the_effective_gradient(device):
    from repux.nn import BFRDepthwiseConv3d

    conv = BFRDepthwiseConv3d(3, kernel_size=21).double().to(device)
    x = torch.randn(1, 3, 16, 16, 16, dtype=torch.float64, device=device)
    gy = torch.randn_like(x)
    (conv(x) * gy).sum().backward()
    w_eff = (conv.weight.detach() * conv.bfm).requires_grad_(True)
    (torch.nn.functional.conv3d(x, w_eff, conv.bias.detach(), padding=10, groups=3) * gy).sum().backward()
    assert torch.allclose(conv.weight.grad, conv.bfm * w_eff.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_deploy_network_fp32_on_the_device_equals_the_cpu(device, preset):
    from repux.nn import create_model

    torch.manual_seed(0)
    net = create_model(preset, out_channels=5).eval().reparameterize()
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.inference_mode():
        want = net(x)
        got = net.to(device)(x.to(device)).cpu()
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 2e-4 * scale
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segmentation_on_the_device_agrees_with_the_cpu(device, precision):
    """The built-in model on a synthetic phantom: same label grid, organ Dice with the CPU fp32 result >= 0.99 (bf16: >= 0.97)."""
    import SimpleITK as sitk

    from repux.data.phantom import generate_phantom
    from repux.inference.segmenter import Segmenter
    from repux.models.store import DEFAULT_MODEL

    image = generate_phantom(7, orientation="axial").image
    cpu = Segmenter(DEFAULT_MODEL, device="cpu", precision="fp32").segment(image)
    dev = Segmenter(DEFAULT_MODEL, device=str(device), precision=precision).segment(image)
    a, b = sitk.GetArrayFromImage(cpu.labels), sitk.GetArrayFromImage(dev.labels)
    assert a.shape == b.shape and dev.labels.GetSpacing() == cpu.labels.GetSpacing()
    floor = 0.99 if precision == "fp32" else 0.97
    for value, name in enumerate(cpu.summary["volumes_ml"], start=1):
        assert _dice(a, b, value) >= floor, (name, precision)
    assert dev.summary["device"] != "" and (device.type == "cpu" or "cuda" in dev.summary["device"].lower() or "gpu" in dev.summary["device"].lower())


@pytest.mark.realdata
def test_cli_segments_the_real_ct_on_the_device(device, tmp_path):
    ct = shared_file("ct-abdomen", "example_ct.nii.gz")
    runs = {}
    for name, dev in (("cpu", "cpu"), ("device", str(device))):
        out = tmp_path / f"{name}.nii.gz"
        r = subprocess.run(
            [sys.executable, "-m", "repux", "segment", "-i", str(ct), "-o", str(out), "--device", dev, "--progress", "none"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        runs[name] = out
    import SimpleITK as sitk

    a, b = (sitk.ReadImage(str(runs[k])) for k in ("cpu", "device"))
    assert a.GetSize() == b.GetSize() == sitk.ReadImage(str(ct)).GetSize()
    x, y = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    assert float((x == y).mean()) >= 0.995


def test_a_training_step_on_the_device_lowers_the_loss(device, tmp_path):
    from helpers import make_blob_dataset

    from repux.data.datasets import load_dataset
    from repux.training.trainer import TrainConfig, train

    dataset = load_dataset(make_blob_dataset(tmp_path / "blobs"))
    result = train(
        dataset,
        tmp_path / "model",
        TrainConfig(preset="tiny", roi_size=32, max_iterations=12, val_interval=12, lr=3e-3, warmup_iterations=2, checkpoint_interval=6, seed=0),
        run_dir=tmp_path / "run",
        device=str(device),
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.iterations == 12 and len(losses) >= 10
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert (tmp_path / "model" / "model.safetensors").is_file()
