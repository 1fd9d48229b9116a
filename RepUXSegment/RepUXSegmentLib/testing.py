"""Test data for the RepUXSegment self-test (no Qt, no Slicer): a synthetic CT and a tiny model.

Used by ``RepUXSegmentTest`` inside Slicer; the headless pytest suite uses the same
helpers so both test the same thing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["TINY_MODEL_LABELS", "createTinyModel", "syntheticCTArray", "syntheticIJKToRAS"]

#: organ names of the tiny test model (FLARE layout: label values 1..4)
TINY_MODEL_LABELS = ("liver", "kidney", "spleen", "pancreas")


def syntheticCTArray(shape: tuple[int, int, int] = (36, 48, 56), seed: int = 0) -> Any:
    """A CT-like int16 volume ``(k, j, i)`` in HU: air, an elliptic body, a liver, two kidneys, a spine."""
    import numpy as np

    k, j, i = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    vol = np.full(shape, -1000.0)
    body = (i / 0.9) ** 2 + (j / 0.75) ** 2 < 1.0
    vol[body] = 30.0
    vol[body & (((i + 0.35) / 0.4) ** 2 + ((j - 0.1) / 0.3) ** 2 + (k / 0.6) ** 2 < 1.0)] = 60.0  # liver (patient right = -i)
    for side in (-0.4, 0.4):
        vol[body & (((i - side) / 0.12) ** 2 + ((j + 0.35) / 0.15) ** 2 + ((k + 0.2) / 0.3) ** 2 < 1.0)] = 35.0  # kidneys
    vol[body & ((i / 0.1) ** 2 + ((j + 0.55) / 0.1) ** 2 < 1.0)] = 700.0  # spine
    rng = np.random.default_rng(seed)
    vol += rng.normal(0.0, 10.0, shape)
    return np.clip(vol, -1024, 3071).astype(np.int16)


def syntheticIJKToRAS(
    spacing: tuple[float, float, float] = (3.1, 2.9, 3.3),
    origin: tuple[float, float, float] = (-80.0, -70.0, -60.0),
    leftHanded: bool = False,
    angleDegrees: float = 0.0,
) -> Any:
    """A 4x4 IJK->RAS matrix with the given spacing (i, j, k), a rotation about S and optionally a flipped j axis."""
    import numpy as np

    a = math.radians(angleDegrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    if leftHanded:
        rot = rot @ np.diag([1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def createTinyModel(folder: str | os.PathLike[str], modelId: str = "repux-selftest-tiny", seed: int = 0) -> Path:
    """An untrained 'tiny' RepUX-Net model folder (4 organs, coarse 4 mm grid, 64^3 windows: seconds on a CPU).

    Needs torch (and the repux package): call it after the dependencies are installed.
    """
    import torch

    import repux
    from repux.config import InferenceSettings, Preprocessing
    from repux.labels import LabelSet

    torch.manual_seed(seed)
    labels = LabelSet.from_names(TINY_MODEL_LABELS, name="flare")
    out = Path(folder) / modelId
    repux.save_model(
        repux.create_model("tiny", out_channels=labels.num_classes),
        out,
        labels=labels,
        preprocessing=Preprocessing(spacing=(4.0, 4.0, 4.0)),
        inference=InferenceSettings(roi_size=(64, 64, 64)),
        model_id=modelId,
        name="RepUX self-test (untrained)",
        description="Untrained tiny network for testing the module; its segmentations are meaningless.",
        overwrite=True,
    )
    return out
