"""Large-kernel depthwise 3D convolution with exact fast paths.

RepUX-Net spends its training time in the backward pass of 21^3 depthwise
convolutions: PyTorch's CPU ``convolution_backward`` for a depthwise 3D
kernel is about 100x slower than the forward.  This module computes the same
function, ``F.conv3d(x, w, b, padding=k // 2, groups=C)``, through one of
several exact algorithms, forward *and* backward:

``"direct"``
    ``torch.nn.functional.conv3d`` (oneDNN / cuDNN) for the forward, and a
    backward written with *forward* depthwise convolutions (the input
    gradient is a convolution with the flipped kernel, the weight gradient a
    grouped convolution of the padded input with the output gradient as the
    kernel).
``"fft"``
    Linear convolution through ``torch.fft.rfftn`` on a 2-3-5-smooth size with
    no wrap-around, cropped to the ``same`` output.  The backward uses the
    same spectra (the input spectrum is reused for the weight gradient).
``"native"``
    Plain ``F.conv3d`` with PyTorch's own autograd (the reference recipe).
``"auto"``
    Picks per shape and device (see :func:`select_algorithm`).

Where a spatial size ``S`` is smaller than the kernel, taps further than
``S - 1`` from the centre only ever meet zero padding; the kernel is cropped
to ``2 S - 1`` along that axis, which is exact and saves most of the work at
the deepest stage.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

__all__ = [
    "ALGORITHMS",
    "depthwise_conv3d",
    "fft_size",
    "select_algorithm",
]

logger = logging.getLogger(__name__)

ALGORITHMS = ("auto", "direct", "fft", "native")


@functools.lru_cache(maxsize=None)
def fft_size(n: int) -> int:
    """Smallest integer >= ``n`` whose only prime factors are 2, 3 and 5."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _crop_kernel(weight: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Crop an odd kernel to at most ``2 S - 1`` taps along each axis (exact)."""
    k = weight.shape[2:]
    slices: list[slice] = [slice(None), slice(None)]
    for kk, s in zip(k, spatial):
        keep = min(kk, 2 * s - 1)
        start = (kk - keep) // 2
        slices.append(slice(start, start + keep))
    return weight[tuple(slices)]


