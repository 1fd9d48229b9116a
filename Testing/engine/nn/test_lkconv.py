"""Every fast large-kernel path computes the same function as the direct convolution."""

from __future__ import annotations

import itertools

import pytest
import torch

from repux.nn.lkconv import depthwise_conv3d, fft_size, select_algorithm

SHAPES = [(1, 2, (9, 10, 11)), (2, 3, (5, 6, 7)), (1, 2, (17, 13, 20)), (2, 1, (3, 4, 5)), (1, 2, (1, 7, 2))]
KERNELS = [3, 7, 13, 21]


@pytest.mark.parametrize("shape,k", list(itertools.product(SHAPES, KERNELS)), ids=lambda v: str(v))
@pytest.mark.parametrize("algorithm", ["direct", "fft", "auto"])
def test_fast_paths_equal_reference_forward_and_backward(shape, k, algorithm):
    b, c, spatial = shape
    g = torch.Generator().manual_seed(hash((shape[2], k)) % 2**31)
    x = torch.randn(b, c, *spatial, dtype=torch.float64, generator=g)
    w = torch.randn(c, 1, k, k, k, dtype=torch.float64, generator=g)
    bias = torch.randn(c, dtype=torch.float64, generator=g)
    gy = torch.randn(b, c, *spatial, dtype=torch.float64, generator=g)

    def run(algo):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, bias))
        y = depthwise_conv3d(xi, wi, bi, algorithm=algo)
        (y * gy).sum().backward()
        return y.detach(), xi.grad, wi.grad, bi.grad

    ref = torch.nn.functional.conv3d
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, bias))
    yr = ref(xr, wr, br, padding=k // 2, groups=c)
    (yr * gy).sum().backward()
    got = run(algorithm)
    for a, r in zip(got, (yr.detach(), xr.grad, wr.grad, br.grad)):
        assert torch.allclose(a, r, rtol=1e-9, atol=1e-9 * float(r.abs().max() + 1))


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_float32_relative_error_within_1e5(algorithm):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 24, 20, 22)
    w = torch.randn(4, 1, 21, 21, 21)
    ref = torch.nn.functional.conv3d(x.double(), w.double(), padding=10, groups=4)
    y = depthwise_conv3d(x, w, algorithm=algorithm).double()
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-5


def test_no_grad_path_and_validation():
    x = torch.randn(1, 2, 8, 8, 8)
    w = torch.randn(2, 1, 5, 5, 5)
    with torch.no_grad():
        a = depthwise_conv3d(x, w, algorithm="fft")
    assert torch.allclose(a, torch.nn.functional.conv3d(x, w, padding=2, groups=2), atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        depthwise_conv3d(x, torch.randn(2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="algorithm"):
        depthwise_conv3d(x, w, algorithm="magic")
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv3d(x, torch.randn(3, 1, 5, 5, 5))


def test_fft_size_and_selection():
    assert fft_size(67) == 72 and fft_size(1) == 1 and fft_size(97) == 100
    assert select_algorithm((1, 48, 48, 48, 48), (21, 21, 21), "cpu") == "fft"
    assert select_algorithm((1, 384, 6, 6, 6), (11, 11, 11), "cpu") == "direct"
    assert select_algorithm((1, 8, 64, 64, 64), (3, 3, 3), "cpu") == "direct"
