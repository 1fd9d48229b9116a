"""MONAI transform chains for training and validation.

The deterministic part - read, re-orient, resample (exactly the inference
preprocessing of :mod:`repux.inference.preprocess`, one implementation for both), label
remapping, body crop, HU window - is cached (MONAI ``CacheDataset`` or
``PersistentDataset``); the random part follows the official RepUX-Net recipe:
positive/negative ``roi_size`` crops (``RandCropByPosNegLabeld``), flips,
rotations and scaling (``RandAffined``), and intensity shifts
(``RandShiftIntensityd``).  Flips along the left-right axis are left out when
the label set has sided organs (a flipped right kidney would become a left
one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from repux.config import Preprocessing
from repux.errors import DatasetError
from repux.inference.preprocess import label_to_model_grid, to_model_grid
from repux.io.images import read_image
from repux.labels import LabelSet

__all__ = ["AUGMENTATIONS", "CROP_SAMPLING", "LoadModelGridd", "deterministic_transforms", "has_sided_labels", "random_transforms"]

AUGMENTATIONS = ("none", "standard", "strong")


def _above(x: Any, threshold: float) -> Any:
    return x > threshold


class LoadModelGridd(MapTransform):
    """Read ``image`` and ``label`` paths and bring both onto the model grid.

    The image goes through :func:`repux.inference.preprocess.to_model_grid` (the
    inference preprocessing); the label is resampled with nearest neighbour
    onto the image's model grid and its file values are mapped to training
    values with ``value_map`` (values not in the map raise, naming them).
    Output arrays are channel-first ``(1, x, y, z)``.
    """

    def __init__(self, preprocessing: Preprocessing, value_map: Mapping[int, int] | None = None, keys: KeysCollection = ("image", "label")) -> None:
        super().__init__(keys)
        self.preprocessing = preprocessing
        self.value_map = dict(value_map or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid = to_model_grid(read_image(d["image"]), self.preprocessing)
        d["image"] = grid.array[None].astype(np.float32)
        if "label" in d and d["label"] is not None:
            lab = label_to_model_grid(read_image(d["label"]), grid.image)
            d["label"] = self.remap(lab, str(d["label"]))[None]
        d["spacing"] = np.asarray(self.preprocessing.spacing, dtype=np.float32)
        return d

    def remap(self, lab: np.ndarray, name: str) -> np.ndarray:
        if not self.value_map:
            return lab.astype(np.uint8)
        lut_size = max(int(lab.max()), max(self.value_map)) + 1
        lut = np.full(lut_size, -1, dtype=np.int32)
        lut[0] = 0
        for src, dst in self.value_map.items():
            lut[int(src)] = int(dst)
        out = lut[lab]
        if (out < 0).any():
            bad = sorted(int(v) for v in np.unique(lab[out < 0]))
            raise DatasetError(
                f"label file {name} contains values {bad} that are not in the dataset's label set; run 'repux dataset check' to find and fix them."
            )
        return out.astype(np.uint8)


def deterministic_transforms(preprocessing: Preprocessing, value_map: Mapping[int, int] | None = None) -> list[Any]:
    w = preprocessing.intensity
    margin = [int(math.ceil(preprocessing.foreground_margin_mm / s)) for s in preprocessing.spacing]
    chain: list[Any] = [LoadModelGridd(preprocessing, value_map)]
    if preprocessing.crop_foreground:
        chain.append(
            CropForegroundd(
                keys=["image", "label"],
                source_key="image",
                select_fn=functools.partial(_above, threshold=preprocessing.foreground_threshold),
                margin=margin,
                allow_smaller=True,
            )
        )
    chain += [
        ScaleIntensityRanged(keys="image", a_min=w.a_min, a_max=w.a_max, b_min=w.b_min, b_max=w.b_max, clip=w.clip),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
    return chain


def has_sided_labels(labels: LabelSet) -> bool:
    return any(lab.modifier is not None and lab.modifier.meaning in ("Left", "Right") for lab in labels)


CROP_SAMPLING = ("posneg", "classes")


def random_transforms(
    roi_size: tuple[int, int, int], num_samples: int, labels: LabelSet, augmentation: str = "standard", crop_sampling: str = "posneg"
) -> list[Any]:
    """Crops and augmentations (official recipe; ``strong`` for few-case fine-tuning).

    ``crop_sampling="posneg"`` centres half the crops on any organ (official);
    ``"classes"`` centres crops on each class (background included) equally often,
    which helps small organs when iterations are few.
    """
    if augmentation not in AUGMENTATIONS:
        raise DatasetError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {augmentation!r}.")
    if crop_sampling not in CROP_SAMPLING:
        raise DatasetError(f"crop_sampling must be one of {', '.join(CROP_SAMPLING)}; got {crop_sampling!r}.")
    if crop_sampling == "classes":
        crop: Any = RandCropByLabelClassesd(
            keys=["image", "label"],
            label_key="label",
            spatial_size=roi_size,
            num_classes=labels.num_classes,
            num_samples=num_samples,
            image_key="image",
            image_threshold=0,
            warn=False,
        )
    else:
        crop = RandCropByPosNegLabeld(
            keys=["image", "label"], label_key="label", spatial_size=roi_size, pos=1, neg=1, num_samples=num_samples, image_key="image", image_threshold=0
        )
    chain: list[Any] = [SpatialPadd(keys=["image", "label"], spatial_size=roi_size), crop]
    if augmentation == "none":
        return chain
    strong = augmentation == "strong"
    flip_axes = [1, 2] if has_sided_labels(labels) else [0, 1, 2]
    for ax in flip_axes:
        chain.append(RandFlipd(keys=["image", "label"], prob=0.2 if strong else 0.1, spatial_axis=ax))
    chain.append(
        RandAffined(
            keys=["image", "label"],
            mode=("bilinear", "nearest"),
            prob=0.8 if strong else 0.5,
            rotate_range=(math.pi / 18, math.pi / 18, math.pi / 12) if strong else (0, 0, math.pi / 30),
            scale_range=(0.15, 0.15, 0.15) if strong else (0.1, 0.1, 0.1),
            padding_mode="zeros",
        )
    )
    chain.append(RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5))
    if strong:
        chain.append(RandScaleIntensityd(keys="image", factors=0.1, prob=0.3))
    return chain


def compose(transforms: list[Any]) -> Compose:
    return Compose(transforms)
