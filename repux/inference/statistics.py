"""Per-organ statistics of a segmentation on the original image grid.

For each organ of a label set: voxel count, volume (mL), Hounsfield-unit
mean / standard deviation (population, ``ddof=0``) / median / min / max / 5th and
95th percentiles (numpy's linear interpolation) of the *input* CT inside the
organ, and ``touches_border``: the organ reaches a face of the image, so the
field of view may cut it (a partial organ: its volume is a lower bound).
Organs absent from the label map get a zero volume and empty HU values.

The label map and the image must share one voxel grid (RepUX writes labels
on the input's grid).  Values are gathered slab by slab, so a 1000-slice CT
needs no full-volume temporary beyond the label map and the image.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.errors import InputImageError, OutputError, guard_io
from repux.labels import LabelSet

__all__ = ["FIELDS", "organ_statistics", "statistics_csv", "statistics_paths", "write_statistics"]

#: column order of the CSV files
FIELDS = ["organ", "label", "voxels", "volume_ml", "hu_mean", "hu_std", "hu_median", "hu_min", "hu_max", "hu_p5", "hu_p95", "touches_border"]

SLAB = 64


def organ_statistics(image: sitk.Image, labels: sitk.Image, label_set: LabelSet) -> list[dict[str, Any]]:
    """One row per organ of ``label_set`` (keys :data:`FIELDS`).

    Raises:
        InputImageError: image and label map are not on the same grid.
    """
    from repux.io.images import same_grid

    if not same_grid(image, labels):
        raise InputImageError(
            f"statistics need the label map on the image's grid; got sizes {image.GetSize()} and {labels.GetSize()} (or other spacing/origin/direction)."
        )
    hu = sitk.GetArrayViewFromImage(image)
    lab = sitk.GetArrayViewFromImage(labels)
    values = {v.value: [] for v in label_set}
    for k0 in range(0, lab.shape[0], SLAB):
        ls = lab[k0 : k0 + SLAB]
        present = np.unique(ls)
        for v in present:
            if int(v) in values:
                values[int(v)].append(np.asarray(hu[k0 : k0 + SLAB][ls == v], dtype=np.float64))
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
    on_border = set()
    for f in faces:
        on_border.update(int(v) for v in np.unique(f))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    rows = []
    for organ in label_set:
        vals = np.concatenate(values[organ.value]) if values[organ.value] else np.zeros(0)
        n = int(vals.size)
        row: dict[str, Any] = {"organ": organ.name, "label": organ.value, "voxels": n, "volume_ml": n * voxel_ml}
        if n:
            p5, med, p95 = (float(x) for x in np.percentile(vals, [5, 50, 95]))
            row.update(
                hu_mean=float(vals.mean()),
                hu_std=float(vals.std()),
                hu_median=med,
                hu_min=float(vals.min()),
                hu_max=float(vals.max()),
                hu_p5=p5,
                hu_p95=p95,
            )
        else:
            row.update({k: None for k in FIELDS[4:11]})
        row["touches_border"] = organ.value in on_border and n > 0
        rows.append(row)
    return rows


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4f}".rstrip("0").rstrip(".")
    if v is None:
        return ""
    return v


def statistics_csv(rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
    """CSV text of statistics rows; ``extra`` columns (e.g. the case name) come first."""
    buf = io.StringIO()
    cols = list(extra or {}) + FIELDS
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**(extra or {}), **{k: _fmt(r.get(k)) for k in FIELDS}})
    return buf.getvalue()


def statistics_paths(output: str | Path) -> tuple[Path, Path]:
    """``<output stem>.statistics.csv`` and ``.json`` beside an output file."""
    from repux.io.images import suffix_of

    p = Path(output)
    stem = p.name[: -len(suffix_of(p))] if suffix_of(p) else p.stem
    return p.with_name(stem + ".statistics.csv"), p.with_name(stem + ".statistics.json")


@guard_io("writing the statistics beside", OutputError, 1)
def write_statistics(rows: Sequence[dict[str, Any]], output: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write the CSV and JSON beside ``output`` (atomically); returns their paths."""
    from repux.io.images import atomic_path

    csv_path, json_path = statistics_paths(output)
    with atomic_path(csv_path) as tmp:
        tmp.write_text(statistics_csv(rows))
    doc = {**(info or {}), "organs": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return csv_path, json_path
