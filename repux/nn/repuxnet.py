"""RepUX-Net: a 3D U-shaped network with 21^3 depthwise kernels trained by BFR.

Lee H. H., Liu Q., Bao S., Yang Q., Yu X., Cai L. C., Li T. Z., Huo Y.,
Koutsoukos X., Landman B. A. "Scaling Up 3D Kernels with Bayesian Frequency
Re-parameterization for Medical Image Segmentation." MICCAI 2023.
arXiv:2303.05785.  Official code: https://github.com/MASILab/RepUX-Net
(Apache-2.0).  This is an independent re-implementation: module and
parameter names follow the official ``REPUXNET`` class so that its
state dicts load one to one, but the training-time re-parameterization is the
corrected one (see :mod:`repux.nn.bfr`).

Architecture (official FLARE configuration):

* encoder ``repuxnet_3d``: stem ``Conv3d(k7, s2, p3)`` + channels-first
  LayerNorm; 4 stages of ``depths[i]`` blocks ``depthwise Conv3d(k, pad k//2)
  -> BatchNorm3d -> GELU`` (no residual); between stages LayerNorm +
  ``Conv3d(k2, s2)``; a LayerNorm on each stage output;
* MONAI ``UnetrBasicBlock`` encoders on the input and the 4 stage outputs
  (the last one widens to ``hidden_size``), 4 ``UnetrUpBlock`` decoders, a
  final ``UnetrBasicBlock`` and a ``UnetOutBlock`` (1x1x1 conv with bias).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer, get_norm_layer
from torch import nn
from torch.utils.checkpoint import checkpoint

from repux.nn.bfr import BFRDepthwiseConv3d
from repux.nn.fastconv import use_onednn
from repux.nn.lkconv import ALGORITHMS

__all__ = ["LayerNorm3d", "RepUXBlock", "RepUXEncoder", "RepUXNet"]

logger = logging.getLogger(__name__)


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, D, H, W)`` tensor.

    Same parameters (``weight``, ``bias``) and numerics as the official
    channels-first LayerNorm (biased variance, ``eps`` inside the sqrt).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class RepUXBlock(nn.Module):
    """``GELU(BatchNorm3d(dwconv(x)))`` with a BFR-trained large depthwise kernel."""

    def __init__(self, dim: int, kernel_size: int = 21, bfm_alpha: float = 1.0, deploy: bool = False, algorithm: str = "auto") -> None:
        super().__init__()
        self.dwconv = BFRDepthwiseConv3d(dim, kernel_size, bfm_alpha, deploy=deploy, algorithm=algorithm)
        self.norm: nn.Module = nn.BatchNorm3d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.dwconv(x)))

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold the BatchNorm's running statistics into the (deploy-form) dwconv; exact in eval mode."""
        if not isinstance(self.norm, nn.BatchNorm3d):
            return
        if not self.dwconv.deploy:
            raise RuntimeError("fold_batchnorm needs the deploy form: call reparameterize() first.")
        bn = self.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.dwconv.weight.mul_(scale.view(-1, 1, 1, 1, 1))
        self.dwconv.bias.copy_((self.dwconv.bias - bn.running_mean) * scale + bn.bias)
        self.norm = nn.Identity()


class RepUXEncoder(nn.Module):
    """The ConvNeXt-style encoder (official attribute name ``repuxnet_3d``)."""

    def __init__(
        self,
        in_channels: int,
        feature_sizes: Sequence[int],
        depths: Sequence[int],
        kernel_size: int,
        bfm_alpha: float,
        deploy: bool,
        algorithm: str,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(nn.Conv3d(in_channels, feature_sizes[0], kernel_size=7, stride=2, padding=3), LayerNorm3d(feature_sizes[0]))
        )
        for i in range(1, len(feature_sizes)):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm3d(feature_sizes[i - 1]), nn.Conv3d(feature_sizes[i - 1], feature_sizes[i], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[RepUXBlock(dim, kernel_size, bfm_alpha, deploy, algorithm) for _ in range(depth)]) for dim, depth in zip(feature_sizes, depths)
        )
        for i, dim in enumerate(feature_sizes):
            self.add_module(f"norm{i}", LayerNorm3d(dim))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = down(x)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(getattr(self, f"norm{i}")(x))
        return outs


