"""Synthetic abdominal CT phantoms with exact organ labels.

A phantom is a contrast-enhanced (portal-venous phase) abdominal CT of a
made-up patient: torso with subcutaneous and visceral fat, abdominal wall and
back muscles, lower ribs, lung bases under the diaphragm domes, liver (with
portal and hepatic veins), gallbladder, stomach (wall, fluid and an air-fluid
level), spleen, both kidneys (cortex, medulla, renal sinus fat and pelvis in
perirenal fat), adrenal glands, pancreas, duodenum, colon and small-bowel
loops with gas, the aorta, inferior vena cava and portal/splenic veins, the
lumbar spine (cancellous bone, cortical rim, discs, posterior elements and
spinal canal) and a patient table.

The anatomy is defined in physical patient space (LPS millimetres, ITK
convention: +x towards the patient's left, +y posterior, +z superior; the
anatomy is centred on the origin) and then *sampled* onto a voxel grid of any
spacing, orientation and handedness.  Every grid therefore shows the same
anatomy at the same physical place, which is what geometry tests rely on.
Three independent random streams are derived from the seed, so the anatomy
of seed ``s`` does not change when only the grid or the noise level changes:

* anatomy: organ sizes (about +-12 % per organ, +-6 % per axis), positions
  (+-8 mm), smooth shape deformation, fat/muscle thickness, gas, HU levels
  (+-10..15 HU);
* grid: the random spacing and orientation;
* noise: the noise level (10..25 HU) and the noise itself.

The image is ``int16`` HU with a slight point-spread blur (partial volume)
and correlated Gaussian noise; the label map is ``uint8`` with the values of
:data:`STRUCTURES`, sampled at the voxel centres exactly where each structure
is drawn (later structures overwrite earlier ones in image and labels alike,
so labels never overlap).  :meth:`Phantom.label_map` converts it to any
:class:`~repux.labels.LabelSet` (e.g. FLARE's liver/kidney/spleen/pancreas).

Example:
    >>> from repux.data.phantom import generate_phantom
    >>> from repux.labels import FLARE
    >>> ph = generate_phantom(7, orientation="axial")
    >>> seg = ph.label_map(FLARE)  # liver 1, kidney 2, spleen 3, pancreas 4
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.data.datasets import Case, split_cases, write_manifest
from repux.errors import ConfigError
from repux.io.images import write_image
from repux.labels import FLARE, LabelSet, normalize_name, organ
from repux.progress import CancelToken, ProgressCallback, ProgressTracker

__all__ = [
    "DEFAULT_SIZE_MM",
    "HU_RANGES",
    "ORIENTATIONS",
    "PHANTOM_LABELS",
    "STRUCTURES",
    "Phantom",
    "generate_phantom",
    "phantom_grid",
    "write_phantom_dataset",
]

logger = logging.getLogger(__name__)

#: Value of every structure in the "full" phantom label map.  Every name is a
#: known organ of :mod:`repux.labels`, so ``LabelSet.from_names`` gives codes.
STRUCTURES: dict[str, int] = {
    "liver": 1,
    "right kidney": 2,
    "left kidney": 3,
    "spleen": 4,
    "pancreas": 5,
    "vertebral column": 6,
    "aorta": 7,
    "inferior vena cava": 8,
    "gallbladder": 9,
    "stomach": 10,
    "duodenum": 11,
    "esophagus": 12,
    "right adrenal gland": 13,
    "left adrenal gland": 14,
}

#: The full phantom label set (values as in :data:`STRUCTURES`).
PHANTOM_LABELS: LabelSet = LabelSet.from_names(list(STRUCTURES), name="phantom")

#: Documented range of the *median* HU inside each structure (noise and blur
#: included).  Portal-venous phase: liver 100-120, spleen 110-130, renal
#: cortex 160-200 (medulla and pelvis darker), pancreas 90-110, cancellous
#: bone 230-380 with a 700-1000 HU cortical rim, aorta 180-220, IVC 125-150,
#: gallbladder bile 0-20, stomach: enhancing wall, fluid 10-30 and air -900.
HU_RANGES: dict[str, tuple[float, float]] = {
    "liver": (90.0, 130.0),
    "right kidney": (125.0, 215.0),
    "left kidney": (125.0, 215.0),
    "spleen": (100.0, 140.0),
    "pancreas": (75.0, 120.0),
    "vertebral column": (180.0, 480.0),
    "aorta": (160.0, 235.0),
    "inferior vena cava": (110.0, 165.0),
    "gallbladder": (-10.0, 35.0),
    "stomach": (-60.0, 75.0),
    "duodenum": (-80.0, 80.0),
    "esophagus": (-40.0, 90.0),
    "right adrenal gland": (-40.0, 90.0),
    "left adrenal gland": (-40.0, 90.0),
}

#: Grid orientations accepted by :func:`generate_phantom`:
#:
#: * ``"axial"``: identity direction (LPS axes, axial slices, ``det = +1``);
#: * ``"coronal"`` / ``"sagittal"``: coronal or sagittal slices (axis permutation, ``det = +1``);
#: * ``"left-handed"``: axial slices stacked head to feet, direction ``diag(1, 1, -1)`` (``det = -1``);
#: * ``"oblique"``: axial axes rotated 8..15 degrees about a random axis (``det = +1``);
#: * ``"left-handed-oblique"``: the left-handed grid rotated like ``"oblique"`` (``det = -1``);
#: * ``"random"``: a random axis permutation, random axis flips (either handedness) and,
#:   for half of the seeds, an oblique rotation of 3..15 degrees.
ORIENTATIONS: tuple[str, ...] = ("random", "axial", "coronal", "sagittal", "left-handed", "oblique", "left-handed-oblique")

#: Default field of view (left-right, anterior-posterior, inferior-superior) in mm.
DEFAULT_SIZE_MM: tuple[float, float, float] = (380.0, 300.0, 260.0)

_ANATOMY_STREAM, _GRID_STREAM, _NOISE_STREAM = 0, 1, 2
_MAX_VOXELS = 120_000_000
_AIR = -1000.0
_FAR = 1.0e5  # "unbounded" extent of a box (mm)


@dataclass
class Phantom:
    """A synthetic CT and its label map.

    Attributes:
        image: ``int16`` CT in HU, 3-D, with origin, spacing and direction (LPS, ITK convention).
        labels: ``uint8`` "full" label map on the same grid, values from :data:`STRUCTURES`.
        seed: the seed the phantom was generated from.
        meta: generation settings (spacing, orientation, noise level, seconds...).
    """

    image: sitk.Image
    labels: sitk.Image
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def label_map(self, label_set: LabelSet) -> sitk.Image:
        """The label map with the values of ``label_set``.

        Structures are matched by organ name or alias (:meth:`LabelSet.find`,
        :func:`~repux.labels.normalize_name`); an unsided label such as
        FLARE's ``"kidney"`` collects both ``"right kidney"`` and ``"left kidney"``
        (likewise ``"adrenal gland"``).  Structures absent from ``label_set``
        become background (0).

        Args:
            label_set: the target labels (values 1..N, N < 256).

        Returns:
            A ``uint8`` image on the phantom's grid.

        Raises:
            ConfigError: ``label_set`` is not a LabelSet or has 256 labels or more.
        """
        lut = _structure_lut(label_set)
        out = sitk.GetImageFromArray(lut[sitk.GetArrayViewFromImage(self.labels)])
        out.CopyInformation(self.labels)
        return out


def _canonical(name: str) -> str:
    try:
        return normalize_name(organ(name, 0).name)
    except ConfigError:
        return normalize_name(name)


def _match_label(label_set: LabelSet, structure: str) -> int:
    """Value of the label of ``label_set`` that ``structure`` belongs to (0 if none)."""
    lab = label_set.find(structure)
    if lab is None:
        key = _canonical(structure)
        lab = next((x for x in label_set if _canonical(x.name) == key), None)
    if lab is None:
        for side in ("right ", "left "):
            if structure.startswith(side):
                unsided = structure[len(side) :]
                lab = label_set.find(unsided) or next((x for x in label_set if _canonical(x.name) == _canonical(unsided)), None)
    return 0 if lab is None else int(lab.value)


def _structure_lut(label_set: LabelSet) -> np.ndarray:
    if not isinstance(label_set, LabelSet):
        raise ConfigError(f"label_set must be a repux.labels.LabelSet; got {type(label_set).__name__}.")
    if len(label_set) > 255:
        raise ConfigError(f"label_set has {len(label_set)} labels; phantom label maps are uint8 and allow at most 255.")
    lut = np.zeros(256, dtype=np.uint8)
    for name, value in STRUCTURES.items():
        lut[value] = _match_label(label_set, name)
    return lut


# --------------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------------


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"{name} must be a non-negative integer; got {seed!r}.")
    return int(seed)


def _check_triple(value: Any, name: str, lo: float, hi: float) -> tuple[float, float, float]:
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be 3 numbers in mm ({lo:g}..{hi:g}); got {value!r}.") from None
    if len(t) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in t):
        raise ConfigError(f"{name} must be 3 numbers in mm, each in {lo:g}..{hi:g}; got {value!r}.")
    return t  # type: ignore[return-value]


def _check_orientation(orientation: Any) -> str:
    key = str(orientation).strip().lower().replace("_", "-")
    if key not in ORIENTATIONS:
        raise ConfigError(f"orientation must be one of {', '.join(repr(o) for o in ORIENTATIONS)}; got {orientation!r}.")
    return key


# --------------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------------


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = math.radians(degrees)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(t) * k + (1.0 - math.cos(t)) * (k @ k)


def _euler(ax: float = 0.0, ay: float = 0.0, az: float = 0.0) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` (degrees)."""
    return _rotation([0, 0, 1], az) @ _rotation([0, 1, 0], ay) @ _rotation([1, 0, 0], ax)


