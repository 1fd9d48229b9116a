"""Synthetic CT from real organ label maps (domain randomisation).

The label maps of abdominal CT data sets (BTCV, AMOS) label organs only: fat,
muscle, bone, bowel, lung and air are all background.  A network trained on
images rendered from such maps with a flat background would meet bone, fat
and gas for the first time on a real scan.  This generator therefore first
*splits the background* into synthetic tissues fitted around the real organs,
then renders an image from the combined "generation" map (as SynthSeg renders
labels it never segments):

* a body outline enclosing the organs, a subcutaneous fat shell and a muscle
  wall (:func:`_body`);
* a vertebral column dorsal to the aorta and inferior vena cava, with discs,
  spinal canal and posterior elements, back muscles and psoas (:func:`_spine`);
* ribs around the upper abdomen, lung bases above the organ domes, a heart
  (:func:`_thorax`);
* the pelvis below the kidneys: iliac wings, femoral heads, bladder
  (:func:`_pelvis`);
* bowel loops with walls, fluid, stool and gas pockets in the unlabelled
  abdominal space, a colon frame, perirenal fat (:func:`_bowel`);
* random smooth blobs with their own intensities (:func:`_blobs`).

Intensities are drawn per example, either from CT priors (HU per tissue,
widened for the native, portal-venous and arterial phases, :data:`PHASES`) or
fully at random (``mode="random"``, SynthSeg's scheme); then partial-volume
blur, a smooth bias, correlated noise and a random slice thickness.  A random
affine (rotation, scaling) moves the anatomy first.  Left/right mirroring is
off by default (a mirrored abdomen does not occur in practice); when enabled
it swaps the sided labels (:func:`swap_sides`).

Everything is seeded: ``render_example(label_map, labels, seed)`` gives the
same image for the same seed.  Work happens in physical LPS millimetres on an
axis-aligned grid of the requested spacing, so any input orientation works.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.errors import ConfigError
from repux.labels import BTCV, LabelSet, normalize_name
from repux.progress import CancelToken, ProgressCallback, ProgressTracker

__all__ = [
    "BTCV",
    "MODES",
    "PHASES",
    "SynthConfig",
    "SynthExample",
    "find_label_maps",
    "render_example",
    "swap_sides",
    "write_synth_dataset",
]

logger = logging.getLogger(__name__)

#: Intensity modes: ``ct`` (CT priors, phases), ``random`` (every tissue a random HU), ``mixed`` (``ct``, 10 % ``random``).
MODES = ("ct", "random", "mixed")

# generation labels of the synthetic background tissues (organs keep 1..N < 64)
FAT, MUSCLE, BONE, CORTEX, DISC, CSF, LUNG, HEART, BOWEL_WALL, FLUID, GAS, STOOL = range(64, 76)
BLADDER, AIR, TABLE, MARROW, PERIRENAL, MESENTERY, DIAPHRAGM, VESSEL, MEDULLA, LIVER_VESSEL = range(76, 86)
BLOB0 = 96  # random blobs 96..103

#: HU priors ``(low, high)`` of the mean per tissue and phase; organs by name, tissues by generation label.
PHASES: dict[str, dict[Any, tuple[float, float]]] = {
    "native": {
        "liver": (40, 70), "spleen": (35, 55), "kidney": (20, 40), "pancreas": (-10, 50), "gallbladder": (-5, 25),
        "esophagus": (25, 50), "stomach": (10, 45), "blood": (30, 50), "adrenal gland": (10, 40), MEDULLA: (15, 35),
        LIVER_VESSEL: (25, 45), BOWEL_WALL: (25, 50),
    },
    "portal": {
        "liver": (85, 140), "spleen": (90, 140), "kidney": (140, 230), "pancreas": (70, 125), "gallbladder": (-5, 25),
        "esophagus": (50, 90), "stomach": (40, 100), "blood": (120, 200), "adrenal gland": (50, 95), MEDULLA: (110, 200),
        LIVER_VESSEL: (140, 210), BOWEL_WALL: (70, 130),
    },
    "arterial": {
        "liver": (55, 90), "spleen": (80, 150), "kidney": (180, 300), "pancreas": (90, 150), "gallbladder": (-5, 25),
        "esophagus": (40, 80), "stomach": (50, 110), "blood": (220, 400), "adrenal gland": (50, 100), MEDULLA: (60, 120),
        LIVER_VESSEL: (60, 120), BOWEL_WALL: (60, 120),
    },
}
#: tissues whose HU does not depend on the phase
_FIXED: dict[int, tuple[float, float]] = {
    FAT: (-120, -75), PERIRENAL: (-120, -70), MESENTERY: (-115, -60), MUSCLE: (35, 65), DIAPHRAGM: (30, 60),
    BONE: (120, 300), CORTEX: (350, 900), DISC: (60, 110), CSF: (0, 25), LUNG: (-900, -750), HEART: (30, 60),
    FLUID: (-5, 30), GAS: (-1000, -700), STOOL: (-150, 20), BLADDER: (-5, 25), AIR: (-1010, -990), TABLE: (-400, 200),
    MARROW: (80, 250), VESSEL: (30, 60),
}
_PHASE_WEIGHTS = {"native": 0.45, "portal": 0.40, "arterial": 0.15}
_BLOOD = ("aorta", "inferior vena cava", "portal vein and splenic vein")


@dataclass
class SynthConfig:
    """Settings of the generator (defaults: the recipe of the built-in model).

    Attributes:
        spacing: output voxel spacing in mm (x, y, z).
        mode: ``ct``, ``random`` or ``mixed`` (:data:`MODES`).
        background: split label 0 into synthetic tissues (False: one random intensity, the ablation).
        rotation_deg: maximum rotation about each axis.
        scale: maximum relative scaling per axis.
        mirror: probability of a left/right mirror (sided labels are swapped).
        margin_above_mm / margin_below_mm: field of view above the highest / below the lowest organ voxel.
        noise_hu: range of the noise standard deviation.
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    mode: str = "mixed"
    background: bool = True
    rotation_deg: float = 10.0
    scale: float = 0.12
    mirror: float = 0.0
    margin_above_mm: float = 70.0
    margin_below_mm: float = 190.0
    noise_hu: tuple[float, float] = (5.0, 35.0)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}.")
        sp = tuple(float(s) for s in self.spacing)
        if len(sp) != 3 or not all(0.5 <= s <= 10.0 for s in sp):
            raise ConfigError(f"spacing must be 3 values in 0.5..10 mm; got {self.spacing!r}.")
        self.spacing = sp  # type: ignore[assignment]
        if not 0.0 <= self.mirror <= 1.0:
            raise ConfigError(f"mirror must be a probability in [0, 1]; got {self.mirror!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class SynthExample:
    """One rendered example: ``image`` (int16 HU) and ``labels`` (uint8, the organs of the label set) on one grid."""

    image: sitk.Image
    labels: sitk.Image
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- helpers


def _smooth_noise(shape: Sequence[int], spacing: Sequence[float], scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth random field of about ``scale_mm`` correlation length (coarse noise, trilinear upsampling)."""
    import torch

    coarse = [max(2, int(math.ceil(n * s / scale_mm)) + 2) for n, s in zip(shape, spacing)]
    g = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    up = torch.nn.functional.interpolate(g, size=tuple(int(n) for n in shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    sd = float(up.std()) or 1.0
    return (up - up.mean()) / sd


def _edt(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance in mm of every voxel of ``mask`` to the nearest voxel outside it (0 outside), computed on the mask's bounding box."""
    from scipy.ndimage import distance_transform_edt

    out = np.zeros(mask.shape, np.float32)
    idx = np.argwhere(mask)
    if not len(idx):
        return out
    lo, hi = np.maximum(idx.min(0) - 1, 0), idx.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] = distance_transform_edt(mask[box], sampling=spacing_zyx)
    return out


def _dist_outside(mask: np.ndarray, spacing_zyx: Sequence[float], max_mm: float) -> np.ndarray:
    """Distance in mm to ``mask`` for voxels within ``max_mm`` of it (inf beyond; 0 inside)."""
    from scipy.ndimage import distance_transform_edt

    out = np.full(mask.shape, np.inf, np.float32)
    idx = np.argwhere(mask)
    if not len(idx):
        return out
    pad = np.ceil(max_mm / np.asarray(spacing_zyx)).astype(int) + 1
    lo, hi = np.maximum(idx.min(0) - pad, 0), idx.max(0) + pad + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] = distance_transform_edt(~mask[box], sampling=spacing_zyx)
    return out


