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

Clicks recorded with a case (RAS points, item key ``click_ras``) are rendered
into a ``clicks`` volume on the model grid at load (through the grid image's
own geometry) and travel through the same crops, flips and affine transforms as
the label (nearest neighbour), so that :func:`click_indices` finds them in a
training crop where they were placed on the patient.
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


#: a training item's recorded clicks (a list of RAS points, mm, in the image file's own RAS space)
CLICK_RAS_KEY = "click_ras"
#: the volume the recorded clicks are rendered into (``(1, x, y, z)`` uint8; click n marks value n)
CLICKS_KEY = "clicks"
#: most recorded clicks rendered per case (one uint8 value each)
MAX_RECORDED_CLICKS = 255


def render_clicks(points_ras: Any, grid_image: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``(1, x, y, z)`` uint8: recorded click n (1-based) marks the 3x3x3 voxels of the model grid around its point.

    The cube (not one voxel) survives the nearest-neighbour resampling of the random affine; points outside the grid
    (or malformed) are dropped.  :func:`click_indices` reads the clicks back after cropping and augmentation.
    """
    vol = np.zeros(tuple(int(n) for n in shape), np.uint8)
    n = 0
    for ras in list(points_ras or [])[:MAX_RECORDED_CLICKS]:
        try:
            lps = (-float(ras[0]), -float(ras[1]), float(ras[2]))
        except (TypeError, ValueError, IndexError):
            continue
        if not all(math.isfinite(v) for v in lps):
            continue
        idx = np.round(grid_image.TransformPhysicalPointToContinuousIndex(lps)).astype(int)
        if (idx < 0).any() or (idx >= vol.shape).any():
            continue
        n += 1
        vol[tuple(slice(int(max(i - 1, 0)), int(i + 2)) for i in idx)] = n
    return vol[None]


def click_indices(volume: Any) -> list[tuple[int, int, int]]:
    """The voxels of the recorded clicks in a (cropped, augmented) ``clicks`` volume: per click still in it, the
    rounded mean position of its voxels, in array axes (``(x, y, z)``)."""
    from scipy import ndimage

    v = np.asarray(volume)
    v = v[0] if v.ndim == 4 else v
    ids = np.unique(v)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    centres = ndimage.center_of_mass(np.ones(v.shape, np.uint8), v, ids)
    return [tuple(int(round(c)) for c in centre) for centre in centres]  # type: ignore[misc]


class LoadModelGridd(MapTransform):
    """Read ``image`` and ``label`` paths and bring both onto the model grid.

    The image goes through :func:`repux.inference.preprocess.to_model_grid` (the
    inference preprocessing); the label is resampled with nearest neighbour
    onto the image's model grid and its file values are mapped to training
    values with ``value_map`` (values not in the map raise, naming them).
    Output arrays are channel-first ``(1, x, y, z)``.  An item with :data:`CLICK_RAS_KEY` gets a
    :data:`CLICKS_KEY` volume (:func:`render_clicks`).
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
        if CLICK_RAS_KEY in d:
            d[CLICKS_KEY] = render_clicks(d.pop(CLICK_RAS_KEY), grid.image, grid.array.shape)
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


def _spatial_keys(clicks: bool) -> list[str]:
    return ["image", "label", CLICKS_KEY] if clicks else ["image", "label"]


def deterministic_transforms(preprocessing: Preprocessing, value_map: Mapping[int, int] | None = None, clicks: bool = False) -> list[Any]:
    """Load onto the model grid, crop the body, window the HU (``clicks``: the items carry recorded clicks)."""
    w = preprocessing.intensity
    margin = [int(math.ceil(preprocessing.foreground_margin_mm / s)) for s in preprocessing.spacing]
    keys = _spatial_keys(clicks)
    chain: list[Any] = [LoadModelGridd(preprocessing, value_map)]
    if preprocessing.crop_foreground:
        chain.append(
            CropForegroundd(
                keys=keys,
                source_key="image",
                select_fn=functools.partial(_above, threshold=preprocessing.foreground_threshold),
                margin=margin,
                allow_smaller=True,
            )
        )
    chain += [
        ScaleIntensityRanged(keys="image", a_min=w.a_min, a_max=w.a_max, b_min=w.b_min, b_max=w.b_max, clip=w.clip),
        EnsureTyped(keys=keys, track_meta=False),
    ]
    return chain


def has_sided_labels(labels: LabelSet) -> bool:
    return any(lab.modifier is not None and lab.modifier.meaning in ("Left", "Right") for lab in labels)


CROP_SAMPLING = ("posneg", "classes")


def random_transforms(
    roi_size: tuple[int, int, int],
    num_samples: int,
    labels: LabelSet,
    augmentation: str = "standard",
    crop_sampling: str = "posneg",
    clicks: bool = False,
) -> list[Any]:
    """Crops and augmentations (official recipe; ``strong`` for few-case fine-tuning).

    ``crop_sampling="posneg"`` centres half the crops on any organ (official);
    ``"classes"`` centres crops on each class (background included) equally often,
    which helps small organs when iterations are few.  ``clicks``: the recorded
    clicks' volume is cropped and transformed with the label.
    """
    keys = _spatial_keys(clicks)
    if augmentation not in AUGMENTATIONS:
        raise DatasetError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {augmentation!r}.")
    if crop_sampling not in CROP_SAMPLING:
        raise DatasetError(f"crop_sampling must be one of {', '.join(CROP_SAMPLING)}; got {crop_sampling!r}.")
    if crop_sampling == "classes":
        crop: Any = RandCropByLabelClassesd(
            keys=keys,
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
            keys=keys, label_key="label", spatial_size=roi_size, pos=1, neg=1, num_samples=num_samples, image_key="image", image_threshold=0
        )
    chain: list[Any] = [SpatialPadd(keys=keys, spatial_size=roi_size), crop]
    if augmentation == "none":
        return chain
    strong = augmentation == "strong"
    flip_axes = [1, 2] if has_sided_labels(labels) else [0, 1, 2]
    for ax in flip_axes:
        chain.append(RandFlipd(keys=keys, prob=0.2 if strong else 0.1, spatial_axis=ax))
    chain.append(
        RandAffined(
            keys=keys,
            mode=("bilinear", "nearest", "nearest") if clicks else ("bilinear", "nearest"),
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