def _random_axis(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _direction(orientation: str, rng: np.random.Generator) -> np.ndarray:
    """Direction matrix (columns: world directions of the i, j, k axes)."""
    # every draw happens whatever the orientation, so the spacing drawn after it depends on the seed only
    perm = rng.permutation(3)
    flips = rng.choice([-1.0, 1.0], size=3)
    tilt_axis = _random_axis(rng)
    oblique_deg = float(rng.uniform(8.0, 15.0))
    random_deg = float(rng.uniform(3.0, 15.0)) if rng.random() < 0.5 else 0.0
    if orientation == "axial":
        d = np.eye(3)
    elif orientation == "coronal":
        d = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    elif orientation == "sagittal":
        d = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    elif orientation == "left-handed":
        d = np.diag([1.0, 1.0, -1.0])
    elif orientation == "oblique":
        d = _rotation(tilt_axis, oblique_deg)
    elif orientation == "left-handed-oblique":
        d = _rotation(tilt_axis, oblique_deg) @ np.diag([1.0, 1.0, -1.0])
    else:  # random
        d = np.eye(3)[:, perm] * flips[None, :]
        if random_deg:
            d = _rotation(tilt_axis, random_deg) @ d
    return d


def phantom_grid(
    seed: int = 0,
    *,
    spacing: Sequence[float] | None = None,
    orientation: str = "random",
    size_mm: Sequence[float] = DEFAULT_SIZE_MM,
) -> sitk.Image:
    """The empty voxel grid :func:`generate_phantom` samples the anatomy onto.

    The grid is centred on the anatomy (physical origin); grid axis ``a`` spans
    ``size_mm`` of the patient axis it is closest to.

    Args:
        seed: seed of the random spacing/orientation.
        spacing: voxel spacing (i, j, k) in mm, or None for a random anisotropic
            spacing (in-plane 1.5..2.5 mm, slices 2.5..5 mm).
        orientation: one of :data:`ORIENTATIONS`.
        size_mm: field of view (left-right, anterior-posterior, inferior-superior) in mm.

    Returns:
        A ``uint8`` image of zeros with the grid's size, spacing, origin and direction.

    Raises:
        ConfigError: an argument is out of range.
    """
    seed = _check_seed(seed)
    orientation = _check_orientation(orientation)
    size_t = _check_triple(size_mm, "size_mm", 10.0, 2000.0)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_GRID_STREAM,)))
    d = _direction(orientation, rng)
    inplane = round(float(rng.uniform(1.5, 2.5)), 3)
    thick = round(float(rng.uniform(2.5, 5.0)), 3)
    sp = (inplane, inplane, thick) if spacing is None else _check_triple(spacing, "spacing", 0.1, 50.0)
    size = []
    for a in range(3):
        patient_axis = int(np.argmax(np.abs(d[:, a])))
        size.append(max(2, math.ceil(size_t[patient_axis] / sp[a] - 1e-6)))
    n = math.prod(size)
    if n > _MAX_VOXELS:
        raise ConfigError(
            f"spacing {tuple(sp)} mm with size_mm {size_t} gives {n:,} voxels ({size[0]}x{size[1]}x{size[2]}), "
            f"more than the {_MAX_VOXELS:,} allowed; use a coarser spacing or a smaller size_mm."
        )
    origin = -d @ ((np.array(size, dtype=float) - 1.0) / 2.0 * np.array(sp))
    img = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(v) for v in d.ravel()])
    img.SetOrigin([float(v) for v in origin])
    return img


# --------------------------------------------------------------------------------------------
# canvas: physical coordinates of the voxels and painting
# --------------------------------------------------------------------------------------------


@dataclass
class _Block:
    sl: tuple[slice, slice, slice]
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray


class _Canvas:
    """HU and label arrays ``(k, j, i)`` plus the LPS coordinates of every voxel centre."""

    def __init__(self, grid: sitk.Image) -> None:
        self.size = np.array(grid.GetSize(), dtype=int)
        d = np.array(grid.GetDirection(), dtype=float).reshape(3, 3)
        self.m = d @ np.diag(grid.GetSpacing())
        self.minv = np.linalg.inv(self.m)
        self.origin = np.array(grid.GetOrigin(), dtype=float)
        ni, nj, nk = (int(s) for s in self.size)
        i = np.arange(ni, dtype=np.float32)[None, None, :]
        j = np.arange(nj, dtype=np.float32)[None, :, None]
        k = np.arange(nk, dtype=np.float32)[:, None, None]
        m = self.m.tolist()
        o = self.origin.tolist()
        shape = (nk, nj, ni)
        self.X, self.Y, self.Z = (np.broadcast_to(o[r] + m[r][0] * i + m[r][1] * j + m[r][2] * k, shape).astype(np.float32) for r in range(3))
        self.hu = np.full(shape, _AIR, dtype=np.float32)
        self.lab = np.zeros(shape, dtype=np.uint8)
        self.everything = _Block((slice(0, nk), slice(0, nj), slice(0, ni)), self.X, self.Y, self.Z)

    def block(self, lo: Sequence[float], hi: Sequence[float]) -> _Block | None:
        """The voxels whose centres may lie in the physical box ``lo..hi`` (None when it misses the grid)."""
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=float)
        idx = (corners - self.origin) @ self.minv.T
        mn = np.floor(idx.min(axis=0)).astype(int)
        mx = np.ceil(idx.max(axis=0)).astype(int)
        if np.any(mx < 0) or np.any(mn > self.size - 1):
            return None
        mn = np.clip(mn, 0, self.size - 1)
        mx = np.clip(mx, 0, self.size - 1)
        sl = (slice(mn[2], mx[2] + 1), slice(mn[1], mx[1] + 1), slice(mn[0], mx[0] + 1))
        return _Block(sl, self.X[sl], self.Y[sl], self.Z[sl])

    def paint(self, blk: _Block, mask: np.ndarray, hu: float | np.ndarray, label: int = 0) -> None:
        """Set HU and label where ``mask`` (block-shaped) is true; ``hu`` is a scalar or a block-shaped array."""
        h = self.hu[blk.sl]
        h[mask] = hu if np.isscalar(hu) else hu[mask]
        self.lab[blk.sl][mask] = label


def _sub(blk: _Block, sub: _Block) -> tuple[slice, slice, slice]:
    """Slices of ``sub`` (a block inside ``blk``'s box or overlapping it) relative to ``blk``, clipped."""
    out = []
    for s, b in zip(sub.sl, blk.sl):
        out.append(slice(max(s.start, b.start) - b.start, max(min(s.stop, b.stop) - b.start, 0)))
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# shape primitives (approximate signed distances in mm, negative inside)
# --------------------------------------------------------------------------------------------


class _Smooth:
    """A smooth random field in [-1, 1]: a few plane waves with random directions, wavelengths and phases."""

    def __init__(self, rng: np.random.Generator, n: int = 5, wavelength: tuple[float, float] = (40.0, 120.0)) -> None:
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(wavelength[0], wavelength[1], size=n)
        self.k = (dirs * (2.0 * np.pi / lam)[:, None]).tolist()
        self.phase = rng.uniform(0.0, 2.0 * np.pi, size=n).tolist()
        amp = rng.uniform(0.5, 1.0, size=n)
        self.amp = (amp / amp.sum()).tolist()

    def on(self, cv: _Canvas, blk: _Block) -> np.ndarray:
        """The field at the voxel centres of ``blk``.

        Physical coordinates are affine in the voxel indices, so each wave is
        ``sin(A_i + B_kj) = sin A_i cos B_kj + cos A_i sin B_kj`` with a 1-D ``A`` and a 2-D ``B``:
        two products per voxel instead of a sine (exact for any grid orientation).
        """
        ks, js, is_ = blk.sl
        i = np.arange(is_.start, is_.stop, dtype=float)
        j = np.arange(js.start, js.stop, dtype=float)[None, :]
        k = np.arange(ks.start, ks.stop, dtype=float)[:, None]
        out = np.zeros(blk.X.shape, dtype=np.float32)
        for kv, ph, a in zip(self.k, self.phase, self.amp):
            g = np.asarray(kv) @ cv.m
            c0 = float(np.dot(kv, cv.origin)) + ph
            b = c0 + g[1] * j + g[2] * k
            sa, ca = np.sin(g[0] * i).astype(np.float32), np.cos(g[0] * i).astype(np.float32)
            sb, cb = (a * np.sin(b)).astype(np.float32), (a * np.cos(b)).astype(np.float32)
            out += cb[:, :, None] * sa
            out += sb[:, :, None] * ca
        return out