class RepUXNet(nn.Module):
    """RepUX-Net for 3D segmentation.

    Args:
        in_channels: number of input channels (1 for CT).
        out_channels: number of output classes including background.
        feature_sizes: channels of the 4 encoder stages. Defaults to the paper's (48, 96, 192, 384).
        depths: blocks per stage. Defaults to (2, 2, 2, 2).
        kernel_size: odd size of the large depthwise kernels. Defaults to 21.
        bfm_alpha: BFM scale ``a``. Defaults to 1.
        hidden_size: channels of the bottleneck encoder. Defaults to 768.
        norm_name: normalisation of the MONAI decoder blocks. Defaults to "instance".
        deploy: build the folded inference form (official ``deploy=True``). Defaults to False.
        algorithm: large-kernel convolution algorithm (:mod:`repux.nn.lkconv`). Defaults to "auto".

    Inputs are ``(B, in_channels, D, H, W)`` with every spatial size a multiple of
    16 and at least 32; the output is ``(B, out_channels, D, H, W)`` logits.

    Example:
        >>> net = RepUXNet(1, 5, feature_sizes=(8, 16, 32, 64), hidden_size=128, kernel_size=7)
        >>> net(torch.zeros(1, 1, 32, 32, 32)).shape
        torch.Size([1, 5, 32, 32, 32])
    """

    spatial_multiple = 16
    min_spatial_size = 32

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 5,
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 21,
        bfm_alpha: float = 1.0,
        hidden_size: int = 768,
        norm_name: str | tuple = "instance",
        deploy: bool = False,
        algorithm: str = "auto",
        guidance_channels: int = 0,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        if not isinstance(guidance_channels, int) or isinstance(guidance_channels, bool) or not 0 <= guidance_channels < in_channels:
            raise ValueError(f"guidance_channels must be an integer from 0 to in_channels - 1 ({in_channels - 1}); got {guidance_channels!r}.")
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("hidden_size", hidden_size)
        feature_sizes = tuple(int(f) for f in feature_sizes)
        depths = tuple(int(d) for d in depths)
        if len(feature_sizes) != 4 or any(f < 1 for f in feature_sizes):
            raise ValueError(f"feature_sizes must be 4 positive integers (one per stage); got {feature_sizes}.")
        if len(depths) != 4 or any(d < 1 for d in depths):
            raise ValueError(f"depths must be 4 positive integers (one per stage); got {depths}.")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer; got {kernel_size!r}.")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {', '.join(ALGORITHMS)}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_sizes = feature_sizes
        self.depths = depths
        self.kernel_size = kernel_size
        self.bfm_alpha = float(bfm_alpha)
        self.hidden_size = hidden_size
        self.norm_name = norm_name
        self.guidance_channels = guidance_channels

        f = feature_sizes
        self.repuxnet_3d = RepUXEncoder(in_channels, f, depths, kernel_size, bfm_alpha, deploy, algorithm)

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=True)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=True)

        self.encoder1 = basic(in_channels, f[0])
        if guidance_channels and not hasattr(self.encoder1.layer, "conv3"):
            # the automatic network (image channels != f[0]) had a 1x1 residual projection; a guidance network whose total
            # input happens to equal f[0] keeps it, so that it computes what the automatic network plus click weights does
            self.encoder1.layer.conv3 = get_conv_layer(3, in_channels, f[0], kernel_size=1, stride=1, act=None, norm=None, conv_only=False)
            self.encoder1.layer.norm3 = get_norm_layer(name=norm_name, spatial_dims=3, channels=f[0])
        self.encoder2 = basic(f[0], f[1])
        self.encoder3 = basic(f[1], f[2])
        self.encoder4 = basic(f[2], f[3])
        self.encoder5 = basic(f[3], hidden_size)
        self.decoder5 = up(hidden_size, f[3])
        self.decoder4 = up(f[3], f[2])
        self.decoder3 = up(f[2], f[1])
        self.decoder2 = up(f[1], f[0])
        self.decoder1 = basic(f[0], f[0])
        self.out = UnetOutBlock(3, f[0], out_channels)
        self.gradient_checkpointing = False
        use_onednn(self)  # PyTorch's 2-D size heuristic sends narrow 3-D maps to a 10x slower kernel

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (JSON-serialisable)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "feature_sizes": list(self.feature_sizes),
            "depths": list(self.depths),
            "kernel_size": self.kernel_size,
            "bfm_alpha": self.bfm_alpha,
            "hidden_size": self.hidden_size,
            "norm_name": self.norm_name,
            **({"guidance_channels": self.guidance_channels} if self.guidance_channels else {}),
        }

    @property
    def deploy(self) -> bool:
        """True when every large kernel is folded (inference form)."""
        return all(m.deploy for m in self.modules() if isinstance(m, BFRDepthwiseConv3d))

    @property
    def batchnorm_folded(self) -> bool:
        return any(isinstance(b.norm, nn.Identity) for b in self.modules() if isinstance(b, RepUXBlock))

    def set_algorithm(self, algorithm: str) -> None:
        """Select the large-kernel convolution algorithm of every block."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {', '.join(ALGORITHMS)}.")
        for m in self.modules():
            if isinstance(m, BFRDepthwiseConv3d):
                m.algorithm = algorithm

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in backward to trade compute for memory."""
        self.gradient_checkpointing = bool(enabled)
        self.repuxnet_3d.gradient_checkpointing = bool(enabled)

    def reparameterize(self, fold_batchnorm: bool = False) -> RepUXNet:
        """Fold BFM into every large kernel (in place, idempotent) for inference.

        Args:
            fold_batchnorm: also fold each block's BatchNorm (running statistics)
                into its depthwise convolution. Exact in eval mode only; the
                model can then no longer be trained or saved in the official
                key layout. Defaults to False.
        """
        for m in self.modules():
            if isinstance(m, BFRDepthwiseConv3d):
                m.reparameterize()
        if fold_batchnorm:
            for m in self.modules():
                if isinstance(m, RepUXBlock):
                    m.fold_batchnorm()
        return self

    def unreparameterize(self) -> RepUXNet:
        """Undo :meth:`reparameterize` (``W = W_eff / BFM``) to train again; idempotent."""
        if self.batchnorm_folded:
            raise RuntimeError("this model's BatchNorm was folded for inference; it cannot be trained again.")
        for m in self.modules():
            if isinstance(m, BFRDepthwiseConv3d):
                m.unreparameterize()
        return self

    # ----------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` cannot go through the network."""
        if x.dim() != 5:
            raise ValueError(f"RepUXNet expects a 5-D input (B, C, D, H, W); got shape {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"RepUXNet was built with in_channels={self.in_channels} but the input has {x.shape[1]} channels (shape {tuple(x.shape)}).")
        spatial = tuple(int(s) for s in x.shape[2:])
        if any(s % self.spatial_multiple or s < self.min_spatial_size for s in spatial):
            raise ValueError(
                f"input spatial size {spatial} is not allowed: each of D, H, W must be a multiple of {self.spatial_multiple} "
                f"(four stride-2 down-samplings) and at least {self.min_spatial_size}; pad or crop the input, e.g. roi_size=(96, 96, 96)."
            )

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        outs = self.repuxnet_3d(x)
        enc1 = self._run(self.encoder1, x)
        enc2 = self._run(self.encoder2, outs[0])
        enc3 = self._run(self.encoder3, outs[1])
        enc4 = self._run(self.encoder4, outs[2])
        hidden = self._run(self.encoder5, outs[3])
        dec3 = self._run(self.decoder5, hidden, enc4)
        dec2 = self._run(self.decoder4, dec3, enc3)
        dec1 = self._run(self.decoder3, dec2, enc2)
        dec0 = self._run(self.decoder2, dec1, enc1)
        return self.out(self._run(self.decoder1, dec0))


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
