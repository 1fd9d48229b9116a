"""Clicks as network input: heatmaps on the model grid, click simulators, and Dice after N clicks.

A click is a voxel of the model grid and the class the user says it belongs to (its *channel*:
0 for background, an organ's label value otherwise).  :func:`click_heatmaps` turns clicks into
one Gaussian heatmap per class (DeepEdit's scheme: channel ``c`` holds the clicks that say
"this is class ``c``"; peak 1, overlapping clicks take the maximum).  Click positions live on the
model grid, in array axes, so the heatmap is built where the network looks: a click is mapped
from RAS to the grid through the grid image's own geometry, never by rescaling by shape.

Two simulators: :func:`next_click` (deterministic, for evaluation: the deepest voxel of the
largest error region of one organ) and :func:`sample_clicks` (random, for training: error
regions drawn by size, a random voxel in each one's interior).

:func:`click_curve` is ``repux evaluate --clicks``: per organ, the automatic result, then one
simulated click after another on that organ's errors, Dice after each, and NoC@85 / NoC@90 (the
clicks needed to reach that Dice).  It runs on the model grid and re-runs only the windows a
click's heatmap reaches (:class:`GuidedWindows`); the other windows' outputs are cached.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repux.errors import ConfigError

__all__ = ["GridClick", "GuidedWindows", "click_curve", "click_heatmaps", "guided_probabilities", "next_click", "noc", "sample_clicks", "window_reached"]

logger = logging.getLogger(__name__)

#: a click's heatmap reaches this many sigmas (beyond, it is below 0.012 and set to 0)
SUPPORT_SIGMAS = 3.0


@dataclass(frozen=True)
class GridClick:
    """One click on the model grid: ``index`` (array axes), ``channel`` (the class the voxel belongs to)."""

    index: tuple[int, int, int]
    channel: int

    def support(self, sigma_vox: Sequence[float], shape: Sequence[int]) -> tuple[slice, ...]:
        """The box of voxels its heatmap reaches (clipped to ``shape``)."""
        return tuple(
            slice(max(0, i - int(math.ceil(SUPPORT_SIGMAS * s))), min(int(n), i + int(math.ceil(SUPPORT_SIGMAS * s)) + 1))
            for i, s, n in zip(self.index, sigma_vox, shape)
        )


def sigma_voxels(sigma_mm: float, spacing: Sequence[float]) -> tuple[float, float, float]:
    """A heatmap sigma in mm as voxels along each grid axis."""
    return tuple(max(float(sigma_mm) / float(s), 0.5) for s in spacing)  # type: ignore[return-value]


def click_heatmaps(
    shape: Sequence[int], clicks: Sequence[GridClick], channels: int, sigma_vox: Sequence[float], offset: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """``(channels, *shape)`` float32 heatmaps of ``clicks`` (indices relative to ``offset``: the array's first voxel)."""
    heat = np.zeros((channels, *(int(s) for s in shape)), np.float32)
    for c in clicks:
        if not 0 <= c.channel < channels:
            raise ConfigError(f"click channel {c.channel} is outside 0..{channels - 1}.")
        local = [int(i) - int(o) for i, o in zip(c.index, offset)]
        box = GridClick(tuple(local), c.channel).support(sigma_vox, shape)  # type: ignore[arg-type]
        if any(b.stop <= b.start for b in box):
            continue
        axes = [np.exp(-0.5 * ((np.arange(b.start, b.stop) - i) / s) ** 2).astype(np.float32) for b, i, s in zip(box, local, sigma_vox)]
        g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        region = heat[(c.channel, *box)]
        np.maximum(region, g, out=region)
    return heat


def window_reached(box: Sequence[slice], start: Sequence[int], roi: Sequence[int]) -> bool:
    """Whether a click's support ``box`` (see :meth:`GridClick.support`) overlaps the window ``[start, start + roi)``."""
    return all(b.start < int(s) + int(r) and b.stop > int(s) for b, s, r in zip(box, start, roi))


def guided_probabilities(segmenter: Any, xi: Any, clicks: Sequence[GridClick], channels: int, sigma_vox: Sequence[float], offset: Sequence[int]) -> Any:
    """Class probabilities ``(C, *window)`` (float32, CPU) of one window ``xi`` ``(1, C_image, *window)`` of the network
    input with the heatmaps of ``clicks`` (indices relative to ``offset``, the window's first voxel) as guidance."""
    import torch

    heat = click_heatmaps(xi.shape[2:], clicks, channels, sigma_vox, offset=offset)
    with torch.inference_mode():
        return segmenter._probabilities(torch.cat([xi, torch.from_numpy(heat)[None]], 1).to(segmenter.device)).to("cpu", torch.float32)[0]


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, sizes


def _deepest(component: np.ndarray) -> tuple[int, int, int]:
    """The voxel of a binary mask farthest from its border (the first such voxel in C order: deterministic)."""
    from scipy import ndimage

    idx = np.argwhere(component)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(np.pad(component[box], 1))[1:-1, 1:-1, 1:-1]
    k = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(a + b) for a, b in zip(lo, k))  # type: ignore[return-value]