def _ellipsoid_sd(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, c: Sequence[float], radii: Sequence[float], rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid (first order: ``f / |grad f|``)."""
    dx, dy, dz = X - float(c[0]), Y - float(c[1]), Z - float(c[2])
    if rot is not None:
        r = rot.tolist()
        u = r[0][0] * dx + r[1][0] * dy + r[2][0] * dz
        v = r[0][1] * dx + r[1][1] * dy + r[2][1] * dz
        w = r[0][2] * dx + r[1][2] * dy + r[2][2] * dz
    else:
        u, v, w = dx, dy, dz
    a, b, cc = (float(x) for x in radii)
    un, vn, wn = u / a, v / b, w / cc
    f = un * un + vn * vn + wn * wn - 1.0
    g = np.sqrt((un / a) ** 2 + (vn / b) ** 2 + (wn / cc) ** 2)
    g *= 2.0
    g += 1e-6
    return f / g


def _ellipsoid_box(c: Sequence[float], radii: Sequence[float], pad: float) -> tuple[np.ndarray, np.ndarray]:
    """A box holding every point whose approximate signed distance is below ``pad``.

    Outside the ellipsoid the first-order distance underestimates the true one by up to
    a factor of about two, hence ``2 * pad``: a box that is too small would cut shapes
    differently on different grids.
    """
    r = max(radii) + 2.0 * pad + 1.0
    c = np.asarray(c, dtype=float)
    return c - r, c + r


def _spline(points: Sequence[Sequence[float]], radii: Sequence[float], per_segment: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Catmull-Rom interpolation of a centre line and its radii."""
    p = np.asarray(points, dtype=float)
    r = np.asarray(radii, dtype=float)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    rext = np.concatenate([[r[0]], r, [r[-1]]])
    out_p, out_r = [], []
    for s in range(len(p) - 1):
        p0, p1, p2, p3 = ext[s : s + 4]
        for t in np.linspace(0.0, 1.0, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out_p.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
            out_r.append(rext[s + 1] + (rext[s + 2] - rext[s + 1]) * t)
    out_p.append(p[-1])
    out_r.append(r[-1])
    return np.array(out_p), np.array(out_r)


class _Tube:
    """A tube along a polyline with linearly varying radius (optionally elliptic via an axis scale)."""

    def __init__(self, points: Sequence[Sequence[float]], radii: Sequence[float], scale: Sequence[float] = (1.0, 1.0, 1.0), smooth: int = 3) -> None:
        if smooth > 1 and len(points) > 2:
            self.p, self.r = _spline(points, radii, smooth)
        else:
            self.p, self.r = np.asarray(points, dtype=float), np.asarray(radii, dtype=float)
        self.scale = np.asarray(scale, dtype=float)

    def box(self, pad: float) -> tuple[np.ndarray, np.ndarray]:
        ext = self.r.max() / self.scale + pad
        return self.p.min(axis=0) - ext, self.p.max(axis=0) + ext

    def sd(self, canvas: _Canvas, blk: _Block, pad: float) -> np.ndarray:
        """Signed distance on ``blk`` (computed segment by segment on each segment's own box; +inf far away)."""
        out = np.full(blk.X.shape, np.inf, dtype=np.float32)
        sx, sy, sz = self.scale.tolist()
        for s in range(len(self.p) - 1):
            a, b = self.p[s], self.p[s + 1]
            ra, rb = float(self.r[s]), float(self.r[s + 1])
            ext = max(ra, rb) / self.scale + pad
            sub = canvas.block(np.minimum(a, b) - ext, np.maximum(a, b) + ext)
            if sub is None:
                continue
            rel = _sub(blk, sub)
            if any(r.stop <= r.start for r in rel):
                continue
            absl = tuple(slice(r.start + b0.start, r.stop + b0.start) for r, b0 in zip(rel, blk.sl))
            X, Y, Z = canvas.X[absl], canvas.Y[absl], canvas.Z[absl]
            v = (b - a).tolist()
            vv = max(float(np.dot(b - a, b - a)), 1e-9)
            dx, dy, dz = X - float(a[0]), Y - float(a[1]), Z - float(a[2])
            t = (dx * v[0] + dy * v[1] + dz * v[2]) / vv
            np.clip(t, 0.0, 1.0, out=t)
            ex = (dx - t * v[0]) * sx
            ey = (dy - t * v[1]) * sy
            ez = (dz - t * v[2]) * sz
            d = np.sqrt(ex * ex + ey * ey + ez * ez)
            d -= ra + t * (rb - ra)
            view = out[rel]
            np.minimum(view, d, out=view)
        return out


def _cross_section(X: np.ndarray, Y: np.ndarray, a: float, b_ant: float, b_post: float) -> np.ndarray:
    """Squared normalised radius of the torso's axial cross-section (rounded box, flatter at the back).

    ``t + s + c * t * s`` with ``t = (x/a)^2``, ``s = (y/b)^2`` and ``c < 0`` makes the
    shape boxier than an ellipse (``c = 0``): a little in front, more at the back (supine on the table).
    """
    post = Y > 0
    b = np.where(post, np.float32(b_post), np.float32(b_ant))
    c = np.where(post, np.float32(-0.55), np.float32(-0.15))
    t = X / np.float32(a)
    t *= t
    q = Y / b
    q *= q
    out = t + q
    t *= q
    t *= c
    out += t
    return out


# --------------------------------------------------------------------------------------------
# the anatomy
# --------------------------------------------------------------------------------------------


class _Anatomy:
    """All random anatomical parameters of one phantom (drawn from the anatomy stream only)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ANATOMY_STREAM,)))
        u = rng.uniform

        def shift(s: float = 8.0) -> np.ndarray:
            return rng.uniform(-s, s, size=3)

        def scale(s: float = 0.12, a: float = 0.06) -> np.ndarray:
            return u(1 - s, 1 + s) * rng.uniform(1 - a, 1 + a, size=3)

        # HU levels (portal-venous phase)
        self.hu = {
            "fat": u(-110, -90),
            "visceral_fat": u(-105, -85),
            "muscle": u(40, 60),
            "liver": u(100, 120),
            "hepatic_vessel": u(150, 180),
            "spleen": u(110, 130),
            "cortex": u(165, 195),
            "medulla_drop": u(25, 50),
            "pelvis": u(5, 25),
            "pancreas": u(92, 110),
            "cancellous": u(230, 380),
            "cortical": u(700, 1000),
            "disc": u(70, 100),
            "canal": u(10, 30),
            "aorta": u(180, 220),
            "ivc": u(125, 150),
            "portal": u(150, 185),
            "bile": u(0, 20),
            "gut_wall": u(60, 95),
            "gut_fluid": u(10, 30),
            "stool": u(-120, 20),
            "gas": u(-980, -880),
            "lung": u(-880, -830),
            "rib": u(350, 600),
            "cartilage": u(100, 180),
            "heart": u(90, 140),
            "adrenal": u(45, 70),
            "skin": u(20, 50),
        }
        # body habitus: muscle wall and fat around a fixed-ish abdominal cavity
        self.cavity = np.array([135.0, 95.0, 100.0]) * u(0.96, 1.04, size=3)  # half-axes: lateral, anterior, posterior
        self.muscle = np.array([u(8, 14), u(8, 14), u(8, 12)])  # lateral, anterior, posterior wall
        self.fat = np.array([u(8, 30), u(8, 35), u(6, 20)])  # subcutaneous: lateral, anterior, posterior
        self.body_noise = _Smooth(rng, 4, (150, 300))
        self.body_noise_amp = u(0.01, 0.03)
        # organ geometry (nominal LPS positions; see the module docstring for axes)
        liver_shift = shift()
        self.liver_c = np.array([-72.0, 6.0, 66.0]) + liver_shift
        self.hilum = np.array([-38.0, -8.0, 50.0]) + 0.5 * liver_shift  # porta hepatis
        self.liver_r = np.array([68.0, 86.0, 92.0]) * scale()
        self.liver_rot = _euler(u(-6, 6), u(-8, 8), u(-10, 10))
        self.liver_left_c = np.array([8.0, -52.0, 72.0]) + shift()
        self.liver_left_r = np.array([62.0, 34.0, 40.0]) * scale()
        self.liver_left_rot = _euler(u(-6, 6), u(-15, -5), u(5, 20))
        self.liver_cut = (u(-35, -20), u(0.3, 0.45), u(-0.15, 0.05))  # inferior surface: z > z0 + sx * (x + 120) + sy * y
        self.liver_noise = _Smooth(rng, 6, (50, 140))
        self.liver_amp = u(6, 12)
        self.liver_cysts = [(np.array([u(-110, -40), u(-40, 40), u(20, 90)]), u(5, 12)) for _ in range(int(rng.integers(0, 3)))]

        self.gb_c = np.array([-40.0, -42.0, 14.0]) + shift(6)
        self.gb_r = np.array([15.0, 17.0, 34.0]) * scale(0.15)
        self.gb_rot = _euler(u(-40, -20), u(-15, 5), u(-10, 10))

        self.stomach_pts = np.array([[55.0, 22.0, 100.0], [66.0, -18.0, 72.0], [50.0, -52.0, 42.0], [14.0, -66.0, 30.0], [-16.0, -56.0, 36.0]]) + rng.uniform(
            -6, 6, size=(5, 3)
        )
        st = u(0.85, 1.15)
        self.stomach_r = np.array([38.0, 34.0, 27.0, 19.0, 11.0]) * st
        self.stomach_air = u(6, 22)  # air depth (mm) above the most anterior fluid point
        self.stomach_noise = _Smooth(rng, 5, (40, 100))

        self.spleen_c = np.array([92.0, 44.0, 80.0]) + shift()
        self.spleen_r = np.array([25.0, 55.0, 50.0]) * scale()
        self.spleen_rot = _euler(u(-10, 10), u(-10, 10), u(-40, -25))
        self.spleen_noise = _Smooth(rng, 5, (40, 100))

        self.kidney_c = {
            "right": np.array([-70.0, 48.0, -14.0]) + shift(6),
            "left": np.array([70.0, 46.0, 2.0]) + shift(6),
        }
        ks = {side: np.array([30.0, 26.0, 57.0]) * scale(0.1, 0.05) for side in ("right", "left")}
        self.kidney_r = ks
        self.kidney_rot = {
            "right": _euler(u(10, 20), u(-15, -8), u(-35, -20)),
            "left": _euler(u(10, 20), u(8, 15), u(20, 35)),
        }
        self.kidney_noise = {side: _Smooth(rng, 4, (40, 90)) for side in ("right", "left")}
        self.kidney_cyst = [(side, u(-0.8, 0.8), u(5, 11)) for side in ("right", "left") if rng.random() < 0.2]

        self.adrenal_c = {"right": np.array([-36.0, 40.0, 50.0]) + shift(4), "left": np.array([38.0, 36.0, 44.0]) + shift(4)}

        p_shift = shift(6)
        self.pancreas_pts = (
            np.array([[-44.0, -4.0, 2.0], [-32.0, -12.0, 20.0], [-6.0, -24.0, 30.0], [26.0, -16.0, 36.0], [58.0, 8.0, 44.0], [84.0, 28.0, 54.0]])
            + p_shift
            + rng.uniform(-4, 4, size=(6, 3))
        )
        self.pancreas_r = np.array([17.0, 15.0, 11.0, 11.5, 11.0, 9.5]) * u(0.9, 1.12)
        self.pancreas_noise = _Smooth(rng, 6, (20, 50))
        self.pancreas_tex = _Smooth(rng, 6, (6, 12))

        self.duo_pts = np.array(
            [
                [-16.0, -56.0, 36.0],
                [-42.0, -44.0, 38.0],
                [-70.0, -16.0, 24.0],
                [-72.0, -10.0, -12.0],
                [-46.0, -4.0, -30.0],
                [-4.0, -6.0, -36.0],
                [26.0, -12.0, -28.0],
                [36.0, -22.0, -8.0],
            ]
        )
        self.duo_pts[1:] += p_shift
        self.duo_r = u(10, 13)
        self.duo_gas = rng.random() < 0.5

        self.aorta_r = u(9.5, 12.5)
        self.aorta_pts = np.array([[6.0, 32.0, 160.0], [12.0, 20.0, 70.0], [15.0, 13.0, -30.0], [12.0, 10.0, -95.0]]) + rng.uniform(-3, 3, size=(4, 3))
        self.ivc_pts = np.array([[-20.0, 14.0, -100.0], [-24.0, 12.0, 0.0], [-26.0, 8.0, 60.0], [-16.0, 14.0, 160.0]]) + rng.uniform(-3, 3, size=(4, 3))
        self.ivc_r = u(10, 13)
        self.calcified = [u(0, 1) for _ in range(int(rng.integers(0, 4)))]

        self.spine_y = u(36, 44)
        self.spine_period = u(33, 38)
        self.spine_phase = u(0, 40)
        self.spine_disc = u(7, 10)
        self.spine_a = u(21, 25)
        self.spine_b = u(15, 18)

        self.colon_pts = np.array(
            [
                [-104.0, -2.0, -140.0],
                [-108.0, -8.0, -60.0],
                [-98.0, -30.0, -6.0],
                [-60.0, -70.0, -34.0],
                [0.0, -76.0, -62.0],
                [60.0, -68.0, -24.0],
                [100.0, -26.0, 30.0],
                [112.0, 4.0, -20.0],
                [108.0, 8.0, -140.0],
            ]
        ) + rng.uniform(-7, 7, size=(9, 3))
        self.colon_r = u(15, 21)
        self.colon_noise = _Smooth(rng, 5, (25, 60))
        self.stool = _Smooth(rng, 6, (8, 18))
        self.stool_level = u(-0.35, 0.2)

        self.bowel_period = u(48, 60)
        self.bowel_warp = [_Smooth(rng, 4, (50, 120)) for _ in range(3)]
        self.bowel_rot = _rotation(_random_axis(rng), u(0, 180))
        self.bowel_gas = _Smooth(rng, 5, (20, 50))
        self.bowel_gas_level = u(0.35, 0.7)
        self.bowel_offset = rng.uniform(0, 60, size=3)

        self.dome = (u(150, 162), u(142, 155))  # right / left diaphragm dome peaks (z, mm)
        self.rib_period = u(26, 32)
        self.rib_phase = u(0, 30)
        self.noise_texture = _Smooth(rng, 6, (30, 80))


def _spine_y(y0: float, z: np.ndarray) -> np.ndarray:
    """Antero-posterior position of the vertebral bodies' centre (lumbar lordosis, most anterior near L3/L4)."""
    return y0 + 0.0004 * (z + 60.0) ** 2 - 3.0


def _erector(x: np.ndarray, y: np.ndarray, z: np.ndarray, y0: float, grow: float = 0.0) -> np.ndarray:
    """The erector spinae muscles beside the posterior elements."""
    return ((np.abs(x) - 34.0) / (30.0 + grow)) ** 2 + ((y - _spine_y(y0, z) - 50.0) / (24.0 + grow)) ** 2 < 1.0


@dataclass
class _BodyShape:
    """The body outline painted first, kept for the painters that clip to it or paint the wall later."""

    outer: np.ndarray  # half-axes of the skin surface
    rr_body: np.ndarray  # squared normalised radius of the skin surface
    rr_muscle: np.ndarray  # squared normalised radius of the muscle wall's outer surface
    rr_cav: np.ndarray  # squared normalised radius of the abdominal cavity (the wall's inner surface)
    body: np.ndarray  # inside the skin
    in_cav: np.ndarray  # inside the cavity


def _paint_body(an: _Anatomy, cv: _Canvas) -> _BodyShape:
    """Body: everything inside the skin starts as visceral fat; the walls are painted later."""
    cav = an.cavity
    everything = cv.everything
    X, Y = everything.X, everything.Y
    outer = cav + an.muscle + an.fat
    wobble = an.body_noise.on(cv, everything)
    wobble *= 2.0 * an.body_noise_amp
    rr_body = _cross_section(X, Y, outer[0], outer[1], outer[2])
    rr_body += wobble
    body = rr_body < 1.0
    m_axes = cav + an.muscle
    rr_muscle = _cross_section(X, Y, m_axes[0], m_axes[1], m_axes[2])
    rr_muscle += wobble
    rr_cav = _cross_section(X, Y, cav[0], cav[1], cav[2])
    rr_cav += wobble
    in_cav = rr_cav < 1.0
    cv.paint(everything, body, an.hu["visceral_fat"])
    return _BodyShape(outer, rr_body, rr_muscle, rr_cav, body, in_cav)


def _paint_small_bowel(an: _Anatomy, cv: _Canvas) -> None:
    """Small-bowel loops (gyroid labyrinth) in the lower/anterior abdomen."""
    hu = an.hu
    bowel_c, bowel_r = (0.0, -30.0, -95.0), (100.0, 80.0, 125.0)
    blk = cv.block(np.subtract(bowel_c, bowel_r) - 1.0, np.add(bowel_c, bowel_r) + 1.0)
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    region = _ellipsoid_sd(x, y, z, bowel_c, bowel_r)
    inside = region < 0
    if not inside.any():
        return
    w = 2.0 * np.pi / an.bowel_period
    off = an.bowel_offset.tolist()
    r = an.bowel_rot.tolist()
    wx, wy, wz = (x + 22.0 * an.bowel_warp[0].on(cv, blk), y + 22.0 * an.bowel_warp[1].on(cv, blk), z + 22.0 * an.bowel_warp[2].on(cv, blk))
    xs = (r[0][0] * wx + r[0][1] * wy + r[0][2] * wz + off[0]) * w
    ys = (r[1][0] * wx + r[1][1] * wy + r[1][2] * wz + off[1]) * w
    zs = (r[2][0] * wx + r[2][1] * wy + r[2][2] * wz + off[2]) * w
    g = np.sin(xs) * np.cos(ys) + np.sin(ys) * np.cos(zs) + np.sin(zs) * np.cos(xs)
    ag = np.abs(g)
    wall = inside & (ag > 0.5) & (region < -4)
    lumen = inside & (ag > 0.72) & (region < -6)
    cv.paint(blk, wall, hu["gut_wall"])
    cv.paint(blk, lumen, hu["gut_fluid"])
    gas = lumen & (an.bowel_gas.on(cv, blk) - 0.004 * y > an.bowel_gas_level)
    cv.paint(blk, gas, hu["gas"])


def _paint_colon(an: _Anatomy, cv: _Canvas) -> None:
    """Colon framing the small bowel: wall, gas and stool."""
    hu = an.hu
    colon = _Tube(an.colon_pts, [an.colon_r] * len(an.colon_pts), smooth=4)
    lo, hi = colon.box(8.0)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = colon.sd(cv, blk, 8.0)
    near = sd < 8.0
    if not near.any():
        return
    sd = sd - 6.0 * an.colon_noise.on(cv, blk) * near
    cv.paint(blk, sd < 0, hu["gut_wall"])
    lumen = sd < -3.0
    st = an.stool.on(cv, blk)
    stool = lumen & (st + 0.006 * blk.Y > an.stool_level)
    cv.paint(blk, lumen, hu["gas"])
    cv.paint(blk, stool, hu["stool"] + 60.0 * st)


def _paint_liver(an: _Anatomy, cv: _Canvas) -> None:
    """Liver (right lobe + left lobe, lobulated, cut by its inferior surface), then its vessels and cysts."""
    lo, hi = _ellipsoid_box(an.liver_c, an.liver_r, an.liver_amp + 2)
    lo2, hi2 = _ellipsoid_box(an.liver_left_c, an.liver_left_r, an.liver_amp + 2)
    blk = cv.block(np.minimum(lo, lo2), np.maximum(hi, hi2))
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    sd = np.minimum(
        _ellipsoid_sd(x, y, z, an.liver_c, an.liver_r, an.liver_rot), _ellipsoid_sd(x, y, z, an.liver_left_c, an.liver_left_r, an.liver_left_rot)
    )
    sd -= an.liver_amp * an.liver_noise.on(cv, blk)
    z0, sx, sy = an.liver_cut
    liver = (sd < 0) & (z > z0 + sx * (x + 120.0) + sy * y)
    tex = an.hu["liver"] + 4.0 * an.noise_texture.on(cv, blk)
    cv.paint(blk, liver, tex, STRUCTURES["liver"])
    _paint_liver_vessels(an, cv)
    _paint_liver_cysts(an, cv)


def _paint_liver_vessels(an: _Anatomy, cv: _Canvas) -> None:
    """Portal vein branches and hepatic veins (inside the liver only: labelled liver)."""
    liver = STRUCTURES["liver"]
    hilum = an.hilum
    ivc_top = np.array([-24.0, 10.0, 110.0])
    vessels = [
        _Tube([hilum, hilum + [-40, 8, 12], hilum + [-75, 20, 10]], [7.0, 5.5, 4.0]),
        _Tube([hilum, hilum + [25, -25, 20], hilum + [50, -40, 22]], [6.0, 4.5, 3.5]),
        _Tube([hilum + [-40, 8, 12], hilum + [-45, -30, 5]], [4.5, 3.5], smooth=1),
        _Tube([ivc_top, ivc_top + [-45, -10, -10], ivc_top + [-85, -5, -25]], [7.0, 5.0, 3.5]),
        _Tube([ivc_top, ivc_top + [-10, -45, -20], ivc_top + [-5, -75, -35]], [6.0, 4.5, 3.0]),
        _Tube([ivc_top, ivc_top + [30, -40, -10], ivc_top + [60, -60, -25]], [5.0, 4.0, 3.0]),
    ]
    for v in vessels:
        vlo, vhi = v.box(1.0)
        vb = cv.block(vlo, vhi)
        if vb is None:
            continue
        vsd = v.sd(cv, vb, 1.0)
        cv.paint(vb, (vsd < 0) & (cv.lab[vb.sl] == liver), an.hu["hepatic_vessel"], liver)


def _paint_liver_cysts(an: _Anatomy, cv: _Canvas) -> None:
    """Simple cysts inside the liver (labelled liver)."""
    liver = STRUCTURES["liver"]
    for c, r in an.liver_cysts:
        cb = cv.block(c - r - 1, c + r + 1)
        if cb is not None:
            m = (_ellipsoid_sd(cb.X, cb.Y, cb.Z, c, (r, r, r)) < 0) & (cv.lab[cb.sl] == liver)
            cv.paint(cb, m, float(an.hu["bile"]) + 5.0, liver)


def _paint_gallbladder(an: _Anatomy, cv: _Canvas) -> None:
    """Gallbladder (under the liver): fat rim, wall and bile."""
    hu, S = an.hu, STRUCTURES
    lo, hi = _ellipsoid_box(an.gb_c, an.gb_r, 2)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = _ellipsoid_sd(blk.X, blk.Y, blk.Z, an.gb_c, an.gb_r, an.gb_rot)
    cv.paint(blk, sd < 1.5, hu["visceral_fat"])
    cv.paint(blk, sd < 0, hu["gut_wall"] - 20.0, S["gallbladder"])
    cv.paint(blk, sd < -2.0, hu["bile"], S["gallbladder"])


def _paint_stomach(an: _Anatomy, cv: _Canvas) -> None:
    """Stomach: wall, fluid and an air-fluid level (air rises anteriorly, -y, in a supine patient)."""
    hu, S = an.hu, STRUCTURES
    stomach = _Tube(an.stomach_pts, an.stomach_r, smooth=4)
    lo, hi = stomach.box(8.0)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = stomach.sd(cv, blk, 8.0)
    near = sd < 8.0
    sd = sd - 5.0 * an.stomach_noise.on(cv, blk) * near
    cv.paint(blk, (sd < 2.0) & near, hu["visceral_fat"])
    cv.paint(blk, sd < 0, hu["gut_wall"], S["stomach"])
    lumen = sd < -5.0
    cv.paint(blk, lumen, hu["gut_fluid"], S["stomach"])
    front = float(np.min(stomach.p[:, 1] - stomach.r))  # most anterior lumen point (physical, grid independent)
    cv.paint(blk, lumen & (blk.Y < front + 5.0 + an.stomach_air), hu["gas"], S["stomach"])


def _paint_spleen(an: _Anatomy, cv: _Canvas) -> None:
    """Spleen (crescent: concave visceral surface)."""
    lo, hi = _ellipsoid_box(an.spleen_c, an.spleen_r, 8)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    sd = _ellipsoid_sd(x, y, z, an.spleen_c, an.spleen_r, an.spleen_rot) - 5.0 * an.spleen_noise.on(cv, blk)
    hollow = an.spleen_c + an.spleen_rot @ np.array([-54.0, -6.0, 0.0])
    sd = np.maximum(sd, -_ellipsoid_sd(x, y, z, hollow, (36.0, 46.0, 46.0), an.spleen_rot))
    cv.paint(blk, sd < 0, an.hu["spleen"] + 3.0 * an.noise_texture.on(cv, blk), STRUCTURES["spleen"])


def _paint_back_muscles(an: _Anatomy, cv: _Canvas, in_cav: np.ndarray) -> None:
    """Back muscles (erector spinae, quadratus lumborum) and psoas along the spine; the kidneys lie on them."""
    sy = an.spine_y
    blk = cv.block((-100.0, 0.0, -_FAR), (100.0, _FAR, _FAR))
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    ys = _spine_y(sy, z)
    ax = np.abs(x)
    erector = _erector(x, y, z, sy)
    ql = (((ax - 62.0) / 18.0) ** 2 + ((y - ys - 34.0) / 12.0) ** 2 < 1.0) & (z < 30.0)
    below = np.clip(40.0 - z, 0.0, None)
    pr = np.minimum(4.0 + 0.13 * below, 26.0)
    psoas = ((ax - 28.0 - 0.1 * below) ** 2 + (y - ys + 2.0) ** 2 < pr * pr) & (z < 40.0)
    cv.paint(blk, (erector | ql | psoas) & in_cav[blk.sl], an.hu["muscle"])


def _paint_kidney(an: _Anatomy, cv: _Canvas, side: str) -> None:
    """One kidney in perirenal fat: cortex, medulla (pyramids), sinus fat and pelvis opening medially."""
    hu = an.hu
    c, r, rot = an.kidney_c[side], an.kidney_r[side], an.kidney_rot[side]
    lo, hi = _ellipsoid_box(c, r, 12)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    sd = _ellipsoid_sd(x, y, z, c, r, rot) - 3.0 * an.kidney_noise[side].on(cv, blk)
    cv.paint(blk, sd < 8.0, hu["visceral_fat"])
    label = STRUCTURES[f"{side} kidney"]
    kidney = sd < 0
    cv.paint(blk, kidney, hu["cortex"], label)
    medial = 1.0 if side == "right" else -1.0  # +x is the patient's left: the right kidney's hilum points to +x
    med = _ellipsoid_sd(x, y, z, c, r * np.array([0.62, 0.62, 0.78]), rot)
    lobes = np.sin(z * (2 * np.pi / 22.0)) * np.sin((x + y) * (2 * np.pi / 26.0))
    cv.paint(blk, kidney & (med < 0) & (lobes > -0.3), hu["cortex"] - hu["medulla_drop"], label)
    sinus_c = c + rot @ np.array([medial * r[0] * 0.55, -r[1] * 0.15, 0.0])
    sinus = _ellipsoid_sd(x, y, z, sinus_c, (r[0] * 0.55, r[1] * 0.42, r[2] * 0.5), rot) < 0
    cv.paint(blk, sinus, hu["visceral_fat"] + 20.0)
    pelvis_c = c + rot @ np.array([medial * r[0] * 0.5, -r[1] * 0.1, -r[2] * 0.05])
    pelvis = _ellipsoid_sd(x, y, z, pelvis_c, (r[0] * 0.35, r[1] * 0.22, r[2] * 0.3), rot) < 0
    cv.paint(blk, pelvis, hu["pelvis"], label)
    for cyst_side, pos, cr in an.kidney_cyst:
        if cyst_side == side:
            cc = c + rot @ np.array([-medial * r[0] * 0.6, 0.0, pos * r[2] * 0.7])
            cyst = (_ellipsoid_sd(x, y, z, cc, (cr, cr, cr)) < 0) & (cv.lab[blk.sl] == label)
            cv.paint(blk, cyst, hu["pelvis"], label)


def _paint_adrenal(an: _Anatomy, cv: _Canvas, side: str) -> None:
    """One adrenal gland: a thin inverted-V plate above-medial of the kidney's upper pole."""
    S = STRUCTURES
    c = an.adrenal_c[side]
    blk = cv.block(c - 40.0, c + 40.0)
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    sgn = -1.0 if side == "right" else 1.0
    limb1 = _ellipsoid_sd(x, y, z, c + [sgn * 6.0, 4.0, -6.0], (4.0, 14.0, 16.0), _euler(0, sgn * 25.0, sgn * 30.0))
    limb2 = _ellipsoid_sd(x, y, z, c + [-sgn * 4.0, 6.0, -6.0], (4.0, 12.0, 14.0), _euler(0, -sgn * 20.0, sgn * 30.0))
    sd = np.minimum(limb1, limb2)
    free = (cv.lab[blk.sl] != S["right kidney"]) & (cv.lab[blk.sl] != S["left kidney"])
    cv.paint(blk, (sd < 3.0) & free, an.hu["visceral_fat"])
    cv.paint(blk, (sd < 0) & free, an.hu["adrenal"], S[f"{side} adrenal gland"])


def _paint_pancreas(an: _Anatomy, cv: _Canvas) -> None:
    """Pancreas (head in the duodenal C-loop, neck over the portal confluence, tail to the splenic hilum)."""
    hu, S = an.hu, STRUCTURES
    pancreas = _Tube(an.pancreas_pts, an.pancreas_r, scale=(1.0, 1.0, 0.8), smooth=4)
    lo, hi = pancreas.box(8.0)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = pancreas.sd(cv, blk, 8.0)
    near = sd < 8.0
    sd = sd - 3.0 * an.pancreas_noise.on(cv, blk) * near
    cv.paint(blk, (sd < 2.5) & near & (cv.lab[blk.sl] != S["liver"]), hu["visceral_fat"])
    tex = hu["pancreas"] + 8.0 * an.pancreas_tex.on(cv, blk)
    cv.paint(blk, sd < 0, tex, S["pancreas"])


def _paint_duodenum(an: _Anatomy, cv: _Canvas) -> None:
    """Duodenum (C-loop around the pancreatic head), with gas in some phantoms."""
    hu, label = an.hu, STRUCTURES["duodenum"]
    duo = _Tube(an.duo_pts, [an.duo_r] * len(an.duo_pts), smooth=4)
    lo, hi = duo.box(2.0)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = duo.sd(cv, blk, 2.0)
    cv.paint(blk, sd < 0, hu["gut_wall"], label)
    lumen = sd < -3.5
    cv.paint(blk, lumen, hu["gut_fluid"], label)
    if an.duo_gas:
        cv.paint(blk, lumen & (blk.Y < -50.0), hu["gas"], label)


def _paint_portal_veins(an: _Anatomy, cv: _Canvas) -> None:
    """Portal venous system (unlabelled): splenic vein behind the pancreas, SMV, portal vein to the hilum; and the SMA."""
    conf = np.array([0.0, -4.0, 26.0]) + (an.pancreas_pts[2] - np.array([-6.0, -24.0, 30.0]))
    hilum = an.hilum
    splenic_end = an.spleen_c + np.array([-28.0, -10.0, -8.0])
    tail = an.pancreas_pts[4] + np.array([0.0, 12.0, 2.0])
    veins = [
        _Tube([conf, (conf + hilum) / 2 + [0, 2, 0], hilum], [7.5, 7.0, 6.5]),
        _Tube([conf, an.pancreas_pts[3] + [0, 14, 0], tail, splenic_end], [5.0, 4.5, 4.5, 4.0]),
        _Tube([conf, conf + [4, 4, -30], conf + [6, 2, -70]], [6.0, 5.5, 4.5]),
        _Tube([an.kidney_c["left"] + [-22, -8, 0], [14.0, 4.0, 6.0], [-20.0, 10.0, 4.0]], [5.0, 5.0, 5.5]),  # left renal vein
        _Tube([[14.0, 10.0, 40.0], [16.0, -8.0, 30.0], [16.0, -10.0, -40.0]], [4.5, 4.0, 3.5]),  # superior mesenteric artery
    ]
    for i, v in enumerate(veins):
        vlo, vhi = v.box(1.0)
        vb = cv.block(vlo, vhi)
        if vb is not None:
            cv.paint(vb, v.sd(cv, vb, 1.0) < 0, an.hu["aorta"] if i == 4 else an.hu["portal"])


def _paint_wall(an: _Anatomy, cv: _Canvas, shape: _BodyShape) -> None:
    """Abdominal wall, subcutaneous fat and skin (clip every organ to the cavity)."""
    hu = an.hu
    everything = cv.everything
    cv.paint(everything, shape.body & (shape.rr_muscle >= 1.0), hu["fat"])
    cv.paint(everything, (shape.rr_muscle < 1.0) & ~shape.in_cav, hu["muscle"])
    cv.paint(everything, shape.body & (shape.rr_body > (1.0 - 2.0 / shape.outer[0]) ** 2), hu["skin"])


def _paint_ribs(an: _Anatomy, cv: _Canvas, shape: _BodyShape) -> None:
    """Ribs: oblique bony bands in the wall, descending anteriorly; costal cartilage anteriorly.

    The lower rib cage ends higher in front (costal margin) than at the back (floating ribs).
    """
    cav = an.cavity
    everything = cv.everything
    X, Y, Z = everything.X, everything.Y, everything.Z
    ring = ~shape.in_cav & (shape.rr_cav < (1.0 + 9.0 / cav[0]) ** 2) & (Z > -45.0)
    idx = np.nonzero(ring)
    if not idx[0].size:
        return
    x, y, z = X[idx], Y[idx], Z[idx]
    theta = np.abs(np.arctan2(x, -y)) / np.float32(np.pi)  # 0 anterior midline .. 1 posterior midline
    arc = theta * np.float32(np.pi * 0.5 * (cav[0] + cav[1]))  # arc length from the anterior midline (mm)
    costal = 80.0 - 110.0 * np.sqrt(theta)
    band = np.cos((z - 0.42 * arc - an.rib_phase) * np.float32(2.0 * np.pi / an.rib_period))
    rib = (z > costal) & (band > np.float32(math.cos(math.pi * 11.0 / an.rib_period))) & (theta < 0.86) & (theta > 0.08)
    bone = np.where(theta > 0.3, np.float32(an.hu["rib"]), np.float32(an.hu["cartilage"]))
    sel = tuple(i[rib] for i in idx)
    cv.hu[sel] = bone[rib]
    cv.lab[sel] = 0


def _paint_thorax(an: _Anatomy, cv: _Canvas, shape: _BodyShape) -> None:
    """Diaphragm and lung bases, then the heart on the central tendon.

    The lungs lie above two domes (posterior recesses deepest), inside the rib cage, outside the mediastinum.
    """
    hu, in_cav = an.hu, shape.in_cav
    blk = cv.everything
    x, y, z = blk.X, blk.Y, blk.Z
    right = x < 0
    peak = np.where(right, np.float32(an.dome[0]), np.float32(an.dome[1]))
    xc = np.where(right, np.float32(-70.0), np.float32(70.0))
    ys = np.where(y > 5.0, np.float32(88.0), np.float32(120.0))
    zd = peak - 75.0 * (((x - xc) / 85.0) ** 2 + ((y - 5.0) / ys) ** 2)
    media = (((x - 12.0) / 45.0) ** 2 + ((y + 20.0) / 80.0) ** 2 < 1.0) | ((np.abs(x - 5.0) < 32.0) & (y > -10.0))
    cv.paint(blk, in_cav & (z > zd - 6.0) & (z <= zd + 1.0) & ~media, hu["muscle"])
    lung = in_cav & (z > zd) & (shape.rr_cav < 0.95) & ~media & ~_erector(x, y, z, an.spine_y, 6.0)
    cv.paint(blk, lung, hu["lung"])
    heart_c, heart_r = (15.0, -30.0, 178.0), (82.0, 66.0, 78.0)
    hb = cv.block(np.subtract(heart_c, heart_r) - 1.0, np.add(heart_c, heart_r) + 1.0)
    if hb is not None:
        heart = (_ellipsoid_sd(hb.X, hb.Y, hb.Z, heart_c, heart_r) < 0) & (hb.Z > zd[hb.sl] + 3.0) & in_cav[hb.sl]
        cv.paint(hb, heart, hu["heart"])


def _paint_esophagus(an: _Anatomy, cv: _Canvas) -> None:
    """Esophagus (through the hiatus into the cardia)."""
    S = STRUCTURES
    eso = _Tube([[4.0, 22.0, 170.0], [10.0, 14.0, 120.0], [28.0, 8.0, 100.0], an.stomach_pts[0] + [-22.0, -10.0, 0.0]], [8.0, 8.0, 8.5, 9.0])
    lo, hi = eso.box(1.0)
    blk = cv.block(lo, hi)
    if blk is None:
        return
    sd = eso.sd(cv, blk, 1.0)
    m = (sd < 0) & (cv.lab[blk.sl] != S["stomach"])
    cv.paint(blk, m, an.hu["gut_wall"] - 25.0, S["esophagus"])
    cv.paint(blk, m & (sd < -6.0), an.hu["gas"], S["esophagus"])


def _paint_aorta(an: _Anatomy, cv: _Canvas) -> None:
    """Aorta with its iliac bifurcation and wall calcifications."""
    label = STRUCTURES["aorta"]
    bif = an.aorta_pts[-1]
    aorta = _Tube(an.aorta_pts, [an.aorta_r * 1.15, an.aorta_r * 1.05, an.aorta_r, an.aorta_r * 0.9])
    iliacs = [
        _Tube([bif, bif + [s * 12.0, -2.0, -20.0], bif + [s * 38.0, -6.0, -60.0]], [an.aorta_r * 0.7, an.aorta_r * 0.65, an.aorta_r * 0.6]) for s in (-1, 1)
    ]
    for t in [aorta] + iliacs:
        lo, hi = t.box(1.0)
        blk = cv.block(lo, hi)
        if blk is not None:
            sd = t.sd(cv, blk, 1.0)
            cv.paint(blk, sd < 0, an.hu["aorta"], label)
            for frac in an.calcified if t is aorta else ():
                cz = 60.0 - frac * 150.0
                cal = (sd < 0) & (sd > -2.5) & (np.abs(blk.Z - cz) < 3.0) & (blk.X > 14.0)
                cv.paint(blk, cal, 700.0, label)


def _paint_ivc(an: _Anatomy, cv: _Canvas) -> None:
    """Inferior vena cava with the iliac veins (where the aorta is not)."""
    S = STRUCTURES
    ivc_bif = an.ivc_pts[0]
    ivc = _Tube(an.ivc_pts, [an.ivc_r] * 4, scale=(1.0, 1.35, 1.0))
    ilv = [_Tube([ivc_bif, ivc_bif + [s * 20.0 + 20.0, 6.0, -50.0]], [an.ivc_r * 0.75, an.ivc_r * 0.7], smooth=1) for s in (-1, 1)]
    for t in [ivc] + ilv:
        lo, hi = t.box(1.0)
        blk = cv.block(lo, hi)
        if blk is not None:
            cv.paint(blk, (t.sd(cv, blk, 1.0) < 0) & (cv.lab[blk.sl] != S["aorta"]), an.hu["ivc"], S["inferior vena cava"])


def _paint_spine(an: _Anatomy, cv: _Canvas) -> None:
    """Vertebral column: bodies (cancellous, cortical rim and endplates), discs, posterior elements, canal."""
    hu = an.hu
    blk = cv.block((-60.0, 0.0, -_FAR), (60.0, _FAR, _FAR))
    if blk is None:
        return
    x, y, z = blk.X, blk.Y, blk.Z
    ys = _spine_y(an.spine_y, z)
    a = an.spine_a + 0.03 * (40.0 - z)
    b = an.spine_b + 0.01 * (40.0 - z)
    rho = np.sqrt((x / a) ** 2 + ((y - ys) / b) ** 2)
    level = np.mod(z - an.spine_phase, an.spine_period)
    half = an.spine_disc / 2.0
    in_body = (level > half) & (level < an.spine_period - half)
    edge = np.minimum(level - half, an.spine_period - half - level)
    vb = rho < 1.0
    label = STRUCTURES["vertebral column"]
    cv.paint(blk, vb & ~in_body & (rho < 1.03), hu["disc"], label)
    cv.paint(blk, vb & in_body, hu["cancellous"], label)
    cortex = vb & in_body & ((rho > 1.0 - 1.5 / a) | (edge < 1.2))
    cv.paint(blk, cortex, hu["cortical"], label)
    # posterior elements: pedicles/laminae ring around the canal, spinous and transverse processes
    cy = ys + b + 11.0
    canal = (x / 11.0) ** 2 + ((y - cy) / 8.5) ** 2 < 1.0
    ring = ((x / 18.0) ** 2 + ((y - cy) / 15.5) ** 2 < 1.0) & (y > ys + b - 4.0) & (level > 2.0) & (level < an.spine_period - 4.0)
    shift = np.mod(level - 0.35 * (y - cy), an.spine_period)
    spinous = (np.abs(x) < 4.0) & (y > cy) & (y < cy + 40.0) & (shift > 4.0) & (shift < an.spine_period * 0.62)
    transverse = (
        (np.abs(x) < 40.0 - 0.02 * (y - cy) ** 2) & (np.abs(y - cy + 3.0) < 4.5) & (level > an.spine_period * 0.35) & (level < an.spine_period * 0.7)
    )
    posterior = (ring | spinous | transverse) & ~canal
    cv.paint(blk, posterior, hu["cancellous"] + 0.25 * (hu["cortical"] - hu["cancellous"]), label)
    cv.paint(blk, canal & (y > ys + b), hu["canal"])


def _paint_table(an: _Anatomy, cv: _Canvas) -> None:
    """Patient table (carbon shell and foam core), below the back."""
    t0 = an.cavity[2] + an.muscle[2] + an.fat[2] + 2.0
    blk = cv.block((-240.0, t0, -_FAR), (240.0, t0 + 30.0, _FAR))
    if blk is None:
        return
    x, y = blk.X, blk.Y
    curve = t0 + 0.0006 * x**2
    inside = (np.abs(x) < 230.0) & (y >= curve) & (y < curve + 28.0)
    cv.paint(blk, inside, -600.0)
    cv.paint(blk, inside & ((y < curve + 3.0) | (y > curve + 25.0)), 250.0)


def _render(an: _Anatomy, cv: _Canvas) -> None:
    """Paint the anatomy onto the canvas (later structures overwrite earlier ones)."""
    shape = _paint_body(an, cv)
    _paint_small_bowel(an, cv)
    _paint_colon(an, cv)
    _paint_liver(an, cv)
    _paint_gallbladder(an, cv)
    _paint_stomach(an, cv)
    _paint_spleen(an, cv)
    _paint_back_muscles(an, cv, shape.in_cav)
    for side in ("right", "left"):
        _paint_kidney(an, cv, side)
    for side in ("right", "left"):
        _paint_adrenal(an, cv, side)
    _paint_pancreas(an, cv)
    _paint_duodenum(an, cv)
    _paint_portal_veins(an, cv)
    _paint_wall(an, cv, shape)
    _paint_ribs(an, cv, shape)
    _paint_thorax(an, cv, shape)
    _paint_esophagus(an, cv)
    _paint_aorta(an, cv)
    _paint_ivc(an, cv)
    _paint_spine(an, cv)
    _paint_table(an, cv)


def _blur_noise_gain(spacing: Sequence[float], sigma: Sequence[float]) -> float:
    """Factor by which the Gaussian blur scales the SD of white noise (root sum of squares of its impulse response)."""
    size = [max(9, 2 * math.ceil(4.0 * s / sp) + 1) for s, sp in zip(sigma, spacing)]
    delta = np.zeros(size[::-1], dtype=np.float32)
    delta[tuple(n // 2 for n in size[::-1])] = 1.0
    img = sitk.GetImageFromArray(delta)
    img.SetSpacing([float(v) for v in spacing])
    k = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, list(sigma)))  # a copy: the filter output is a temporary
    return float(np.sqrt(np.sum(np.square(k, dtype=np.float64))))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def generate_phantom(
    seed: int = 0,
    *,
    spacing: Sequence[float] | None = None,
    orientation: str = "random",
    size_mm: Sequence[float] = DEFAULT_SIZE_MM,
    noise_hu: float | None = None,
) -> Phantom:
    """Generate one synthetic abdominal CT with its label map.

    Args:
        seed: non-negative integer; the same seed gives the same phantom (anatomy,
            grid and noise).  The anatomy depends on the seed only, not on
            ``spacing``, ``orientation``, ``size_mm`` or ``noise_hu``.
        spacing: voxel spacing ``(i, j, k)`` in mm (0.1..50), or None for a random
            anisotropic spacing drawn from the seed (in-plane 1.5..2.5 mm, slices 2.5..5 mm).
        orientation: voxel grid orientation, one of :data:`ORIENTATIONS`
            (``"random"``, ``"axial"``, ``"coronal"``, ``"sagittal"``, ``"left-handed"``,
            ``"oblique"``, ``"left-handed-oblique"``).
        size_mm: field of view (left-right, anterior-posterior, inferior-superior) in mm,
            each 10..2000; default :data:`DEFAULT_SIZE_MM`.
        noise_hu: standard deviation of the image noise in HU (0..200), or None for a
            random level of 10..25 HU drawn from the seed.

    Returns:
        The :class:`Phantom` (``int16`` HU image, ``uint8`` labels of :data:`STRUCTURES`).

    Raises:
        ConfigError: an argument is out of range (ConfigError is a ValueError).
    """
    t_start = time.perf_counter()
    seed = _check_seed(seed)
    if noise_hu is not None:
        try:
            noise_val = float(noise_hu)
        except (TypeError, ValueError):
            raise ConfigError(f"noise_hu must be a number of HU in 0..200 or None; got {noise_hu!r}.") from None
        if not (math.isfinite(noise_val) and 0.0 <= noise_val <= 200.0):
            raise ConfigError(f"noise_hu must be a number of HU in 0..200 or None; got {noise_hu!r}.")
    grid = phantom_grid(seed, spacing=spacing, orientation=orientation, size_mm=size_mm)
    canvas = _Canvas(grid)
    anatomy = _Anatomy(seed)
    _render(anatomy, canvas)
    labels = sitk.GetImageFromArray(canvas.lab)
    labels.CopyInformation(grid)

    noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_NOISE_STREAM,)))
    level = float(noise_rng.uniform(10.0, 25.0))
    if noise_hu is not None:
        level = noise_val
    # white noise added before the point-spread blur (partial volume, wider along thick slices) comes out
    # slightly correlated; it is pre-scaled by the blur's noise gain so that its final SD is `level`
    sigma = [float(v) for v in np.maximum(0.6, 0.35 * np.array(grid.GetSpacing(), dtype=float))]
    hu = canvas.hu
    if level > 0:
        noise = noise_rng.standard_normal(hu.shape, dtype=np.float32)
        noise *= level / _blur_noise_gain(grid.GetSpacing(), sigma)
        hu += noise
    img = sitk.GetImageFromArray(hu)
    img.CopyInformation(grid)
    arr = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, sigma))
    np.clip(np.rint(arr), -1024, 3071, out=arr)
    image = sitk.GetImageFromArray(arr.astype(np.int16))
    image.CopyInformation(grid)
    d = np.array(grid.GetDirection()).reshape(3, 3)
    seconds = time.perf_counter() - t_start
    meta = {
        "generator": "repux.data.phantom",
        "orientation": _check_orientation(orientation),
        "spacing": [float(v) for v in grid.GetSpacing()],
        "size": [int(v) for v in grid.GetSize()],
        "determinant": float(round(np.linalg.det(d))),
        "noise_hu": round(level, 3),
        "seconds": round(seconds, 3),
    }
    logger.debug("phantom seed %d: %s grid %s, %.2f s", seed, meta["orientation"], meta["size"], seconds)
    return Phantom(image, labels, seed, meta)


