"""Click-guidance input channels for RepUX-Net (DeepEdit's scheme on a RepUX-Net).

A guidance model takes ``1 + C`` input channels: the image, then one click heatmap per class
(background first, then the organs in the label set's order).  :func:`add_guidance_channels`
extends a trained automatic network by ``C`` input channels whose weights start at zero, so
that with all-zero heatmaps it computes exactly what the automatic network computes: only the
layers that read the raw input change (the encoder's stem convolution and the first
decoder-side residual block's two convolutions), and a zero weight on a zero-free channel adds
nothing.  Training with simulated clicks (``repux finetune --interactive``) then teaches the
new weights.

The model card records the guidance (``"guidance"`` in ``model.json``: channels, label order,
heatmap sigma in mm); :class:`repux.config.Guidance` reads and checks it.
"""

from __future__ import annotations

import torch
from torch import nn

from repux.errors import ConfigError

__all__ = ["add_guidance_channels", "input_convolutions"]


def input_convolutions(net: nn.Module) -> list[nn.Conv3d]:
    """The convolutions of a :class:`~repux.nn.RepUXNet` that read the raw input (stem, and the first residual block)."""
    convs = [net.repuxnet_3d.downsample_layers[0][0]]
    block = net.encoder1.layer
    convs.append(block.conv1.conv)
    if getattr(block, "conv3", None) is not None:
        convs.append(block.conv3.conv)
    for c in convs:
        if not isinstance(c, nn.Conv3d) or c.in_channels != net.in_channels:
            raise ConfigError(
                f"unexpected input layer {type(c).__name__} with {getattr(c, 'in_channels', '?')} input channels (network in_channels {net.in_channels})."
            )
    return convs


def _widen(conv: nn.Conv3d, extra: int) -> None:
    w = conv.weight.detach()
    wide = torch.zeros((w.shape[0], w.shape[1] + extra, *w.shape[2:]), dtype=w.dtype, device=w.device)
    wide[:, : w.shape[1]] = w
    conv.weight = nn.Parameter(wide, requires_grad=conv.weight.requires_grad)
    conv.in_channels = conv.in_channels + extra


def add_guidance_channels(net: nn.Module, extra: int) -> nn.Module:
    """Give ``net`` ``extra`` more input channels with zero weights (in place; returns ``net``).

    With all-zero extra channels the network's output is unchanged (a test compares outputs).
    """
    if not isinstance(extra, int) or extra < 1:
        raise ConfigError(f"extra input channels must be a positive integer; got {extra!r}.")
    for conv in input_convolutions(net):
        _widen(conv, extra)
    net.in_channels = net.in_channels + extra
    net.guidance_channels = getattr(net, "guidance_channels", 0) + extra
    return net