def next_click(pred: np.ndarray, truth: np.ndarray, value: int) -> GridClick | None:
    """The deterministic next click for organ ``value``: the deepest voxel of its largest error region.

    An error region is a connected part of ``(pred == value) != (truth == value)``; the click says what the voxel
    truly is (``value`` where the organ was missed, the reference's class where it leaked).  None: no error left.
    """
    err = (pred == value) != (truth == value)
    if not err.any():
        return None
    lab, sizes = _components(err)
    index = _deepest(lab == int(np.argmax(sizes)))
    return GridClick(index, int(truth[index]))


def sample_clicks(pred: np.ndarray, truth: np.ndarray, n: int, rng: np.random.Generator) -> list[GridClick]:
    """Up to ``n`` random training clicks on the errors of ``pred`` (all classes): regions drawn by size, without
    replacement, a random voxel of each one's inner half (distance to its border at least half its maximum)."""
    from scipy import ndimage

    err = pred != truth
    if n < 1 or not err.any():
        return []
    lab, sizes = _components(err)
    ids = np.nonzero(sizes)[0]
    p = sizes[ids] / sizes[ids].sum()
    chosen = rng.choice(ids, size=min(n, len(ids)), replace=False, p=p)
    clicks = []
    for cid in chosen:
        comp = lab == cid
        idx = np.argwhere(comp)
        lo, hi = idx.min(0), idx.max(0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        dist = ndimage.distance_transform_edt(np.pad(comp[box], 1))[1:-1, 1:-1, 1:-1]
        inner = np.argwhere(dist >= 0.5 * dist.max())
        k = inner[int(rng.integers(len(inner)))]
        index = tuple(int(a + b) for a, b in zip(lo, k))
        clicks.append(GridClick(index, int(truth[index])))  # type: ignore[arg-type]
    return clicks


class GuidedWindows:
    """Sliding-window prediction with click heatmaps that re-runs only the windows a click reaches.

    Args:
        segmenter: a :class:`~repux.inference.segmenter.Segmenter` of a guidance model.
        x: the network input on the (cropped) model grid, ``(1, C_image, X, Y, Z)``.
        spacing: the model grid spacing (mm), for the heatmap sigma.

    Windows, padding and Gaussian blending are those of the full pass (``window_layout``, ``importance_map``), so with
    no clicks the labels equal Apply's on the same crop.
    """

    def __init__(self, segmenter: Any, x: Any, spacing: Sequence[float]) -> None:
        import torch

        from repux.inference.segmenter import importance_map, window_layout

        if segmenter.guidance is None:
            raise ConfigError("this model has no click-guidance channels; train one with repux finetune --interactive.")
        self.seg = segmenter
        self.channels = segmenter.guidance.channels
        self.sigma = sigma_voxels(segmenter.guidance.sigma_mm, spacing)
        roi = [int(r) for r in segmenter.settings.roi_size]
        self.shape = tuple(int(s) for s in x.shape[2:])
        pad, self.slices = window_layout(self.shape, roi, segmenter.settings.overlap)
        self.pad_lo = np.array([pad[4], pad[2], pad[0]])
        self.x = torch.nn.functional.pad(x, pad, mode="constant", value=0.0) if any(pad) else x
        self.roi = np.array(roi)
        self.weight = importance_map(roi, segmenter.settings.mode, "cpu")
        self._cache: dict[int, tuple[tuple[GridClick, ...], Any]] = {}
        self.windows_run = 0

    def _reaching(self, clicks: Sequence[GridClick], i: int) -> tuple[GridClick, ...]:
        lo = np.array([s.start for s in self.slices[i]])
        out = []
        for c in clicks:
            box = GridClick(tuple(int(v) for v in np.array(c.index) + self.pad_lo), c.channel).support(self.sigma, self.x.shape[2:])  # type: ignore[arg-type]
            if window_reached(box, lo, self.roi):
                out.append(c)
        return tuple(out)

    def labels(self, clicks: Sequence[GridClick] = ()) -> np.ndarray:
        """Labels ``(X, Y, Z)`` uint8 on the crop with these clicks (indices on the crop)."""
        import torch

        acc = None
        for i, sl in enumerate(self.slices):
            reach = self._reaching(clicks, i)
            cached = self._cache.get(i)
            if cached is None or cached[0] != reach:
                xi = self.x[(slice(None), slice(None), *sl)]
                lo = np.array([s.start for s in sl]) - self.pad_lo
                probs = guided_probabilities(self.seg, xi, reach, self.channels, self.sigma, lo)
                self._cache[i] = cached = (reach, probs)
                self.windows_run += 1
            probs = cached[1]
            if acc is None:
                acc = torch.zeros((probs.shape[0], *self.x.shape[2:]), dtype=torch.float32)
            acc[(slice(None), *sl)] += probs * self.weight[None]  # argmax of the weighted sum = argmax of the blend
        assert acc is not None
        lab = acc.argmax(0).numpy().astype(np.uint8)
        crop = tuple(slice(int(p), int(p) + n) for p, n in zip(self.pad_lo, self.shape))
        return lab[crop]


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def noc(curve: Sequence[float | None], target: float) -> int | None:
    """Clicks needed to reach Dice ``target`` (index into ``curve``, one entry per click count 0, 1, 2...); None: never."""
    for n, d in enumerate(curve):
        if d is not None and d >= target:
            return n
    return None


def click_curve(segmenter: Any, image: Any, reference: Any, organs: Sequence[tuple[int, int]], max_clicks: int) -> dict[str, Any]:
    """Dice per organ after 0..``max_clicks`` simulated clicks (model grid), with NoC@85 / NoC@90.

    Args:
        segmenter: a Segmenter of a guidance model.
        image: the CT (SimpleITK image).
        reference: its reference label map (SimpleITK image on any grid; resampled to the model grid, nearest).
        organs: ``(model label value, reference label value)`` pairs.
        max_clicks: clicks per organ.

    Returns:
        ``{organ value: {"dice": [d0, d1, ...], "clicks": [[i, j, k, channel], ...]}}``, and ``"seconds"``.
    """
    from repux.inference.preprocess import label_to_model_grid

    t0 = time.perf_counter()
    prepared = segmenter.prepare(image)
    ref_grid = label_to_model_grid(reference, prepared.grid_image)[prepared.crop]
    windows = GuidedWindows(segmenter, prepared.x, segmenter.preprocessing.spacing)
    auto = windows.labels()
    truth = np.zeros(ref_grid.shape, np.uint8)  # the reference in the model's label values (a click's channel)
    for value, ref_value in organs:
        truth[ref_grid == ref_value] = value
    out: dict[Any, Any] = {}
    for value, _ in organs:
        truth_mask = truth == value
        pred = auto
        clicks: list[GridClick] = []
        curve = [dice(pred == value, truth_mask)]
        for _ in range(max_clicks):
            c = next_click(pred, truth, value)
            if c is None:
                curve.append(curve[-1])
                continue
            clicks.append(c)
            pred = windows.labels(clicks)
            curve.append(dice(pred == value, truth_mask))
        out[value] = {"dice": [None if d is None else round(d, 4) for d in curve], "clicks": [[*c.index, c.channel] for c in clicks]}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["windows_run"] = windows.windows_run
    return out
