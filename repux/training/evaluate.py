"""Evaluation: per-case, per-organ Dice and HD95 (MONAI metrics) in the input's grid.

Each case's image is segmented with the inference engine (the same code as
``repux segment``) and compared with its reference label map on the image's
own voxel grid.  Organs are matched by name (or alias) between the model's
and the dataset's label sets.  HD95 is in millimetres (voxel spacing aware).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from repux.errors import DatasetError
from repux.io.images import atomic_write_text, read_image
from repux.progress import CancelToken, ProgressCallback, ProgressTracker

__all__ = ["click_summary", "dice_hd95", "evaluate", "format_clicks", "format_table"]

logger = logging.getLogger(__name__)


def dice_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float | None, float | None]:
    """Dice and 95th-percentile Hausdorff distance (mm) of two binary masks ``(k, j, i)``.

    Returns ``(None, None)`` when the organ is absent from both.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance

    if not pred.any() and not ref.any():
        return None, None
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    r = torch.from_numpy(ref.astype(np.float32))[None, None]
    p2 = torch.cat([1 - p, p], 1)
    r2 = torch.cat([1 - r, r], 1)
    dice = float(compute_dice(p2, r2, include_background=False)[0, 0])
    if not pred.any() or not ref.any():
        return dice, None
    with warnings.catch_warnings():  # MONAI 1.5+ deprecation chatter inside its own metric code
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(p2, r2, include_background=False, percentile=95, spacing=[spacing[2], spacing[1], spacing[0]])
    hd_v = float(hd[0, 0])
    return dice, (hd_v if math.isfinite(hd_v) else None)


