"""RepUX: RepUX-Net (Bayesian frequency re-parameterized 21^3 kernels) for CT organ segmentation.

The core package never imports slicer, qt or vtk.  Heavy modules (torch,
MONAI, SimpleITK) are imported lazily: ``import repux`` is cheap, and
``repux.create_model``, ``repux.load_model``, ``repux.segment`` ... load them
on first use.

Example:
    >>> import repux
    >>> net = repux.create_model("tiny", out_channels=5)
"""

from __future__ import annotations

import importlib
from typing import Any

from repux._version import __version__

__all__ = [
    "InferenceSettings",
    "InteractiveSession",
    "LabelSet",
    "Preprocessing",
    "RepUXNet",
    "Segmenter",
    "__version__",
    "bayesian_frequency_matrix",
    "convert_official",
    "create_model",
    "load_model",
    "organ_statistics",
    "read_image",
    "read_model_card",
    "save_model",
    "segment",
    "segment_many",
    "write_image",
]

_LAZY = {
    "create_model": "repux.nn.presets",
    "RepUXNet": "repux.nn.repuxnet",
    "bayesian_frequency_matrix": "repux.nn.bfr",
    "load_model": "repux.models.folder",
    "save_model": "repux.models.folder",
    "read_model_card": "repux.models.folder",
    "convert_official": "repux.models.official",
    "LabelSet": "repux.labels",
    "Preprocessing": "repux.config",
    "InferenceSettings": "repux.config",
    "segment": "repux.inference.segmenter",
    "InteractiveSession": "repux.inference.session",
    "Segmenter": "repux.inference.segmenter",
    "segment_many": "repux.inference.batch",
    "organ_statistics": "repux.inference.statistics",
    "read_image": "repux.io.images",
    "write_image": "repux.io.images",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'repux' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
