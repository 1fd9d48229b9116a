"""Networks and layers: RepUX-Net, BFR depthwise convolution, fast large-kernel ops."""

from __future__ import annotations

from repux.nn.bfr import BFRDepthwiseConv3d, bayesian_frequency_matrix
from repux.nn.lkconv import depthwise_conv3d
from repux.nn.presets import PRESETS, create_model, preset_names
from repux.nn.repuxnet import LayerNorm3d, RepUXBlock, RepUXEncoder, RepUXNet

__all__ = [
    "PRESETS",
    "BFRDepthwiseConv3d",
    "LayerNorm3d",
    "RepUXBlock",
    "RepUXEncoder",
    "RepUXNet",
    "bayesian_frequency_matrix",
    "create_model",
    "depthwise_conv3d",
    "preset_names",
]
