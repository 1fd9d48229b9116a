"""``repux dataset check``: find problems before a training run does.

For each case: image and label files exist and are readable 3-D volumes;
the label map lies on the image's grid (size, spacing, origin, direction) -
if not, the mismatch is reported and ``fix=True`` resamples the label onto
the image grid (nearest neighbour, atomic write); label values outside the
label set; empty label maps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.data.datasets import Dataset
from repux.errors import InputImageError
from repux.io.images import read_image, same_grid, write_image

__all__ = ["CaseReport", "check_dataset"]

logger = logging.getLogger(__name__)


@dataclass
class CaseReport:
    id: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    voxels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "errors": self.errors, "warnings": self.warnings, "fixed": self.fixed, "voxels": self.voxels}


def _describe_mismatch(img: sitk.Image, lab: sitk.Image) -> str:
    parts = []
    if img.GetSize() != lab.GetSize():
        parts.append(f"size {lab.GetSize()} vs image {img.GetSize()}")
    if not np.allclose(img.GetSpacing(), lab.GetSpacing(), atol=1e-4):
        parts.append(f"spacing {tuple(round(s, 4) for s in lab.GetSpacing())} vs {tuple(round(s, 4) for s in img.GetSpacing())}")
    if not np.allclose(img.GetOrigin(), lab.GetOrigin(), atol=1e-4):
        parts.append(f"origin {tuple(round(s, 2) for s in lab.GetOrigin())} vs {tuple(round(s, 2) for s in img.GetOrigin())}")
    if not np.allclose(img.GetDirection(), lab.GetDirection(), atol=1e-4):
        parts.append("direction differs")
    return ", ".join(parts)


def check_dataset(dataset: Dataset, *, fix: bool = False) -> list[CaseReport]:
    """Check every case; with ``fix`` resample mis-gridded labels onto their images."""
    values = dataset.label_values or {lab.name: lab.value for lab in dataset.labels}
    allowed = {0} | {int(v) for v in values.values()}
    names = {int(v): n for n, v in values.items()}
    reports = []
    for case in dataset.cases:
        rep = CaseReport(case.id)
        reports.append(rep)
        for kind, path in (("image", case.image), ("label", case.label)):
            if not path.exists():
                rep.errors.append(f"{kind} file missing: {path}")
        if rep.errors:
            continue
        try:
            img = read_image(case.image)
            lab = read_image(case.label)
        except InputImageError as err:
            rep.errors.append(str(err))
            continue
        if img.GetDimension() != 3 or lab.GetDimension() != 3:
            rep.errors.append(f"image and label must be 3-D (got {img.GetDimension()}-D and {lab.GetDimension()}-D)")
            continue
        if not same_grid(img, lab):
            msg = f"label grid differs from the image grid ({_describe_mismatch(img, lab)})"
            if fix:
                lab = sitk.Resample(lab, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
                write_image(lab, case.label)
                rep.fixed.append(msg + "; resampled the label onto the image grid (nearest neighbour)")
            else:
                rep.errors.append(msg + "; run with --fix to resample the label onto the image grid")
        arr = sitk.GetArrayViewFromImage(lab)
        present, counts = np.unique(arr, return_counts=True)
        bad = sorted(int(v) for v in present if int(v) not in allowed)
        if bad:
            rep.errors.append(f"label values {bad} are not in the label set {sorted(allowed - {0})}")
        rep.voxels = {names.get(int(v), str(int(v))): int(c) for v, c in zip(present, counts) if int(v) != 0}
        if not rep.voxels:
            rep.warnings.append("label map is empty (background only)")
        else:
            missing = [n for v, n in names.items() if n not in rep.voxels]
            if missing:
                rep.warnings.append(f"organs absent: {', '.join(missing)}")
    return reports