def _inner(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` eroded by ``voxels`` (the part deeper than that below its surface)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=voxels) if voxels > 0 else mask


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _ellipsoid(X, Y, Z, c, r) -> np.ndarray:
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2


def _tube(X, Y, Z, points: np.ndarray, radius: float) -> np.ndarray:
    """Mask of voxels within ``radius`` mm of a polyline (``X``, ``Y``, ``Z``: broadcastable axis coordinates)."""
    out = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), bool)
    lo, hi = points.min(0) - radius, points.max(0) + radius
    sel = [np.nonzero((c.ravel() >= lo[i]) & (c.ravel() <= hi[i]))[0] for i, c in enumerate((X, Y, Z))]
    if any(not len(s) for s in sel):
        return out
    (x0, x1), (y0, y1), (z0, z1) = [(int(s[0]), int(s[-1]) + 1) for s in sel]
    x, y, z = X[..., x0:x1], Y[:, y0:y1, :], Z[z0:z1]
    sub = np.zeros((z1 - z0, y1 - y0, x1 - x0), bool)
    for a, b in zip(points[:-1], points[1:]):
        ab = b - a
        L2 = float(ab @ ab) or 1.0
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / L2, 0.0, 1.0)
        d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
        sub |= d2 <= radius**2
    out[z0:z1, y0:y1, x0:x1] = sub
    return out


def swap_sides(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Swap the values of every right/left pair of ``label_set`` (for a left/right mirrored image)."""
    lut = np.arange(256, dtype=np.uint8)
    names = {normalize_name(lab.name): lab.value for lab in label_set}
    for name, value in names.items():
        if name.startswith("right "):
            other = names.get("left " + name[len("right ") :])
            if other is not None:
                lut[value], lut[other] = other, value
    return lut[labels]


def _organ_values(label_set: LabelSet, *keys: str) -> list[int]:
    """Values of the labels whose normalised name contains one of ``keys``."""
    return [lab.value for lab in label_set if any(k in normalize_name(lab.name) for k in keys)]


# ---------------------------------------------------------------- the scene


class _Scene:
    """The canonical (LPS, axis-aligned) canvas of one example: organ labels ``O`` and generation labels ``T``."""

    def __init__(self, organs: np.ndarray, origin: np.ndarray, spacing: Sequence[float], label_set: LabelSet, rng: np.random.Generator) -> None:
        self.O = organs  # (z, y, x) uint8
        self.T = np.where(organs > 0, organs, 0).astype(np.uint8)
        self.origin = origin  # LPS mm of voxel (0, 0, 0), x y z
        self.sp = tuple(float(s) for s in spacing)  # x y z
        self.sp_zyx = self.sp[::-1]
        nz, ny, nx = organs.shape
        self.Z = (origin[2] + np.arange(nz) * self.sp[2])[:, None, None]
        self.Y = (origin[1] + np.arange(ny) * self.sp[1])[None, :, None]
        self.X = (origin[0] + np.arange(nx) * self.sp[0])[None, None, :]
        self.labels = label_set
        self.rng = rng
        self.free = organs == 0  # where background tissues may be painted

    def paint(self, mask: np.ndarray, value: int, over_organs: bool = False) -> None:
        m = mask if over_organs else (mask & self.free)
        self.T[m] = value

    def centroid(self, values: Sequence[int]) -> np.ndarray | None:
        idx = np.argwhere(np.isin(self.O, values))
        if not len(idx):
            return None
        z, y, x = idx.mean(0)
        return self.origin + np.array([x, y, z]) * np.array(self.sp)

    def slice_centres(self, values: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per axial slice: z (mm), x and y centre (mm) of ``values`` where present."""
        m = np.isin(self.O, values)
        zs, xs, ys = [], [], []
        for k in np.nonzero(m.any(axis=(1, 2)))[0]:
            yy, xx = np.nonzero(m[k])
            zs.append(float(self.Z[k, 0, 0]))
            xs.append(float(self.X[0, 0, 0] + xx.mean() * self.sp[0]))
            ys.append(float(self.Y[0, 0, 0] + yy.mean() * self.sp[1]))
        return np.array(zs), np.array(xs), np.array(ys)


def _line_fit(z: np.ndarray, v: np.ndarray, zq: np.ndarray, default: float) -> np.ndarray:
    """``v(z)`` at ``zq``: interpolated where known, linear extrapolation (clamped slope) beyond."""
    if len(z) < 2:
        return np.full_like(zq, default if not len(v) else float(v.mean()))
    order = np.argsort(z)
    z, v = z[order], v[order]
    slope, icpt = np.polyfit(z, v, 1)
    slope = float(np.clip(slope, -0.3, 0.3))
    inside = np.interp(zq, z, v)
    below = v[0] + slope * (zq - z[0])
    above = v[-1] + slope * (zq - z[-1])
    return np.where(zq < z[0], below, np.where(zq > z[-1], above, inside))


def _spine_axis(sc: _Scene) -> tuple[np.ndarray, np.ndarray, float]:
    """Per slice the centre (x, y) of the vertebral body, placed dorsal to the aorta and IVC; and its radius."""
    zq = sc.Z[:, 0, 0]
    aorta, ivc = _organ_values(sc.labels, "aorta"), _organ_values(sc.labels, "vena cava")
    za, xa, ya = sc.slice_centres(aorta) if aorta else (np.array([]),) * 3
    zi, xi, yi = sc.slice_centres(ivc) if ivc else (np.array([]),) * 3
    c = sc.centroid([v for v in range(1, 64)])
    cx, cy = (float(c[0]), float(c[1])) if c is not None else (0.0, 0.0)
    xa_q = _line_fit(za, xa, zq, cx + 10.0)
    ya_q = _line_fit(za, ya, zq, cy + 30.0)
    xi_q = _line_fit(zi, xi, zq, cx - 15.0) if len(zi) else xa_q - 25.0
    yi_q = _line_fit(zi, yi, zq, cy + 30.0) if len(zi) else ya_q
    r = _u(sc.rng, 15.0, 22.0)
    x = 0.5 * (xa_q + xi_q) + _u(sc.rng, -4, 4)
    y = np.maximum(ya_q, yi_q) + 10.0 + _u(sc.rng, 1.0, 6.0) + r
    return x, y, r


def _body(sc: _Scene, spine_y: np.ndarray, spine_r: float) -> tuple[np.ndarray, np.ndarray]:
    """Body outline, subcutaneous fat and muscle wall; returns (body mask, depth below the skin in mm)."""
    rng, O = sc.rng, sc.O > 0
    nz = O.shape[0]
    has = O.any(axis=(1, 2))
    ks = np.nonzero(has)[0]
    xmin = np.full(nz, np.nan)
    xmax, ymin = xmin.copy(), xmin.copy()
    for k in ks:
        yy, xx = np.nonzero(O[k])
        xmin[k], xmax[k] = sc.X[0, 0, xx.min()], sc.X[0, 0, xx.max()]
        ymin[k] = sc.Y[0, yy.min(), 0]
    zq = sc.Z[:, 0, 0]
    for arr in (xmin, xmax, ymin):  # nearest known value outside the organs' z range
        arr[:] = np.interp(zq, zq[ks], arr[ks])
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    w = max(1, int(60 / sc.sp[2]))
    xmin, xmax, ymin = minimum_filter1d(xmin, w), maximum_filter1d(xmax, w), minimum_filter1d(ymin, w)
    lateral = _u(rng, 25, 60)
    cx = np.convolve(np.pad(0.5 * (xmin + xmax), w), np.ones(2 * w + 1) / (2 * w + 1), "same")[w:-w] + _u(rng, -5, 5)
    half = 0.5 * (xmax - xmin)
    half = np.maximum(half, _u(rng, 0.8, 0.95) * half.max())  # the abdominal wall does not follow the organs' narrow ends
    ymin = np.minimum(ymin, ymin.min() + _u(rng, 10, 30))
    rx = half + lateral
    y_ant = ymin - _u(rng, 15, 50)
    y_post = spine_y + spine_r + _u(rng, 55, 85)
    z_low = zq[ks[0]]
    pelvis = np.clip((z_low - zq) / 80.0, 0.0, 1.0)  # hips widen below the organs
    rx = rx + pelvis * _u(rng, 10, 40)
    cy, ry = 0.5 * (y_ant + y_post), 0.5 * (y_post - y_ant)
    wob = 1.0 + 0.04 * _smooth_noise(O.shape, sc.sp_zyx, 80.0, rng)
    ex = _u(rng, 2.0, 3.0)
    dx = np.abs(sc.X - cx[:, None, None]) / rx[:, None, None]
    dy = np.abs(sc.Y - cy[:, None, None]) / ry[:, None, None]
    body = (dx**ex + dy**2.2) ** (1.0 / 2.2) <= wob
    from scipy.ndimage import binary_dilation

    body |= binary_dilation(O, iterations=max(1, int(round(12 / min(sc.sp)))))
    depth = _edt(body, sc.sp_zyx)
    fat_t = np.clip(_u(rng, 8, 35) * (1.0 + 0.4 * _smooth_noise(O.shape, sc.sp_zyx, 100.0, rng)), 3.0, 60.0)
    wall_t = _u(rng, 6, 15)
    sc.paint(body, MESENTERY)
    sc.paint(body & (depth <= fat_t), FAT)
    sc.paint(body & (depth > fat_t) & (depth <= fat_t + wall_t), MUSCLE)
    return body, depth - fat_t - wall_t


def _spine(sc: _Scene, sx: np.ndarray, sy: np.ndarray, r: float, body: np.ndarray) -> None:
    """Vertebral bodies with discs and cortex, canal, posterior elements, back muscles and psoas."""
    rng = sc.rng
    X, Y, Z = sc.X, sc.Y, sc.Z
    cx, cy = sx[:, None, None], sy[:, None, None]
    rxv = r * _u(rng, 1.05, 1.3)
    vb = ((X - cx) / rxv) ** 2 + ((Y - cy) / r) ** 2
    period, disc = _u(rng, 30, 38), _u(rng, 6, 11)
    phase = np.mod(Z - _u(rng, 0, period), period)
    canal_y = cy + r + _u(rng, 6, 10)
    canal = ((X - cx) / 9.0) ** 2 + ((Y - canal_y) / 8.0) ** 2 <= 1.0
    arch = ((X - cx) / 17.0) ** 2 + ((Y - canal_y) / 15.0) ** 2 <= 1.0
    spinous = (np.abs(X - cx) < _u(rng, 3, 6)) & (Y > canal_y) & (Y < canal_y + _u(rng, 28, 40))
    transverse = (np.abs(X - cx) < _u(rng, 30, 45)) & (np.abs(Y - canal_y + 4) < 5) & (phase > disc) & (phase < disc + 12)
    ex_off, ex_y = _u(rng, 25, 40), canal_y + _u(rng, 15, 25)
    erector = (((np.abs(X - cx) - ex_off) / _u(rng, 18, 28)) ** 2 + ((Y - ex_y) / _u(rng, 18, 26)) ** 2 <= 1.0) & body
    sc.paint(erector, MUSCLE)
    z_low = float(np.min(Z[np.isin(sc.O, _organ_values(sc.labels, "kidney")).any(axis=(1, 2))], initial=float(Z.max())))
    z_high = z_low + _u(rng, 90, 140)  # the psoas starts near the upper kidney poles and thickens downwards
    grow = np.clip((z_high - Z) / 150.0, 0.0, 1.0)
    ps_r = 6.0 + grow * _u(rng, 12, 22)
    psoas = (((np.abs(X - cx) - rxv - ps_r * 0.8) / ps_r) ** 2 + ((Y - cy + 4) / (ps_r * 0.9)) ** 2 <= 1.0) & (Z < z_high)
    sc.paint(psoas & body, MUSCLE)
    bone = (vb <= 1.0) | (arch & ~canal) | spinous | transverse
    sc.paint(bone, BONE)
    sc.paint((vb <= 1.0) & (vb > (1.0 - 3.0 / r) ** 2), CORTEX)
    sc.paint((vb <= 1.0) & (phase < disc), DISC)
    sc.paint(canal, CSF)


def _thorax(sc: _Scene, body: np.ndarray, inner: np.ndarray, sx: np.ndarray) -> None:
    """Lung bases above the organ domes, a heart, the diaphragm and ribs around the upper abdomen."""
    rng, O = sc.rng, sc.O > 0
    nz = O.shape[0]
    top = np.where(O.any(axis=0), nz - 1 - np.argmax(O[::-1], axis=0), -1).astype(np.float32)  # highest organ voxel per (y, x)
    from scipy.ndimage import grey_dilation

    dome = grey_dilation(top, size=(int(50 / sc.sp[1]) | 1, int(50 / sc.sp[0]) | 1))
    dome[dome < 0] = float(np.max(top))
    zdome = sc.origin[2] + dome * sc.sp[2] + _u(rng, 4, 12)
    cavity = body & (inner > 0)
    lung = cavity & (sc.Z > zdome[None]) & (sc.Z > np.percentile(zdome, 30) - 20)
    sc.paint(cavity & (sc.Z > zdome[None] - 8) & ~lung, DIAPHRAGM)
    liver = _organ_values(sc.labels, "liver")
    c = sc.centroid(liver) if liver else None
    top_z = float(sc.origin[2] + np.max(top) * sc.sp[2])
    if c is not None:
        hc = np.array([c[0] + _u(rng, 60, 100), c[1] - _u(rng, 0, 25), top_z + _u(rng, 25, 50)])
        heart = _ellipsoid(sc.X, sc.Y, sc.Z, hc, (_u(rng, 45, 65), _u(rng, 40, 55), _u(rng, 40, 60))) <= 1.0
        sc.paint(heart & lung, HEART)
        lung &= ~heart
    sc.paint(lung, LUNG)
    vessels = lung & (np.abs(_smooth_noise(O.shape, sc.sp_zyx, 15.0, rng)) < 0.05)
    sc.paint(vessels, VESSEL)
    # ribs: a band under the wall, periodic along z with a downward slope towards the front
    kidney = _organ_values(sc.labels, "kidney")
    zk = sc.slice_centres(kidney)[0] if kidney else np.array([top_z - 150.0])
    z_low = float(zk.mean()) if len(zk) else top_z - 150.0
    ang = np.arctan2(sc.X - sx[:, None, None], -(sc.Y - sc.centroid(list(range(1, 64)))[1]))  # 0 at the front
    period, width = _u(rng, 24, 32), _u(rng, 8, 12)
    slope = _u(rng, 15, 30)
    phase = np.mod(sc.Z + slope * np.abs(ang) - _u(rng, 0, period), period)
    band = (inner > -_u(rng, 1, 4)) & (inner < _u(rng, 6, 10)) & body
    ribs = band & (phase < width) & (np.abs(ang) > 0.5) & (sc.Z > z_low - 30.0 + 20.0 * np.cos(ang))
    sc.paint(ribs, BONE)
    sc.paint(ribs & (phase < 2.5), CORTEX)


def _pelvis(sc: _Scene, sx: np.ndarray, sy: np.ndarray, r: float, body: np.ndarray) -> None:
    """Iliac wings, sacrum widening, femoral heads with necks, the bladder and gluteal muscles below the kidneys."""
    rng = sc.rng
    X, Y, Z = sc.X, sc.Y, sc.Z
    kidney = _organ_values(sc.labels, "kidney")
    zk = sc.slice_centres(kidney)[0] if kidney else np.array([float(Z.max())])
    z_ic = (float(zk.min()) if len(zk) else float(Z.min()) + 150) - _u(rng, 10, 45)  # iliac crest
    k = int(np.clip(np.searchsorted(Z[:, 0, 0], z_ic), 0, len(sx) - 1))
    cx, cy = float(sx[k]), float(sy[k])
    for side in (-1.0, 1.0):
        wc = np.array([cx + side * _u(rng, 65, 90), cy - _u(rng, 0, 15), z_ic - _u(rng, 45, 60)])
        wr = (_u(rng, 20, 30), _u(rng, 45, 60), _u(rng, 45, 60))
        e = _ellipsoid(X, Y, Z, wc, wr)
        wing = (e <= 1.0) & (e >= (1.0 - 7.0 / wr[0]) ** 2) & (side * (X - wc[0]) > -wr[0] * 0.3)
        sc.paint(wing & body, BONE)
        glut = (_ellipsoid(X, Y, Z, wc + np.array([side * 10, 35, -20]), (40, 35, 50)) <= 1.0) & body
        sc.paint(glut, MUSCLE)
        fc = np.array([cx + side * _u(rng, 80, 100), cy - _u(rng, 35, 60), z_ic - _u(rng, 120, 160)])
        fr = _u(rng, 20, 27)
        head = _ellipsoid(X, Y, Z, fc, (fr, fr, fr)) <= 1.0
        neck = _tube(X, Y, Z, np.array([fc, fc + np.array([side * 45, 5, -30]), fc + np.array([side * 55, 5, -150])]), _u(rng, 12, 17))
        sc.paint((head | neck) & body, MARROW)
        shell = (head & (_ellipsoid(X, Y, Z, fc, (fr - 4, fr - 4, fr - 4)) > 1.0)) | (neck & ~_tube(X, Y, Z, np.array([fc, fc + np.array([side * 45, 5, -30])]), 9.0))
        sc.paint(shell & body, CORTEX)
    sacrum = (_ellipsoid(X, Y, Z, np.array([cx, cy + 20, z_ic - 60]), (_u(rng, 35, 50), 18, 55)) <= 1.0) & body
    sc.paint(sacrum, BONE)
    bc = np.array([cx + _u(rng, -10, 10), cy - _u(rng, 70, 100), z_ic - _u(rng, 110, 150)])
    bladder = _ellipsoid(X, Y, Z, bc, (_u(rng, 25, 55), _u(rng, 20, 45), _u(rng, 20, 45))) <= 1.0
    sc.paint(bladder & body, BLADDER)
    sc.paint(bladder & body & (_ellipsoid(X, Y, Z, bc, (60, 50, 50)) > 0.6), MUSCLE)


def _bowel(sc: _Scene, body: np.ndarray, inner: np.ndarray) -> None:
    """Perirenal fat, then bowel loops (wall, fluid, stool, gas) and a colon frame in the free abdominal space."""
    rng = sc.rng
    kid = np.isin(sc.O, _organ_values(sc.labels, "kidney", "adrenal"))
    if kid.any():
        d = _dist_outside(kid, sc.sp_zyx, 15.0)
        sc.paint((d > 0) & (d < _u(rng, 5, 15)) & body, PERIRENAL)
    space = body & (inner > 0) & np.isin(sc.T, (MESENTERY,))
    if not space.any():
        return
    n1 = _smooth_noise(sc.O.shape, sc.sp_zyx, _u(rng, 18, 30), rng)
    lumen = space & (n1 > _u(rng, -0.2, 0.5))
    core = _inner(lumen, 1)
    content = _smooth_noise(sc.O.shape, sc.sp_zyx, 40.0, rng)
    gas_t, stool_t = _u(rng, 0.5, 1.5), _u(rng, -0.5, 0.3)
    sc.T[lumen] = MESENTERY  # reset, then fill
    sc.T[lumen & (content <= stool_t)] = FLUID
    sc.T[lumen & (content > stool_t)] = STOOL
    sc.T[core & (content > gas_t)] = GAS
    sc.T[lumen & ~core] = BOWEL_WALL
    # the colon frame: ascending (patient right, -x), transverse, descending (+x), with stool and gas
    c = sc.centroid(list(range(1, 64)))
    zr = sc.Z[:, 0, 0]
    zz = np.nonzero(space.any(axis=(1, 2)))[0]
    if c is None or not len(zz):
        return
    z0, z1 = float(zr[zz[0]]) + 40.0, float(zr[zz[-1]]) - 40.0
    wx = _u(rng, 80, 120)
    yant = c[1] - _u(rng, 20, 50)
    pts = np.array([[c[0] - wx, c[1], z0], [c[0] - wx, c[1] - 10, z1 - 30], [c[0], yant, z1 - _u(rng, 20, 60)], [c[0] + wx, c[1], z1], [c[0] + wx, c[1] + 10, z0]])
    pts += rng.normal(0, 8, pts.shape)
    colon = _tube(sc.X, sc.Y, sc.Z, pts, _u(rng, 18, 28)) & space
    ccore = _inner(colon, 1)
    sc.T[colon] = STOOL
    sc.T[ccore & (content > _u(rng, -0.3, 0.8))] = GAS
    sc.T[colon & ~ccore] = BOWEL_WALL


def _blobs(sc: _Scene, body: np.ndarray, n: int) -> None:
    """SynthSeg-style extra labels: smooth random blobs with their own intensity in the free space."""
    rng = sc.rng
    idx = np.argwhere(body & sc.free)
    if not len(idx) or n <= 0:
        return
    for i in range(n):
        z, y, x = idx[rng.integers(len(idx))]
        c = sc.origin + np.array([x, y, z]) * np.array(sc.sp)
        rad = rng.uniform(8, 30, 3)
        e = _ellipsoid(sc.X, sc.Y, sc.Z, c, rad)
        sc.paint((e <= 1.0) & body, BLOB0 + (i % 8))


def _organ_detail(sc: _Scene) -> None:
    """Structures inside organs that keep their organ label: renal medulla, liver vessels, stomach gas and fluid."""
    rng = sc.rng
    kid = np.isin(sc.O, _organ_values(sc.labels, "kidney"))
    if kid.any():
        d = _edt(kid, sc.sp_zyx)
        sc.T[kid & (d > _u(rng, 4, 7))] = MEDULLA
    liver = np.isin(sc.O, _organ_values(sc.labels, "liver"))
    if liver.any():
        v = np.abs(_smooth_noise(sc.O.shape, sc.sp_zyx, _u(rng, 12, 25), rng)) < _u(rng, 0.03, 0.09)
        sc.T[liver & v] = LIVER_VESSEL
    st = np.isin(sc.O, _organ_values(sc.labels, "stomach"))
    if st.any():
        d = _edt(st, sc.sp_zyx)
        lumen = st & (d > _u(rng, 3, 6))
        sc.T[lumen] = FLUID if rng.random() < 0.5 else STOOL
        if rng.random() < 0.6:  # an air-fluid level: gas in the anterior (non-dependent) part
            ys = sc.Y[0, :, 0]
            yy = np.nonzero(lumen.any(axis=(0, 2)))[0]
            if len(yy):
                cut = ys[yy[0]] + _u(rng, 0.1, 0.5) * (ys[yy[-1]] - ys[yy[0]])
                sc.T[lumen & (sc.Y < cut)] = GAS


# ---------------------------------------------------------------- intensities


def _intensity_table(label_set: LabelSet, mode: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Mean and texture SD per generation label (LUT of 256 entries) and the phase or mode drawn."""
    mean = np.zeros(256, np.float32)
    sd = np.zeros(256, np.float32)
    if mode == "mixed":
        mode = "random" if rng.random() < 0.1 else "ct"
    if mode == "random":
        mean[:] = rng.uniform(-200, 350, 256)
        mean[AIR] = rng.uniform(-1010, 350)
        sd[:] = rng.uniform(2, 25, 256)
        return mean, sd, "random"
    phase = str(rng.choice(list(_PHASE_WEIGHTS), p=list(_PHASE_WEIGHTS.values())))
    prior = PHASES[phase]
    for lab in label_set:
        name = normalize_name(lab.name)
        key = "blood" if name in _BLOOD else next((k for k in prior if isinstance(k, str) and k in name), None)
        lo, hi = prior.get(key, (20.0, 60.0)) if key else (20.0, 60.0)
        mean[lab.value] = rng.uniform(lo, hi)
        sd[lab.value] = rng.uniform(4, 14)
    for k, (lo, hi) in list(_FIXED.items()) + [(k, v) for k, v in prior.items() if isinstance(k, int)]:
        mean[k] = rng.uniform(lo, hi)
        sd[k] = rng.uniform(4, 20)
    sd[GAS], sd[LUNG], sd[CORTEX], sd[STOOL] = rng.uniform(10, 40), rng.uniform(15, 50), rng.uniform(40, 150), rng.uniform(20, 60)
    for i in range(8):
        mean[BLOB0 + i], sd[BLOB0 + i] = rng.uniform(-120, 200), rng.uniform(3, 20)
    return mean, sd, phase


def _render_intensities(sc: _Scene, cfg: SynthConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """HU image of the generation map: per-tissue means and textures, blur, slice thickness, bias and noise."""
    from scipy.ndimage import gaussian_filter

    rng = sc.rng
    mean, sd, phase = _intensity_table(sc.labels, cfg.mode, rng)
    tex = _smooth_noise(sc.T.shape, sc.sp_zyx, _u(rng, 4, 12), rng)
    img = mean[sc.T] + sd[sc.T] * tex
    thick = _u(rng, 1.0, 6.0) if rng.random() < 0.6 else 0.0
    sig_xy = _u(rng, 0.3, 1.0)
    sig_z = max(sig_xy, thick / 2.355 / sc.sp[2])
    img = gaussian_filter(img, sigma=(sig_z, sig_xy, sig_xy))
    img += _u(rng, 0, 20) * _smooth_noise(img.shape, sc.sp_zyx, 150.0, rng)  # beam hardening / bias
    noise = _u(rng, *cfg.noise_hu)
    white = rng.standard_normal(img.shape).astype(np.float32)
    img += noise * gaussian_filter(white, _u(rng, 0.3, 0.8)) * 1.5
    img = img * _u(rng, 0.95, 1.05) + _u(rng, -15, 15)
    return np.clip(img, -1024, 3071).astype(np.int16), {"phase": phase, "noise_hu": round(noise, 1), "slice_thickness_mm": round(thick, 1)}


# ---------------------------------------------------------------- the example


def _canvas(label_map: sitk.Image, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resample the label map (nearest) with a random affine onto an axis-aligned LPS grid around the organs."""
    arr = sitk.GetArrayViewFromImage(label_map)
    idx = np.argwhere(arr > 0)
    if not len(idx):
        raise ConfigError("label map has no organ voxel (all background).")
    lo, hi = idx.min(0)[::-1], idx.max(0)[::-1]  # x y z index
    pts = [label_map.TransformContinuousIndexToPhysicalPoint([float(c) for c in (a, b, cc)]) for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for cc in (lo[2], hi[2])]
    pts = np.array(pts)
    pmin, pmax = pts.min(0), pts.max(0)
    centre = 0.5 * (pmin + pmax)
    half = 0.5 * (pmax - pmin)
    half_xy = half[:2] * (1.0 + cfg.scale) + np.array([70.0, 70.0])
    lo_mm = np.array([centre[0] - half_xy[0], centre[1] - half_xy[1], pmin[2] - cfg.margin_below_mm])
    hi_mm = np.array([centre[0] + half_xy[0], centre[1] + half_xy[1], pmax[2] + cfg.margin_above_mm])
    sp = np.array(cfg.spacing)
    size = [int(math.ceil((h - l) / s)) + 1 for l, h, s in zip(lo_mm, hi_mm, sp)]
    ang = np.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3))
    tf = sitk.AffineTransform(3)
    tf.SetCenter(centre.tolist())
    rot = sitk.Euler3DTransform(centre.tolist(), *ang.tolist()).GetMatrix()
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale, 3)
    m = np.array(rot).reshape(3, 3) @ np.diag(1.0 / scale)
    tf.SetMatrix(m.ravel().tolist())
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(sp.tolist())
    ref.SetOrigin(lo_mm.tolist())
    out = sitk.Resample(label_map, ref, tf, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out), lo_mm


def render_example(label_map: sitk.Image, label_set: LabelSet, seed: int, config: SynthConfig | None = None) -> SynthExample:
    """Render one synthetic CT from a real organ label map.

    Args:
        label_map: organ labels (values of ``label_set``; other values are dropped), any orientation.
        label_set: the organs of the label map.
        seed: seed of this example (the same seed gives the same image).
        config: generator settings (default :class:`SynthConfig`).

    Returns:
        A :class:`SynthExample` on an axis-aligned grid (direction identity, LPS) of ``config.spacing``.
    """
    cfg = config or SynthConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng(int(seed))
    lab = sitk.Cast(label_map, sitk.sitkUInt8)
    keep = np.zeros(256, np.uint8)
    for lb in label_set:
        keep[lb.value] = lb.value
    arr, origin = _canvas(lab, cfg, rng)
    arr = keep[arr]
    mirrored = bool(rng.random() < cfg.mirror)
    if mirrored:
        arr = swap_sides(arr[:, :, ::-1], label_set)
    sc = _Scene(arr, origin, cfg.spacing, label_set, rng)
    if cfg.background:
        _build_background(sc)
    else:
        sc.T[sc.T == 0] = MESENTERY
    img, meta = _render_intensities(sc, cfg)
    out_img, out_lab = sitk.GetImageFromArray(img), sitk.GetImageFromArray(arr)
    for im in (out_img, out_lab):
        im.SetSpacing(cfg.spacing)
        im.SetOrigin(origin.tolist())
    meta.update({"seed": int(seed), "mirrored": mirrored, "seconds": round(time.perf_counter() - t0, 2)})
    return SynthExample(out_img, out_lab, int(seed), meta)


def _build_background(sc: _Scene) -> None:
    sx, sy, r = _spine_axis(sc)
    sc.T[:] = np.where(sc.O > 0, sc.O, AIR)
    body, inner = _body(sc, sy, r)
    _spine(sc, sx, sy, r, body)
    _pelvis(sc, sx, sy, r, body)
    _thorax(sc, body, inner, sx)
    _bowel(sc, body, inner)
    _blobs(sc, body, int(sc.rng.integers(2, 8)))
    _organ_detail(sc)
    if sc.rng.random() < 0.4:  # a patient table under the back
        yb = float(sc.Y[0, np.nonzero(body.any(axis=(0, 2)))[0].max(), 0]) + _u(sc.rng, 5, 30)
        sc.T[((sc.Y > yb) & (sc.Y < yb + _u(sc.rng, 4, 12))) & np.ones_like(sc.X, bool) & np.ones_like(sc.Z, bool)] = TABLE


# ---------------------------------------------------------------- datasets


def find_label_maps(folder: str | Path) -> list[Path]:
    """The label map files (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``) of a folder, sorted."""
    p = Path(folder)
    if not p.is_dir():
        raise ConfigError(f"--synth: {str(p)!r} is not a folder of label maps.")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")))
    if not files:
        raise ConfigError(f"--synth: {str(p)!r} holds no label map (.nii.gz, .nii, .nrrd, .mha).")
    return files


def _render_to_files(job: tuple[str, int, str, str, dict[str, Any], list[dict[str, Any]]]) -> dict[str, Any]:
    src, seed, img_path, lab_path, cfg_d, labels = job
    from repux.io.images import write_image

    cfg = SynthConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg_d.items()})
    ex = render_example(sitk.ReadImage(src), LabelSet.from_list(labels), seed, cfg)
    write_image(ex.image, img_path)
    write_image(ex.labels, lab_path)
    return ex.meta


def write_synth_dataset(
    label_folder: str | Path,
    out_dir: str | Path,
    n_per_map: int,
    *,
    label_set: LabelSet = BTCV,
    config: SynthConfig | None = None,
    seed: int = 0,
    val_maps: int = 3,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Render ``n_per_map`` examples of every label map into a RepUX dataset folder (resumable: existing files are kept).

    The validation split holds every example of ``val_maps`` label maps (chosen with ``seed``), so no subject
    is seen in training and validation.  Returns the path of ``repux-dataset.json``.
    """
    from repux.data.datasets import Case, write_manifest

    if n_per_map < 1:
        raise ConfigError(f"n must be >= 1 examples per label map; got {n_per_map!r}.")
    cfg = config or SynthConfig()
    maps = find_label_maps(label_folder)
    root = Path(out_dir)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(maps))
    val = {maps[i].name for i in order[: min(val_maps, len(maps) - 1)]}
    jobs, cases = [], []
    for mi, src in enumerate(maps):
        stem = src.name.split(".")[0]
        for j in range(n_per_map):
            cid = f"{stem}_s{j:02d}"
            img, lab = root / "imagesTr" / f"{cid}.nii.gz", root / "labelsTr" / f"{cid}.nii.gz"
            ex_seed = seed * 1_000_003 + mi * 1000 + j
            cases.append(Case(cid, img, lab, "val" if src.name in val else "train", {"source": src.name, "seed": ex_seed}))
            if not (img.exists() and lab.exists()):
                jobs.append((str(src), ex_seed, str(img), str(lab), cfg.to_dict(), label_set.to_list()))
    tracker = ProgressTracker(progress, {"synth": 1.0}, cancel)
    tracker.update("synth", 0.0, f"rendering {len(jobs)} synthetic CTs from {len(maps)} label maps")
    t0 = time.perf_counter()
    run: Callable = map
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(jobs) > 1 else None
    if pool is not None:
        run = pool.map
    try:
        for i, _meta in enumerate(run(_render_to_files, jobs)):
            tracker.update("synth", (i + 1) / len(jobs), f"synthetic CT {i + 1}/{len(jobs)}")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    extra = {"generator": {"name": "repux.data.synth", "seed": seed, "n_per_map": n_per_map, "label_maps": str(label_folder), "config": cfg.to_dict()}}
    path = write_manifest(root, label_set, cases, name="synthetic CT from label maps", extra=extra)
    tracker.done(f"{len(cases)} synthetic CTs in {root} ({len(jobs)} rendered in {time.perf_counter() - t0:.0f} s)")
    logger.info("synthetic dataset %s: %d cases (%d rendered)", root, len(cases), len(jobs))
    return path