def _same_padding(weight: torch.Tensor) -> tuple[int, int, int]:
    return tuple(int(k) // 2 for k in weight.shape[2:])  # type: ignore[return-value]


def _conv_direct(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """'same' depthwise correlation without bias (kernel already cropped)."""
    return F.conv3d(x, weight, None, 1, _same_padding(weight), 1, x.shape[1])


def _fft_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fft_shape(spatial: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(fft_size(s + k - 1) for s, k in zip(spatial, kernel))


def _rfft(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.fft.rfftn(t, s=shape, dim=(-3, -2, -1))


def _irfft_crop(spec: torch.Tensor, shape: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    full = torch.fft.irfftn(spec, s=shape, dim=(-3, -2, -1))
    return full[..., start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]


def _conv_fft(x: torch.Tensor, weight: torch.Tensor, x_spec: torch.Tensor | None = None) -> torch.Tensor:
    """'same' depthwise correlation through the FFT (kernel already cropped)."""
    spatial = tuple(x.shape[2:])
    kernel = tuple(weight.shape[2:])
    shape = _fft_shape(spatial, kernel)
    dtype = _fft_dtype(x.dtype)
    if x_spec is None:
        x_spec = _rfft(x.to(dtype), shape)
    # correlation == convolution with the flipped kernel
    w_spec = _rfft(torch.flip(weight.to(dtype), dims=(-3, -2, -1)), shape)  # (C, 1, ...)
    spec = x_spec * w_spec.transpose(0, 1)  # broadcast over batch
    centre = tuple(k // 2 for k in kernel)
    return _irfft_crop(spec, shape, centre, spatial).to(x.dtype)


def _conv_transpose_fft(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the input: convolution of ``grad`` with the (unflipped) kernel."""
    spatial = tuple(grad.shape[2:])
    kernel = tuple(weight.shape[2:])
    shape = _fft_shape(spatial, kernel)
    dtype = _fft_dtype(grad.dtype)
    spec = _rfft(grad.to(dtype), shape) * _rfft(weight.to(dtype), shape).transpose(0, 1)
    centre = tuple(k // 2 for k in kernel)
    return _irfft_crop(spec, shape, centre, spatial).to(grad.dtype)


def _weight_grad_fft(x_spec: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """Gradient w.r.t. the kernel: cross-correlation of the input with ``grad``, summed over the batch."""
    dtype = x_spec.real.dtype
    g_spec = _rfft(grad.to(dtype), shape)
    spec = (torch.conj(g_spec) * x_spec).sum(0, keepdim=True)  # (1, C, ...)
    full = torch.fft.irfftn(spec, s=shape, dim=(-3, -2, -1))
    centre = tuple(k // 2 for k in kernel)
    # taps t - c in [-c, c] live at indices (t - c) mod N
    idx = [torch.arange(-c, c + 1, device=full.device) % n for c, n in zip(centre, shape)]
    out = full[0][:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
    return out.unsqueeze(1)


def _weight_grad_direct(x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Gradient w.r.t. the kernel with one grouped *forward* convolution."""
    n, c = x.shape[:2]
    pad = tuple(k // 2 for k in kernel)
    xp = F.pad(x, (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]))
    out = F.conv3d(xp.reshape(1, n * c, *xp.shape[2:]), grad.reshape(n * c, 1, *grad.shape[2:]), groups=n * c)
    return out.reshape(n, c, *out.shape[2:]).sum(0).unsqueeze(1)


def select_algorithm(x_shape: tuple[int, ...], kernel: tuple[int, ...], device: torch.device | str) -> str:
    """Choose ``"direct"`` or ``"fft"`` for an input shape and (cropped) kernel size.

    Cost model fitted on a 2-core x86-64 CPU (oneDNN, torch 2.13): per channel
    the direct form costs about ``4e-11 s * voxels * taps`` and the FFT about
    ``1.8e-9 s * n log2 n`` for the padded size ``n``.  For a 21^3 kernel
    the FFT wins from a 16^3 volume up (7.6x at 48^3), the direct form at 12^3
    and below.  The same rule is used on GPUs (``benchmarks/gpu.sh`` measures it).
    """
    spatial = x_shape[2:]
    ksize = [min(k, 2 * s - 1) for k, s in zip(kernel, spatial)]
    taps = math.prod(ksize)
    if taps < 5**3:
        return "direct"
    voxels = math.prod(spatial)
    padded = math.prod(fft_size(s + k - 1) for s, k in zip(spatial, ksize))
    fft_cost = 45.0 * padded * math.log2(max(padded, 2))
    return "fft" if fft_cost < voxels * taps else "direct"


class _DepthwiseConv3d(torch.autograd.Function):
    """Exact depthwise 'same' correlation with a backward made of forward passes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, algorithm: str) -> torch.Tensor:  # type: ignore[override]
        ctx.algorithm = algorithm
        ctx.kernel = tuple(weight.shape[2:])
        if algorithm == "fft":
            shape = _fft_shape(tuple(x.shape[2:]), ctx.kernel)
            x_spec = _rfft(x.to(_fft_dtype(x.dtype)), shape)
            y = _conv_fft(x, weight, x_spec)
            if ctx.needs_input_grad[1]:
                ctx.save_for_backward(weight, x_spec)
            else:
                ctx.save_for_backward(weight, None)
            ctx.fft_shape = shape
            ctx.x_dtype = x.dtype
        else:
            y = _conv_direct(x, weight.to(x.dtype))
            ctx.save_for_backward(weight, x if ctx.needs_input_grad[1] else None)
            ctx.x_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight, saved = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.algorithm == "fft":
            if ctx.needs_input_grad[0]:
                grad_x = _conv_transpose_fft(grad, weight).to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = _weight_grad_fft(saved, grad, ctx.kernel, ctx.fft_shape).to(weight.dtype)
        else:
            if ctx.needs_input_grad[0]:
                grad_x = _conv_direct(grad, torch.flip(weight, dims=(-3, -2, -1)).to(grad.dtype)).to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = _weight_grad_direct(saved, grad.to(saved.dtype), ctx.kernel).to(weight.dtype)
        return grad_x, grad_w, None


def depthwise_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    algorithm: str = "auto",
) -> torch.Tensor:
    """Depthwise 3D convolution with 'same' zero padding, as ``F.conv3d(..., groups=C)``.

    Args:
        x: input of layout ``(B, C, D, H, W)``.
        weight: kernel ``(C, 1, kD, kH, kW)`` with odd sizes.
        bias: optional ``(C,)``.
        algorithm: one of :data:`ALGORITHMS`. Defaults to ``"auto"``.

    Returns:
        A tensor of the same shape as ``x``.

    Raises:
        ValueError: for an unknown algorithm, an even kernel or a channel mismatch.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {', '.join(ALGORITHMS)}.")
    if x.dim() != 5 or weight.dim() != 5 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"depthwise_conv3d expects x (B, C, D, H, W) and weight (C, 1, k, k, k); got x {tuple(x.shape)}, weight {tuple(weight.shape)}.")
    if any(k % 2 == 0 for k in weight.shape[2:]):
        raise ValueError(f"kernel sizes must be odd for 'same' padding; got {tuple(weight.shape[2:])}.")
    if algorithm == "native":
        y = F.conv3d(x, weight, None, 1, _same_padding(weight), 1, x.shape[1])
    else:
        w = _crop_kernel(weight, tuple(x.shape[2:]))
        if algorithm == "auto":
            algorithm = select_algorithm(tuple(x.shape), tuple(w.shape[2:]), x.device)
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            y = _DepthwiseConv3d.apply(x, w, algorithm)
        elif algorithm == "fft":
            y = _conv_fft(x, w)
        else:
            y = _conv_direct(x, w)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1, 1)
    return y