def evaluate(
    model: str | Path,
    dataset,
    *,
    split: str | None = None,
    device: str = "auto",
    segmenter_kwargs: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    clicks: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Segment every case and score it. Returns ``{"cases": [...], "mean": {...}, "organs": [...]}``.

    With ``clicks`` (a click-guidance model), also ``"clicks"``: per organ, the mean Dice after each number of
    simulated clicks and NoC@85 / NoC@90 (see :func:`repux.inference.guidance.click_curve`).
    """
    from repux.inference.segmenter import Segmenter

    cases = [c for c in dataset.cases if split is None or c.split == split]
    if not cases:
        raise DatasetError(f"no cases to evaluate{f' in split {split!r}' if split else ''}.")
    seg = Segmenter(model, device=device, **dict(segmenter_kwargs or {}))
    if clicks and seg.guidance is None:
        raise DatasetError(f"--clicks needs a model with click guidance; {model} has none (train one with repux finetune --interactive).")
    pairs = []
    for lab in seg.labels:
        ds_lab = dataset.labels.find(lab.name)
        if ds_lab is not None:
            pairs.append((lab, (dataset.label_values or {}).get(ds_lab.name, ds_lab.value)))
    if not pairs:
        raise DatasetError(f"the model's organs ({', '.join(seg.labels.names)}) and the dataset's ({', '.join(dataset.labels.names)}) have nothing in common.")
    tracker = ProgressTracker(progress, {"evaluate": 1.0}, cancel)
    rows = []
    click_rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        tracker.update("evaluate", i / len(cases), f"case {case.id} ({i + 1}/{len(cases)})", case=case.id)
        img = read_image(case.image)
        result = seg.segment(img, cancel=cancel)
        ref_img = read_image(case.label)
        if ref_img.GetSize() != img.GetSize() or not np.allclose(ref_img.GetSpacing(), img.GetSpacing(), atol=1e-4):
            ref_img = sitk.Resample(ref_img, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        pred = sitk.GetArrayViewFromImage(result.labels)
        ref = sitk.GetArrayViewFromImage(ref_img)
        row: dict[str, Any] = {"case": case.id}
        for lab, ref_value in pairs:
            d, h = dice_hd95(pred == lab.value, ref == ref_value, img.GetSpacing())
            row[f"{lab.name}/dice"] = None if d is None else round(d, 4)
            row[f"{lab.name}/hd95_mm"] = None if h is None else round(h, 2)
        if clicks:
            from repux.inference.guidance import click_curve

            tracker.update("evaluate", (i + 0.5) / len(cases), f"case {case.id}: simulated clicks", case=case.id)
            curves = click_curve(seg, img, ref_img, [(lab.value, v) for lab, v in pairs], max(clicks))
            click_rows.append({lab.name: curves[lab.value] for lab, _ in pairs})
            logger.info("case %s: %d organs x %d clicks in %.1f s (%d windows run)", case.id, len(pairs), max(clicks), curves["seconds"], curves["windows_run"])
        rows.append(row)
    tracker.done("evaluation finished")
    organs = [lab.name for lab, _ in pairs]
    mean: dict[str, Any] = {}
    for o in organs:
        for m in ("dice", "hd95_mm"):
            vals = [r[f"{o}/{m}"] for r in rows if r[f"{o}/{m}"] is not None]
            mean[f"{o}/{m}"] = round(float(np.mean(vals)), 4) if vals else None
    dices = [mean[f"{o}/dice"] for o in organs if mean[f"{o}/dice"] is not None]
    mean["mean/dice"] = round(float(np.mean(dices)), 4) if dices else None
    report = {"model": seg.card.id if seg.card else None, "organs": organs, "cases": rows, "mean": mean}
    if clicks:
        report["clicks"] = click_summary(click_rows, organs, clicks)
    return report


def click_summary(click_rows: list[dict[str, Any]], organs: list[str], counts: tuple[int, ...]) -> dict[str, Any]:
    """Mean Dice after each click count and NoC@85 / NoC@90 per organ (a case that never reaches the target counts
    as the most clicks simulated, and ``reached`` says in how many cases it was reached)."""
    from repux.inference.guidance import noc

    n_max = max(counts)
    out: dict[str, Any] = {"counts": list(counts), "organs": {}, "per_case": click_rows}
    for o in organs:
        curves = [r[o]["dice"] for r in click_rows if r[o]["dice"][0] is not None]
        if not curves:
            out["organs"][o] = None
            continue
        entry: dict[str, Any] = {"dice": {str(n): round(float(np.mean([1.0 if c[n] is None else c[n] for c in curves])), 4) for n in counts}}
        for target in (0.85, 0.9):
            hits = [noc(c, target) for c in curves]
            entry[f"noc{round(100 * target)}"] = round(float(np.mean([n_max if h is None else h for h in hits])), 2)
            entry[f"noc{round(100 * target)}_reached"] = f"{sum(h is not None for h in hits)}/{len(hits)}"
        out["organs"][o] = entry
    return out


def format_clicks(report: Mapping[str, Any]) -> str:
    """The simulated-click table: Dice after N clicks, NoC@85, NoC@90 per organ."""
    c = report["clicks"]
    counts = c["counts"]
    head = f"{'organ':<22}" + "".join(f"{'Dice@' + str(n):>9}" for n in counts) + f"{'NoC@85':>9}{'NoC@90':>9}"
    lines = [head]
    for o, e in c["organs"].items():
        if e is None:
            lines.append(f"{o[:22]:<22}" + "".join(f"{'-':>9}" for _ in counts) + f"{'-':>9}{'-':>9}")
            continue
        lines.append(f"{o[:22]:<22}" + "".join(f"{e['dice'][str(n)]:>9.3f}" for n in counts) + f"{e['noc85']:>9.1f}{e['noc90']:>9.1f}")
    lines.append(f"NoC: clicks to reach the Dice (a case that never does counts as {max(counts)}); Dice on the model grid")
    return "\n".join(lines)


def write_reports(report: Mapping[str, Any], out_prefix: str | Path) -> tuple[Path, Path]:
    """Write ``<prefix>.csv`` and ``<prefix>.json`` atomically."""
    prefix = Path(out_prefix)
    csv_path = prefix.with_name(prefix.name + ".csv")
    json_path = prefix.with_name(prefix.name + ".json")
    cols = ["case"] + [f"{o}/{m}" for o in report["organs"] for m in ("dice", "hd95_mm")]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in report["cases"]:
        w.writerow(r)
    w.writerow({"case": "mean", **{k: v for k, v in report["mean"].items() if k in cols}})
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return csv_path, json_path


def format_table(report: Mapping[str, Any]) -> str:
    organs = report["organs"]
    head = f"{'case':<20}" + "".join(f"{o[:14]:>16}" for o in organs)
    lines = [head, f"{'':<20}" + "".join(f"{'Dice / HD95mm':>16}" for _ in organs)]

    def cell(d: Any, h: Any) -> str:
        ds = "-" if d is None else f"{d:.3f}"
        hs = "-" if h is None else f"{h:.1f}"
        return f"{ds + ' / ' + hs:>16}"

    for r in report["cases"]:
        lines.append(f"{r['case'][:20]:<20}" + "".join(cell(r[f"{o}/dice"], r[f"{o}/hd95_mm"]) for o in organs))
    m = report["mean"]
    lines.append(f"{'mean':<20}" + "".join(cell(m[f"{o}/dice"], m[f"{o}/hd95_mm"]) for o in organs))
    lines.append(f"mean Dice over organs: {m['mean/dice']}")
    return "\n".join(lines)
