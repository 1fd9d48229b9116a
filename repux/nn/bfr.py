"""Bayesian Frequency Re-parameterization (BFR) of large depthwise kernels.

RepUX-Net (Lee et al., MICCAI 2023, arXiv:2303.05785) trains each large
depthwise kernel through an element-wise prior, the Bayesian frequency matrix

    BFM[i, j, k] = a / (d + a),   d = ||(i, j, k) - centre||_2 (voxel units), a = 1,

so the kernel that convolves the input is ``W_eff = W * BFM`` while the
optimizer holds and updates the raw ``W``.  By the chain rule
``dL/dW = BFM * dL/dW_eff``; one SGD step therefore changes the effective
kernel by ``-lr * BFM**2 * g``: an element-wise learning rate that is largest
at the centre (x1), a quarter at the face neighbours and ~0.003 at the 21^3
corners.  Under Adam the scaling is ``BFM`` (Adam normalises the gradient).

The official code re-assigns ``nn.Parameter(W * BFM)`` inside ``forward``.
That detaches the kernel from the optimizer (it is never trained) and
multiplies it by BFM again at every forward, so after ~150 forwards a 21^3
kernel underflows to its centre tap.  Here the product stays inside the
autograd graph, ``BFM`` is a (non-persistent) buffer computed once per kernel
shape, and the stored ``W`` never changes during a forward pass.

For inference :meth:`BFRDepthwiseConv3d.reparameterize` folds BFM into the
weight (``W <- W * BFM``), leaving a plain depthwise convolution; the
official checkpoints store weights in exactly this deploy form.  To train
again from a folded model, :meth:`BFRDepthwiseConv3d.unreparameterize`
divides by BFM, which is exact because BFM > 0 everywhere.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from repux.nn.lkconv import ALGORITHMS, depthwise_conv3d

__all__ = ["BFRDepthwiseConv3d", "bayesian_frequency_matrix"]


@functools.lru_cache(maxsize=32)
def _bfm_float64(kernel_size: int, alpha: float) -> torch.Tensor:
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    d = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    return alpha / (d + alpha)


def bayesian_frequency_matrix(kernel_size: int, alpha: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Bayesian frequency matrix ``a / (d + a)`` of shape ``(k, k, k)``.

    Args:
        kernel_size: odd kernel size ``k`` (21 in the paper).
        alpha: the prior's scale ``a`` (> 0). Defaults to 1, as in the paper.
        dtype: dtype of the result. Defaults to float32.

    Raises:
        ValueError: for an even or non-positive kernel size or ``alpha <= 0``.

    Example:
        >>> m = bayesian_frequency_matrix(21)
        >>> float(m[10, 10, 10]), float(m[10, 10, 11])
        (1.0, 0.5)
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer; got {kernel_size!r}.")
    if not alpha > 0:
        raise ValueError(f"bfm_alpha must be > 0 (BFM must be positive everywhere); got {alpha!r}.")
    return _bfm_float64(kernel_size, float(alpha)).to(dtype).clone()


class BFRDepthwiseConv3d(nn.Conv3d):
    """Depthwise ``k^3`` convolution trained through ``W * BFM``.

    Parameter names and shapes are those of the official ``dwconv``
    (``weight (C, 1, k, k, k)``, ``bias (C,)``), so state dicts map one to one.

    Args:
        channels: number of channels ``C``.
        kernel_size: odd kernel size. Defaults to 21.
        bfm_alpha: BFM scale ``a``. Defaults to 1.
        deploy: build the folded (inference) form directly: ``weight`` then
            holds ``W_eff`` and no BFM is applied. Defaults to False.
        algorithm: convolution algorithm, see :mod:`repux.nn.lkconv`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 21,
        bfm_alpha: float = 1.0,
        deploy: bool = False,
        algorithm: str = "auto",
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {', '.join(ALGORITHMS)}.")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=True)
        self.bfm_alpha = float(bfm_alpha)
        self.deploy = bool(deploy)
        self.algorithm = algorithm
        self.register_buffer("bfm", bayesian_frequency_matrix(kernel_size, bfm_alpha)[None, None], persistent=False)

    def effective_weight(self) -> torch.Tensor:
        """The kernel that actually convolves the input (``W * BFM`` or the folded ``W``)."""
        if self.deploy:
            return self.weight
        return self.weight * self.bfm.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv3d(x, self.effective_weight(), self.bias, algorithm=self.algorithm)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold BFM into the weight in place (``W <- W * BFM``); idempotent."""
        if not self.deploy:
            self.weight.mul_(self.bfm.to(self.weight.dtype))
            self.deploy = True

    @torch.no_grad()
    def unreparameterize(self) -> None:
        """Inverse of :meth:`reparameterize` (``W <- W_eff / BFM``); idempotent."""
        if self.deploy:
            self.weight.div_(self.bfm.to(self.weight.dtype))
            self.deploy = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bfm_alpha={self.bfm_alpha}, deploy={self.deploy}, algorithm={self.algorithm!r}"
