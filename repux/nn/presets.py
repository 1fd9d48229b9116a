"""Named RepUX-Net sizes.

``base`` is the paper's network.  ``small`` and ``tiny`` keep the architecture
(four stages, 21^3 BFR kernels, MONAI decoder) with fewer channels so that
training and inference fit a laptop CPU.
"""

from __future__ import annotations

from typing import Any

from repux.errors import ConfigError, did_you_mean
from repux.nn.repuxnet import RepUXNet

__all__ = ["PRESETS", "create_model", "preset_names"]

PRESETS: dict[str, dict[str, Any]] = {
    "base": {"feature_sizes": (48, 96, 192, 384), "depths": (2, 2, 2, 2), "kernel_size": 21, "hidden_size": 768},
    "small": {"feature_sizes": (24, 48, 96, 192), "depths": (2, 2, 2, 2), "kernel_size": 21, "hidden_size": 384},
    "tiny": {"feature_sizes": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "kernel_size": 21, "hidden_size": 128},
}


def preset_names() -> list[str]:
    return list(PRESETS)


def create_model(preset: str = "base", *, in_channels: int = 1, out_channels: int = 5, **overrides: Any) -> RepUXNet:
    """Build a :class:`RepUXNet` from a named preset.

    Args:
        preset: one of :data:`PRESETS` (``base``, ``small``, ``tiny``).
        in_channels: input channels. Defaults to 1.
        out_channels: output classes including background. Defaults to 5.
        **overrides: any other :class:`RepUXNet` argument (``kernel_size``, ``deploy``...).

    Raises:
        ConfigError: for an unknown preset (with the closest name).

    Example:
        >>> net = create_model("base", out_channels=5)
        >>> sum(p.numel() for p in net.parameters())
        65827829
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.{did_you_mean(preset, PRESETS)}")
    kwargs = dict(PRESETS[preset])
    kwargs.update(overrides)
    return RepUXNet(in_channels=in_channels, out_channels=out_channels, **kwargs)