def _check_dataset_arguments(n: Any, seed: Any, val_fraction: Any, orientation: str, spacing: Any, label_set: LabelSet) -> tuple[int, int, float, str, Any]:
    """The checked ``(n, seed, val_fraction, orientation, spacing)`` of :func:`write_phantom_dataset` (ConfigError naming
    the argument otherwise); warns about labels of ``label_set`` that no phantom structure draws."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ConfigError(f"n must be an integer >= 1 (number of phantoms); got {n!r}.")
    n = int(n)
    seed = _check_seed(seed)
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"val_fraction must be a number with 0 <= val_fraction < 1; got {val_fraction!r}.") from None
    if not (0.0 <= vf < 1.0):
        raise ConfigError(f"val_fraction must be a number with 0 <= val_fraction < 1; got {val_fraction!r}.")
    orientation = _check_orientation(orientation)
    if spacing is not None:
        spacing = _check_triple(spacing, "spacing", 0.1, 50.0)
    lut = _structure_lut(label_set)
    matched = {int(v) for v in lut if v}
    if not matched:
        raise ConfigError(f"label_set {label_set.name!r} ({', '.join(label_set.names)}) names no phantom structure; phantoms draw: {', '.join(STRUCTURES)}.")
    missing = [lab.name for lab in label_set if lab.value not in matched]
    if missing:
        logger.warning("label_set %r: %s not drawn by the phantom; these labels stay empty.", label_set.name, ", ".join(missing))
    return n, seed, vf, orientation, spacing


def write_phantom_dataset(
    out_dir: str | Path,
    n: int,
    *,
    label_set: LabelSet = FLARE,
    seed: int = 0,
    val_fraction: float = 0.2,
    spacing: Sequence[float] | None = None,
    orientation: str = "random",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Write a training dataset of ``n`` phantoms with a RepUX manifest.

    Phantom ``i`` is ``generate_phantom(seed + i, ...)``, written as
    ``imagesTr/phantom_XXX.nii.gz`` (int16 HU) and ``labelsTr/phantom_XXX.nii.gz``
    (uint8, values of ``label_set``), so a dataset is reproducible from ``seed``.
    The manifest ``repux-dataset.json`` lists every case with an explicit
    ``"train"`` or ``"val"`` split (held-out cases drawn with
    :func:`~repux.data.datasets.split_cases`; at least one validation case when
    ``val_fraction > 0`` and ``n >= 2``).

    Args:
        out_dir: dataset folder (created; existing phantom files are replaced).
        n: number of phantoms, >= 1.
        label_set: labels of the label maps; every label should name a phantom
            structure (:data:`STRUCTURES`; ``"kidney"`` collects both kidneys).
        seed: seed of the first phantom (non-negative integer).
        val_fraction: fraction of validation cases, 0 <= val_fraction < 1.
        spacing: voxel spacing for every phantom, or None for random spacings.
        orientation: grid orientation (:data:`ORIENTATIONS`) for every phantom.
        progress: receives a :class:`~repux.progress.ProgressEvent` after each phantom.
        cancel: checked after each phantom; raises :class:`~repux.errors.Cancelled`.

    Returns:
        The path of ``repux-dataset.json``.

    Raises:
        ConfigError: an argument is out of range or ``label_set`` names no phantom structure.
        Cancelled: ``cancel`` was set.
    """
    n, seed, vf, orientation, spacing = _check_dataset_arguments(n, seed, val_fraction, orientation, spacing, label_set)
    root = Path(out_dir)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    tracker = ProgressTracker(progress, {"phantoms": 1.0}, cancel)
    tracker.update("phantoms", 0.0, f"generating {n} phantoms")
    width = max(3, len(str(n - 1)))
    cases: list[Case] = []
    for i in range(n):
        s = seed + i
        ph = generate_phantom(s, spacing=spacing, orientation=orientation)
        cid = f"phantom_{i:0{width}d}"
        img_path = write_image(ph.image, root / "imagesTr" / f"{cid}.nii.gz")
        lab_path = write_image(ph.label_map(label_set), root / "labelsTr" / f"{cid}.nii.gz")
        cases.append(Case(cid, img_path, lab_path, None, {"seed": s}))
        tracker.update("phantoms", (i + 1) / n, f"phantom {i + 1}/{n}", case=cid)
    train, val = split_cases(cases, vf, seed)
    for c in train:
        c.split = "train"
    for c in val:
        c.split = "val"
    extra = {
        "generator": {
            "name": "repux.data.phantom",
            "seed": seed,
            "n": n,
            "orientation": orientation,
            "spacing": None if spacing is None else list(spacing),
            "val_fraction": vf,
        }
    }
    path = write_manifest(root, label_set, cases, name="phantoms", extra=extra)
    tracker.done(f"wrote {n} phantoms ({len(train)} train, {len(val)} val) to {root}")
    logger.info("wrote %d phantoms (%d train, %d val) to %s", n, len(train), len(val), root)
    return path
