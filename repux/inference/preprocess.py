"""Bring images onto the model's grid and back, exactly invertible.

Forward (shared by inference and training):

1. re-orientation to ``Preprocessing.orientation`` with
   ``SimpleITK.DICOMOrient`` - an exact axis permutation/flip, no interpolation
   (``"RAS"`` gives the axis order of MONAI's ``Orientationd(axcodes="RAS")``);
2. resampling to ``Preprocessing.spacing`` (linear for images, nearest for
   labels), keeping the direction cosines (oblique stays oblique) and the
   physical centre;
3. ``(k, j, i)`` SimpleITK array -> ``(x, y, z)`` network array (MONAI layout);
4. HU window with MONAI's ``ScaleIntensityRange``;
5. foreground (body) bounding box with MONAI's ``generate_spatial_bounding_box``.

Inverse: a label array on the model grid becomes a SimpleITK image with the
model grid's geometry and is resampled (nearest neighbour) onto the *input*
image's grid through physical coordinates, so the output grid is the input
grid exactly, whatever its orientation or handedness.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from repux.config import Preprocessing

__all__ = ["ModelGrid", "foreground_box", "from_model_grid", "label_to_model_grid", "network_array", "scale_intensity", "to_model_grid"]

logger = logging.getLogger(__name__)


@dataclass
class ModelGrid:
    """An image resampled onto the model grid, with its HU array in network layout ``(x, y, z)``."""

    image: sitk.Image
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


def _target_grid(img: sitk.Image, spacing: tuple[float, float, float]) -> tuple[list[int], tuple[float, ...], tuple[float, ...]]:
    in_size = np.array(img.GetSize(), dtype=float)
    in_sp = np.array(img.GetSpacing(), dtype=float)
    out_sp = np.array(spacing, dtype=float)
    out_size = np.maximum(1, np.round(in_size * in_sp / out_sp)).astype(int)
    d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    centre = np.array(img.GetOrigin()) + d @ ((in_size - 1) / 2 * in_sp)
    origin = centre - d @ ((out_size - 1) / 2 * out_sp)
    return [int(s) for s in out_size], tuple(float(v) for v in origin), tuple(float(v) for v in out_sp)


def to_model_grid(image: sitk.Image, prep: Preprocessing, interpolator: int = sitk.sitkLinear) -> ModelGrid:
    """Re-orient and resample ``image`` onto the model grid (float32 HU)."""
    # orient in the input's own pixel type and resample straight to float32: no full-resolution float copy
    img = sitk.DICOMOrient(image, prep.orientation)
    if not np.allclose(img.GetSpacing(), prep.spacing, rtol=1e-3, atol=1e-4):
        size, origin, spacing = _target_grid(img, prep.spacing)
        fill = float(sitk.GetArrayViewFromImage(img).min())
        img = sitk.Resample(img, size, sitk.Transform(), interpolator, origin, spacing, img.GetDirection(), fill, sitk.sitkFloat32)
    else:
        img = sitk.Cast(img, sitk.sitkFloat32)
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    return ModelGrid(img, arr)


def label_to_model_grid(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Resample a label map (nearest) onto a model-grid ``reference``; returns ``(x, y, z)`` uint8/16."""
    pix = sitk.sitkUInt8 if float(sitk.GetArrayViewFromImage(label).max()) < 256 else sitk.sitkUInt16
    lab = sitk.Resample(sitk.Cast(label, pix), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pix)
    return np.ascontiguousarray(sitk.GetArrayFromImage(lab).transpose(2, 1, 0))


def network_array(grid: ModelGrid, prep: Preprocessing) -> np.ndarray:
    """The scaled network input ``(x, y, z)`` float32 for a model grid."""
    return scale_intensity(grid.array, prep)


def scale_intensity(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    from monai.transforms import ScaleIntensityRange

    w = prep.intensity
    t = ScaleIntensityRange(a_min=w.a_min, a_max=w.a_max, b_min=w.b_min, b_max=w.b_max, clip=w.clip, dtype=np.float32)
    return np.asarray(t(array), dtype=np.float32)


def foreground_box(hu: np.ndarray, prep: Preprocessing) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Bounding box ``(start, end)`` of voxels above ``foreground_threshold`` HU plus the margin.

    Returns the whole array when nothing is above the threshold.
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    shape = tuple(int(s) for s in hu.shape)
    if not prep.crop_foreground:
        return (0, 0, 0), shape  # type: ignore[return-value]
    mask = hu > prep.foreground_threshold
    if not mask.any():
        return (0, 0, 0), shape  # type: ignore[return-value]
    margin = [int(math.ceil(prep.foreground_margin_mm / s)) for s in prep.spacing]
    start, end = generate_spatial_bounding_box(mask[None], margin=margin)
    start = tuple(max(0, int(s)) for s in start)
    end = tuple(min(n, int(e)) for e, n in zip(end, shape))
    return start, end  # type: ignore[return-value]


def from_model_grid(label_xyz: np.ndarray, grid_image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkNearestNeighbor) -> sitk.Image:
    """Resample an ``(x, y, z)`` array on the model grid onto ``reference``'s grid.

    Labels use nearest neighbour (default); float maps (uncertainty) pass ``sitk.sitkLinear``.
    """
    arr = np.ascontiguousarray(label_xyz.transpose(2, 1, 0))
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(grid_image)
    if interpolator == sitk.sitkNearestNeighbor:
        pix = sitk.sitkUInt8 if arr.dtype == np.uint8 else sitk.sitkUInt16
        out = sitk.Resample(img, reference, sitk.Transform(), interpolator, 0, pix)
    else:
        out = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    out.CopyInformation(reference)
    return out
