"""``repux demo``: the main job on a built-in default, no download.

Generates a synthetic abdominal CT phantom (:mod:`repux.data.phantom`),
segments it with the built-in model, writes the CT, the segmentation
(``.seg.nrrd`` for 3D Slicer and a ``.nii.gz`` label map), a PNG overlay
(axial, coronal, sagittal) and a JSON summary, and scores the result against
the phantom's known ground truth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.io.images import atomic_path, write_image, write_segmentation_nrrd
from repux.labels import LabelSet
from repux.progress import CancelToken, ProgressCallback, ProgressEvent

__all__ = ["overlay_png", "run_demo"]

logger = logging.getLogger(__name__)

WINDOW = (-160.0, 240.0)  # abdomen W400/L40


def _to_display(image: sitk.Image, interpolator: int) -> sitk.Image:
    """Axis-aligned LPS grid with isotropic pixels, for radiological display."""
    img = sitk.DICOMOrient(image, "LPS")
    sp = min(img.GetSpacing())
    size = [int(round(n * s / sp)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    return sitk.Resample(img, size, sitk.Transform(), interpolator, img.GetOrigin(), (sp, sp, sp), img.GetDirection(), 0, img.GetPixelID())


def overlay_png(
    ct: sitk.Image,
    labels: sitk.Image,
    label_set: LabelSet,
    path: str | Path,
    title: str = "",
    reference: sitk.Image | None = None,
    row_names: tuple[str, str] = ("RepUX", "ground truth"),
) -> Path:
    """Write a PNG with axial, coronal and sagittal slices through the organs' centre, labels overlaid.

    With ``reference`` a second row shows the reference labels for comparison (rows named ``row_names``).
    Display is radiological: patient right on the image left, anterior up (axial).
    """
    from PIL import Image, ImageDraw

    ct_d = sitk.GetArrayFromImage(_to_display(sitk.Cast(ct, sitk.sitkFloat32), sitk.sitkLinear))  # (z, y, x), x -> L, y -> P
    rows_src = [labels] + ([reference] if reference is not None else [])
    lab_ds = [sitk.GetArrayFromImage(_to_display(sitk.Cast(s, sitk.sitkUInt8), sitk.sitkNearestNeighbor)) for s in rows_src]
    fg = np.argwhere(lab_ds[-1] > 0)
    cz, cy, cx = (fg.mean(0).astype(int) if len(fg) else np.array(ct_d.shape) // 2).tolist()
    lo, hi = WINDOW
    colors = np.zeros((256, 3), np.float32)
    for lab in label_set:
        colors[lab.value % 256] = lab.color

    def panel(ct2: np.ndarray, lab2: np.ndarray) -> Image.Image:
        g = np.clip((ct2 - lo) / (hi - lo), 0, 1)[..., None] * 255.0
        rgb = np.repeat(g, 3, axis=2)
        m = lab2 > 0
        rgb[m] = 0.55 * rgb[m] + 0.45 * colors[lab2[m]]
        return Image.fromarray(rgb.astype(np.uint8))

    views = [
        lambda a: a[cz],  # axial: rows P (down), cols L (right) -> radiological
        lambda a: a[:, cy, :][::-1],  # coronal: superior up
        lambda a: a[:, :, cx][::-1],  # sagittal: superior up, anterior left
    ]
    rows = [[panel(v(ct_d), v(lab)) for v in views] for lab in lab_ds]
    h = max(p.height for r in rows for p in r)
    scale = 256 / h
    rows = [[p.resize((max(1, int(p.width * scale)), 256), Image.BILINEAR) for p in r] for r in rows]
    width = sum(p.width for p in rows[0]) + 10 * (len(rows[0]) + 1)
    legend_h = 22 * ((len(label_set) + 3) // 4) + 10
    canvas = Image.new("RGB", (width, 30 + len(rows) * (256 + 10) + legend_h), (20, 20, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), title, fill=(235, 235, 235))
    y = 30
    for i, r in enumerate(rows):
        x = 10
        for p in r:
            canvas.paste(p, (x, y))
            x += p.width + 10
        if reference is not None:
            draw.text((14, y + 4), row_names[min(i, 1)], fill=(255, 255, 0))
        y += 266
    for i, lab in enumerate(label_set):
        lx, ly = 10 + (i % 4) * (width // 4), y + 4 + (i // 4) * 22
        draw.rectangle([lx, ly + 2, lx + 14, ly + 16], fill=tuple(int(c) for c in lab.color))
        draw.text((lx + 20, ly + 3), lab.name, fill=(235, 235, 235))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _phantom_lut(label_set: Any) -> np.ndarray:
    from repux.data.phantom import _structure_lut

    return _structure_lut(label_set)


def run_demo(
    out: Path,
    *,
    seed: int = 7,
    segmenter_factory: Callable[[str | None], Any],
    model: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Generate a phantom, segment it, write outputs into ``out``; return a report with ``text``."""
    from repux.data.phantom import generate_phantom
    from repux.models.store import DEFAULT_MODEL

    if progress:
        progress(ProgressEvent("phantom", 0.0, f"generating phantom (seed {seed})", None))
    phantom = generate_phantom(seed)
    out.mkdir(parents=True, exist_ok=True)
    write_image(phantom.image, out / "phantom_ct.nii.gz")
    segmenter = segmenter_factory(model or DEFAULT_MODEL)

    def scaled(ev: ProgressEvent) -> None:
        if progress:
            progress(ProgressEvent(ev.stage, 0.05 + 0.85 * ev.fraction, ev.message, ev.eta_s, ev.extra))

    result = segmenter.segment(phantom.image, progress=scaled, cancel=cancel)
    truth = phantom.label_map(result.label_set)
    seg_path = write_segmentation_nrrd(result.labels, result.label_set, out / "phantom_segmentation.seg.nrrd")
    write_image(result.labels, out / "phantom_labels.nii.gz")
    write_image(truth, out / "phantom_truth.nii.gz")
    pred = sitk.GetArrayViewFromImage(result.labels)
    ref = sitk.GetArrayViewFromImage(truth)
    dice = {}
    drawn = set(int(v) for v in np.unique(_phantom_lut(result.label_set)) if v)  # organs the phantom labels (it draws no portal vein label, e.g.)
    for lab in result.label_set:
        if lab.value not in drawn:
            continue
        x, y = pred == lab.value, ref == lab.value
        dice[lab.name] = round(2 * float(np.logical_and(x, y).sum()) / max(1.0, float(x.sum() + y.sum())), 4) if (x.any() or y.any()) else None
    card = segmenter.card
    trained = bool(card and card.provenance.get("iterations"))
    name = card.id if card else "custom predictor"
    title = f"RepUX demo: phantom seed {seed}, model {name}" + ("" if trained else " (UNTRAINED weights)")
    png = overlay_png(phantom.image, result.labels, result.label_set, out / "phantom_overlay.png", title=title, reference=truth)
    summary = dict(result.summary)
    summary.update(
        {
            "phantom_seed": seed,
            "dice_vs_truth": dice,
            "model_trained": trained,
            "outputs": {"ct": str(out / "phantom_ct.nii.gz"), "segmentation": str(seg_path), "overlay": str(png)},
        }
    )
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    if progress:
        progress(ProgressEvent("done", 1.0, f"wrote {out}", 0.0, {"outputs": summary["outputs"], "dice_vs_truth": dice}))
    lines = [f"RepUX demo: segmented a synthetic abdominal CT phantom (seed {seed}, {phantom.image.GetSize()} voxels) with model '{name}'"]
    if not trained:
        lines.append("NOTE: this model's weights are UNTRAINED (random); the segmentation is meaningless. Train one with 'repux train'.")
    if card is not None and card.provenance.get("validation_mean_dice") is not None:
        p = card.provenance
        lines.append(
            f"the model was trained by '{p.get('source', 'repux train')}' ({p.get('iterations')} iterations, {p.get('dataset', {}).get('train_cases', '?')} cases; "
            f"validation mean Dice {p['validation_mean_dice']:.3f}); 'repux info {card.id}' shows the exact command"
        )
    lines.append("Dice against the phantom's ground truth: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in dice.items()))
    lines.append(f"time {sum(summary['timings_s'].values()):.1f} s on {summary['device']} ({summary['device_name']})")
    lines.append(
        f"outputs in {out}: phantom_ct.nii.gz, phantom_segmentation.seg.nrrd (open in 3D Slicer), phantom_labels.nii.gz, phantom_overlay.png, summary.json"
    )
    return {"text": "\n".join(lines), "summary": summary}
