"""Route dense 3-D convolutions on the CPU to oneDNN.

PyTorch decides between oneDNN and its slow reference kernel
(``slow_conv3d_forward``) with a size heuristic written for 2-D images:
a single-sample input with ``C * D * H <= 20480`` goes to the reference
kernel.  For the narrow, full-resolution blocks of small RepUX-Net presets
(8 channels at 48^3) that is 10x slower than oneDNN for the same result.
:class:`OneDNNConv3d` calls ``aten::mkldnn_convolution`` directly for float32
CPU tensors (forward and autograd backward are oneDNN's); anything else - CUDA,
autocast, other dtypes - goes through the usual ``F.conv3d``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["OneDNNConv3d", "use_onednn"]

_AVAILABLE = torch.backends.mkldnn.is_available()


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose CPU float32 path always uses oneDNN (same parameters, same function)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        if (
            _AVAILABLE
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")
        ):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn(module: nn.Module) -> nn.Module:
    """Switch every plain ``nn.Conv3d`` of ``module`` to :class:`OneDNNConv3d` in place (parameters untouched)."""
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = OneDNNConv3d
    return module
