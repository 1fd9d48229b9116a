"""Click-to-segment: a resident engine session that answers "which organ is under this point?".

:class:`InteractiveSession` keeps the deploy-folded model, the volume on the
model grid and every computed window in memory.  A click

1. maps the RAS point onto the input grid (refused when outside the volume) and
   onto the model grid;
2. runs the sliding windows that cover the clicked voxel, placed and blended
   exactly as the full pass (:func:`repux.inference.segmenter.window_layout`, Gaussian
   weights, the same summation order), so every voxel it labels has the value
   Apply gives it, bit for bit;
3. reads the organ label under the click (background: "no organ here",
   nothing changes);
4. keeps the connected component of that organ containing the click and grows
   into neighbouring windows while the component touches a voxel not labelled
   yet (a window face that is not the image border), so a large liver is never
   cut at a window edge;
5. resamples the component onto the *input* grid (nearest neighbour, as Apply)
   and keeps the face-connected component containing the clicked voxel there:
   the result equals the component of Apply's organ containing the click,
   voxel for voxel (a paired organ such as "kidney" gives the clicked side).

A voxel of the model grid is *final* once every window covering it is
computed; only final voxels are ever labelled.  After :meth:`open`, a
background thread computes the remaining windows (those nearest the latest
click first) so later clicks find their region computed ("warm").

Corrections (no training needed; confident errors need trained guidance):

* a negative click (``positive=False``) on a selected organ removes the
  connected blob under the click from the session's label map;
* a positive click with ``organ=NAME`` where that organ is missing grows it over
  the connected voxels around the click whose blended probability of ``NAME``
  is at least ``grow_threshold`` (default :data:`GROW_THRESHOLD`), on the
  voxels the model grid labels as background or as that organ.

The session's label map (input grid) holds what the clicks selected; each click
returns a :class:`ClickResult` with the crop of that map over the changed box
(and its index offset), so a front end writes back only that box.  :meth:`undo`
restores the state before the last change.

Memory: the blended probabilities of the labelled voxels (float16, one channel
per class on the model grid) plus the raw output of the windows whose box is
not final yet (float32).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.errors import Cancelled, ConfigError, InputImageError
from repux.progress import CancelToken, ProgressCallback, ProgressEvent, ProgressTracker

__all__ = ["GROW_THRESHOLD", "ClickResult", "InteractiveSession"]

logger = logging.getLogger(__name__)

#: probability a voxel needs to join an organ grown by a positive click where the organ is missing
GROW_THRESHOLD = 0.3

#: value of a model-grid voxel whose windows are not all computed yet
UNKNOWN = 255

#: click outcomes
STATUSES = ("added", "unchanged", "removed", "grown", "corrected", "no-organ", "outside", "cancelled")


@dataclass
class ClickResult:
    """What :meth:`InteractiveSession.click` (and :meth:`~InteractiveSession.undo`) returns.

    Attributes:
        status: ``added`` (an organ component selected), ``unchanged`` (already selected),
            ``removed`` (negative click), ``grown`` (positive click with ``organ``),
            ``no-organ`` (background under the click), ``outside`` (not in the volume),
            ``undone``, ``reset``.
        organ: the organ's name (None for no-organ/outside).
        value: the organ's label value in the model's label set (0 when none).
        labels: the session's label map (input grid, uint8) cropped to the changed box,
            with that box's geometry; None when nothing changed.
        offset: index ``(i, j, k)`` of the crop's first voxel on the input grid.
        seconds: time the click took.
        windows: windows computed for this click (0: all were computed already).
        index: the clicked voxel ``(i, j, k)`` on the input grid (None outside).
        message: one line for the user.
    """

    status: str
    organ: str | None = None
    value: int = 0
    labels: sitk.Image | None = None
    offset: tuple[int, int, int] = (0, 0, 0)
    seconds: float = 0.0
    windows: int = 0
    index: tuple[int, int, int] | None = None
    positive: bool = True
    message: str = ""
    voxels: int = 0

    @property
    def changed(self) -> bool:
        return self.labels is not None and self.status in ("added", "removed", "grown", "corrected", "undone", "reset")

    def array(self) -> np.ndarray | None:
        """The crop as a ``(k, j, i)`` array (None when nothing changed)."""
        return None if self.labels is None else sitk.GetArrayFromImage(self.labels)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "status": self.status,
            "organ": self.organ,
            "value": self.value,
            "positive": self.positive,
            "message": self.message,
            "seconds": round(self.seconds, 4),
            "windows": self.windows,
            "index": list(self.index) if self.index is not None else None,
            "voxels": self.voxels,
        }
        if self.labels is not None:
            d["offset"] = list(self.offset)
            d["size"] = list(self.labels.GetSize())
        return d


def _face_component(mask: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """The face-connected component of ``mask`` containing ``seed`` (SimpleITK's ConnectedComponent default)."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask)
    v = lab[seed]
    return lab == v if v else np.zeros_like(mask)


def _full_component(mask: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    v = lab[seed]
    return lab == v if v else np.zeros_like(mask)


def _bbox(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != 0)))[0]
    if idx.size == 0:
        return None
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.nonzero(mask.any(axis=other))[0]
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    return tuple(lo), tuple(hi)


class InteractiveSession:
    """A resident click-to-segment session over one volume at a time.

    Args:
        model: installed model id or model folder (default: the built-in model); ignored
            when ``segmenter`` is given.
        device: ``auto|cpu|cuda|cuda:N|mps``.
        segmenter: a ready :class:`~repux.inference.segmenter.Segmenter` (tests inject one with a predictor).
        background: compute the whole volume in a background thread after :meth:`open`.
        grow_threshold: probability for positive clicks that grow a missing organ.
        guided: with a click-guidance model (``repux finetune --interactive``), feed corrections to the network:
            a positive click naming an organ and a negative click become heatmaps, the windows they reach are run
            again, and the change is kept only in the connected region around the click (status ``corrected`` /
            ``removed``). A plain click (positive, no organ) still selects.
        progress: callback for the background pass (stage ``"background"``).
        **options: more :class:`~repux.inference.segmenter.Segmenter` options (threads, overlap...).

    Example:
        >>> s = InteractiveSession("repux-tiny-phantom", device="cpu")  # doctest: +SKIP
        >>> s.open("ct.nii.gz")  # doctest: +SKIP
        >>> r = s.click((-60.0, 10.0, 25.0))  # doctest: +SKIP
        >>> r.organ, r.offset, r.labels.GetSize()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        segmenter: Any = None,
        background: bool = True,
        grow_threshold: float = GROW_THRESHOLD,
        progress: ProgressCallback | None = None,
        guided: bool = True,
        **options: Any,
    ) -> None:
        if not 0.0 < float(grow_threshold) < 1.0:
            raise ConfigError(f"grow_threshold must be in (0, 1); got {grow_threshold!r}.")
        if options.get("organs") or options.get("largest_component") or options.get("tta"):
            raise ConfigError("an interactive session uses all organs of the model, without TTA or largest-component clean-up.")
        if segmenter is None:
            from repux.inference.segmenter import Segmenter
            from repux.models.store import DEFAULT_MODEL

            segmenter = Segmenter(model or DEFAULT_MODEL, device=device, **options)
        self.segmenter = segmenter
        self.labels = segmenter.model_labels
        self.background = background
        self.grow_threshold = float(grow_threshold)
        #: a click-guidance model: positive clicks naming an organ and negative clicks are fed to the network
        self.guided = bool(guided) and getattr(segmenter, "guidance", None) is not None
        self.progress = progress
        self._lock = threading.RLock()  # the network and the window state
        self._urgent = 0  # clicks waiting for the lock: the background thread yields
        self._bg_thread: threading.Thread | None = None
        self._bg_cancel: CancelToken | None = None
        self._focus: np.ndarray | None = None
        self._image: sitk.Image | None = None
        self.open_seconds = 0.0

    # ------------------------------------------------------------------ open / close
    @property
    def is_open(self) -> bool:
        return self._image is not None

    @property
    def image(self) -> sitk.Image:
        if self._image is None:
            raise ConfigError("no volume is open in the session: call open(image) first.")
        return self._image

    def open(
        self, image: sitk.Image | str | Path, *, series_uid: str | None = None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
    ) -> dict[str, Any]:
        """Read (a path) or take (a SimpleITK image) a volume, bring it onto the model grid, start the background pass.

        Returns a summary: input and model-grid sizes, windows, seconds.
        """
        import torch

        from repux.inference.segmenter import STAGES, importance_map, window_layout

        self.close_volume()
        t0 = time.perf_counter()
        tracker = ProgressTracker(progress, {"load": STAGES["load"], "preprocess": STAGES["preprocess"]}, cancel)
        seg = self.segmenter
        prepared = seg.prepare(image, series_uid=series_uid, tracker=tracker)
        x = prepared.x
        assert x is not None
        roi = [int(r) for r in seg.settings.roi_size]
        pad, slices = window_layout(x.shape[2:], roi, seg.settings.overlap)
        if any(pad):
            x = torch.nn.functional.pad(x, pad, mode="constant", value=0.0)
        self._x = x
        self._pad_lo = np.array([pad[4], pad[2], pad[0]])
        self._crop_start = np.array([c.start for c in prepared.crop])
        self._crop_stop = np.array([c.stop for c in prepared.crop])
        self._roi = np.array(roi)
        self._slices = slices
        self._starts = np.array([[s.start for s in sl] for sl in slices])
        self._weight = importance_map(roi, seg.settings.mode, "cpu")
        size = tuple(int(s) for s in x.shape[2:])
        self._cover = np.zeros(size, np.uint8)
        for sl in slices:
            self._cover[sl] += 1
        self._done_count = np.zeros(size, np.uint8)
        self._done = np.zeros(len(slices), bool)
        self._probs: dict[int, Any] = {}
        grid_shape = tuple(int(s) for s in prepared.grid_shape)
        self._grid_image = prepared.grid_image
        self._grid_shape = grid_shape
        self._grid_labels = np.zeros(grid_shape, np.uint8)
        self._grid_final = np.ones(grid_shape, bool)
        self._grid_labels[prepared.crop] = UNKNOWN
        self._grid_final[prepared.crop] = False
        self._grid_prob: np.ndarray | None = None  # (C, X, Y, Z) float16, allocated with the first window
        self._image = prepared.image
        self._state = np.zeros(sitk.GetArrayViewFromImage(prepared.image).shape, np.uint8)  # (k, j, i)
        # (input box, its previous state, and for a guided correction: (grid box, its previous labels))
        self._history: list[tuple[tuple[slice, ...], np.ndarray, Any]] = []
        self._guide: list[Any] = []  # guidance clicks (GridClick, padded model-grid coordinates) of a click-guidance model
        self._focus = None
        self.open_seconds = time.perf_counter() - t0
        info = {
            "input_size": list(prepared.image.GetSize()),
            "model_grid_size": list(grid_shape),
            "windows": len(slices),
            "seconds": round(self.open_seconds, 3),
            "labels": self.labels.names,
            "warnings": prepared.warnings,
        }
        logger.debug("session open: %s input, model grid %s, %d windows, %.2f s", info["input_size"], grid_shape, len(slices), self.open_seconds)
        if self.background:
            self._start_background()
        return info

    def close_volume(self) -> None:
        """Stop the background pass and forget the volume (the model stays loaded)."""
        self._stop_background()
        self._image = None
        self._probs = {}
        self._x = None

    def close(self) -> None:
        """Stop the background pass and free the volume and the model."""
        self.close_volume()
        self.segmenter = None

    def __enter__(self) -> InteractiveSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ background pass
    @property
    def windows_done(self) -> int:
        return int(self._done.sum()) if self.is_open else 0

    @property
    def windows_total(self) -> int:
        return len(self._slices) if self.is_open else 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background pass is done (True) or ``timeout`` seconds passed (False)."""
        t = self._bg_thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return bool(self.is_open and self._done.all())

    def compute_all(self, cancel: CancelToken | None = None) -> None:
        """Compute every window now (in the calling thread)."""
        while True:
            with self._lock:
                i = self._next_window()
                if i is None:
                    return
                if cancel is not None:
                    cancel.check()
                self._compute_window(i)

    def _start_background(self) -> None:
        token = CancelToken()
        self._bg_cancel = token
        self._bg_thread = threading.Thread(target=self._background, args=(token,), name="repux-session-background", daemon=True)
        self._bg_thread.start()

    def _stop_background(self) -> None:
        if self._bg_cancel is not None:
            self._bg_cancel.cancel("session closed")
        if self._bg_thread is not None:
            self._bg_thread.join()
        self._bg_thread = None
        self._bg_cancel = None

    def _background(self, token: CancelToken) -> None:
        total = len(self._slices)
        try:
            while not token.cancelled:
                while self._urgent and not token.cancelled:
                    time.sleep(0.002)
                with self._lock:
                    if token.cancelled:
                        return
                    i = self._next_window()
                    if i is None:
                        break
                    self._compute_window(i)
                    done = int(self._done.sum())
                if self.progress is not None:
                    self.progress(ProgressEvent("background", done / total, f"window {done}/{total}", None, {"windows_done": done, "windows_total": total}))
        except Exception:  # noqa: BLE001 - a background failure must not kill the session; clicks compute their own windows
            logger.exception("the background pass failed; clicks still compute their windows")

    def _next_window(self) -> int | None:
        todo = np.nonzero(~self._done)[0]
        if todo.size == 0:
            return None
        if self._focus is None:
            return int(todo[0])
        centres = self._starts[todo] + self._roi / 2.0
        return int(todo[np.argmin(((centres - self._focus) ** 2).sum(1))])

    # ------------------------------------------------------------------ windows and stitching
    def _compute_window(self, i: int) -> None:
        """Run the network on window ``i`` (caller holds the lock) and label the voxels that became final."""
        import torch

        seg = self.segmenter
        sl = self._slices[i]
        with torch.inference_mode():
            batch = torch.cat([self._x[(slice(None), slice(None), *sl)]]).to(seg.device)
            probs = seg._probabilities(batch).to("cpu", torch.float32)
        self._probs[i] = probs[0]
        self._done[i] = True
        self._done_count[sl] += 1
        self._finalize(sl)

    def _finalize(self, box: tuple[slice, ...]) -> None:
        """Blend (in the full pass's order) and label the voxels of ``box`` whose windows are now all computed."""
        import torch

        done = self._done_count[box]
        lo_p = np.array([s.start for s in box])
        # padded -> grid coordinates; voxels of the padding are not labelled
        g_lo = np.maximum(lo_p - self._pad_lo + self._crop_start, self._crop_start)
        g_hi = np.minimum(lo_p + np.array(done.shape) - self._pad_lo + self._crop_start, self._crop_stop)
        if np.any(g_hi <= g_lo):
            return
        p_lo = g_lo - self._crop_start + self._pad_lo
        p_hi = g_hi - self._crop_start + self._pad_lo
        sub = tuple(slice(int(a), int(b)) for a, b in zip(p_lo, p_hi))
        gsub = tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi))
        newly = (self._done_count[sub] == self._cover[sub]) & ~self._grid_final[gsub]
        if not newly.any():
            return
        nb = _bbox(newly)
        assert nb is not None
        p_lo = p_lo + np.array(nb[0])
        p_hi = p_lo + (np.array(nb[1]) - np.array(nb[0]))
        g_lo = g_lo + np.array(nb[0])
        sub = tuple(slice(int(a), int(b)) for a, b in zip(p_lo, p_hi))
        gsub = tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_lo + (p_hi - p_lo)))
        newly = newly[tuple(slice(a, b) for a, b in zip(nb[0], nb[1]))]
        shape = tuple(int(v) for v in p_hi - p_lo)
        acc: torch.Tensor | None = None
        wsum = torch.zeros(shape, dtype=torch.float32)
        for v, sl in enumerate(self._slices):  # the full pass's blending order
            if v not in self._probs:
                continue  # not computed (covers no newly final voxel) or already dropped (all its voxels final)
            w_lo = self._starts[v]
            a = np.maximum(w_lo, p_lo)
            b = np.minimum(w_lo + self._roi, p_hi)
            if np.any(b <= a):
                continue
            p = self._probs[v]
            if acc is None:
                acc = torch.zeros((p.shape[0], *shape), dtype=torch.float32)
            dst = tuple(slice(int(s), int(e)) for s, e in zip(a - p_lo, b - p_lo))
            src = tuple(slice(int(s), int(e)) for s, e in zip(a - w_lo, b - w_lo))
            w = self._weight[src]
            acc[(slice(None), *dst)] += p[(slice(None), *src)] * w[None]
            wsum[dst] += w
        assert acc is not None
        lab = acc.argmax(0).numpy().astype(np.uint8)
        if self._grid_prob is None:
            self._grid_prob = np.zeros((acc.shape[0], *self._grid_shape), np.float16)
            self._grid_prob[0] = 1.0
        prob = (acc / wsum.clamp_min(1e-12)[None]).numpy().astype(np.float16)
        gl = self._grid_labels[gsub]
        gl[newly] = lab[newly]
        self._grid_final[gsub] |= newly
        gp = self._grid_prob[(slice(None), *gsub)]
        gp[:, newly] = prob[:, newly]
        # drop the raw outputs of windows whose every voxel is labelled now
        for v in list(self._probs):
            if (self._done_count[self._slices[v]] == self._cover[self._slices[v]]).all():
                del self._probs[v]

    def _windows_covering(self, padded_points: np.ndarray) -> list[int]:
        """Not yet computed windows that cover any of ``padded_points`` ``(n, 3)``."""
        need = np.zeros(len(self._slices), bool)
        todo = ~self._done
        if not todo.any() or len(padded_points) == 0:
            return []
        starts = self._starts[todo]
        idx = np.nonzero(todo)[0]
        pts = np.asarray(padded_points)
        for lo, j in zip(starts, idx):
            inside = np.all((pts >= lo) & (pts < lo + self._roi), axis=1)
            need[j] = bool(inside.any())
        return [int(j) for j in np.nonzero(need)[0]]

    def _ensure(self, padded_points: np.ndarray, cancel: CancelToken | None, counter: list[int]) -> bool:
        """Compute the windows covering the points (nearest the focus first); True when any was computed."""
        wins = self._windows_covering(padded_points)
        if self._focus is not None and wins:
            centres = self._starts[wins] + self._roi / 2.0
            wins = [wins[k] for k in np.argsort(((centres - self._focus) ** 2).sum(1), kind="stable")]
        for j in wins:
            if cancel is not None:
                cancel.check()
            if not self._done[j]:
                self._compute_window(j)
                counter[0] += 1
        return bool(wins)

    def _grid_to_padded(self, g: np.ndarray) -> np.ndarray:
        return np.asarray(g) - self._crop_start + self._pad_lo

    # ------------------------------------------------------------------ geometry
    def _input_index(self, ras: Sequence[float]) -> tuple[int, int, int] | None:
        img = self.image
        r, a, s = (float(v) for v in ras)
        c = np.array(img.TransformPhysicalPointToContinuousIndex((-r, -a, s)))
        size = np.array(img.GetSize())
        if np.any(c < -0.5) or np.any(c >= size - 0.5) or not np.all(np.isfinite(c)):
            return None
        return tuple(int(v) for v in np.clip(np.floor(c + 0.5), 0, size - 1))  # type: ignore[return-value]

    def _grid_index_of_input(self, idx: Sequence[Sequence[int]]) -> np.ndarray:
        """Model-grid voxel (nearest neighbour, as Resample) of input voxels ``(n, 3)`` (i, j, k); -1 rows when outside."""
        img, grid = self.image, self._grid_image
        o = np.array(img.GetOrigin())
        d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
        phys = o + np.asarray(idx, float) @ d.T
        go = np.array(grid.GetOrigin())
        gd = np.array(grid.GetDirection()).reshape(3, 3) * np.array(grid.GetSpacing())
        c = (phys - go) @ np.linalg.inv(gd).T
        g = np.floor(c + 0.5).astype(int)
        bad = np.any((g < 0) | (g >= np.array(self._grid_shape)), axis=1)
        g[bad] = -1
        return g

    def _input_box_of_grid(self, lo: np.ndarray, hi: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Input index box (i, j, k) covering the model-grid box [lo, hi) plus ``margin`` input voxels."""
        img, grid = self.image, self._grid_image
        corners = [(x, y, z) for x in (lo[0] - 0.5, hi[0] - 0.5) for y in (lo[1] - 0.5, hi[1] - 0.5) for z in (lo[2] - 0.5, hi[2] - 0.5)]
        pts = [grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners]
        ci = np.array([img.TransformPhysicalPointToContinuousIndex(p) for p in pts])
        size = np.array(img.GetSize())
        a = np.clip(np.floor(ci.min(0)).astype(int) - margin, 0, size)
        b = np.clip(np.ceil(ci.max(0)).astype(int) + 1 + margin, 0, size)
        return a, b

    def _resample_box(self, grid_array: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resampling of a model-grid uint8 array onto the input box [a, b) (i, j, k); ``(k, j, i)``."""
        img = self.image
        src = sitk.GetImageFromArray(np.ascontiguousarray(grid_array.transpose(2, 1, 0)))
        src.CopyInformation(self._grid_image)
        ref = sitk.Image([int(v) for v in b - a], sitk.sitkUInt8)
        ref.SetSpacing(img.GetSpacing())
        ref.SetDirection(img.GetDirection())
        ref.SetOrigin(img.TransformIndexToPhysicalPoint([int(v) for v in a]))
        out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(out)

    # ------------------------------------------------------------------ selection
    def _select(
        self, seed_in: tuple[int, int, int], seed_g: np.ndarray, predicate, cancel: CancelToken | None, counter: list[int]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The input-grid component of ``predicate`` (on final model voxels) containing ``seed_in``: (mask (k,j,i), offset a (i,j,k))."""
        size_in = np.array(self.image.GetSize())
        for _ in range(1000):
            # 1. model grid: grow until the 26-connected component touches no voxel that is not final
            while True:
                self._ensure(self._grid_to_padded(seed_g[None]), cancel, counter)
                mask = predicate() & self._grid_final
                if not mask[tuple(seed_g)]:
                    return None
                comp = _full_component(mask, tuple(int(v) for v in seed_g))
                bb = _bbox(comp)
                assert bb is not None
                lo = np.maximum(np.array(bb[0]) - 1, 0)
                hi = np.minimum(np.array(bb[1]) + 1, self._grid_shape)
                box = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi))
                from scipy import ndimage

                ring = ndimage.binary_dilation(comp[box], structure=np.ones((3, 3, 3), bool)) & ~self._grid_final[box]
                if not ring.any():
                    break
                pts = np.argwhere(ring) + lo
                if not self._ensure(self._grid_to_padded(pts), cancel, counter):
                    break  # pragma: no cover - every non-final voxel has a window left
            # 2. input grid: the face-connected component of the resampled organ containing the click
            a, b = self._input_box_of_grid(lo, hi)
            while True:
                code = np.where(self._grid_final, predicate().astype(np.uint8), UNKNOWN).astype(np.uint8)
                res = self._resample_box(code, a, b)  # (k, j, i)
                seed = tuple(int(v) for v in (np.array(seed_in) - a)[::-1])
                comp_in = _face_component(res == 1, seed)
                cb = _bbox(comp_in)
                assert cb is not None
                lo_k, hi_k = np.array(cb[0]), np.array(cb[1])
                shape_k = np.array(res.shape)
                a_k, size_k = a[::-1], size_in[::-1]
                touches = ((lo_k == 0) & (a_k > 0)) | ((hi_k == shape_k) & (a_k + shape_k < size_k))
                if not touches.any():
                    break
                grow = (b - a) // 2 + 2
                a = np.maximum(a - grow, 0)
                b = np.minimum(b + grow, size_in)
            from scipy import ndimage

            unknown = ndimage.binary_dilation(comp_in) & (res == UNKNOWN)
            if not unknown.any():
                return comp_in, a
            pts_in = np.argwhere(unknown)[:, ::-1] + a
            g = self._grid_index_of_input(pts_in)
            g = g[g[:, 0] >= 0]
            if not self._ensure(self._grid_to_padded(g), cancel, counter):
                return comp_in, a  # pragma: no cover
        raise RuntimeError("click selection did not converge")  # pragma: no cover

    def click(self, ras: Sequence[float], positive: bool = True, *, organ: str | None = None, cancel: CancelToken | None = None) -> ClickResult:
        """Select (positive) or remove (negative) the organ component under a RAS point (mm, the input's physical space).

        Args:
            ras: the point, in the RAS coordinates of the volume (a front end maps it through the
                volume's parent transform first).
            positive: True selects the organ under the point; False removes the selected blob under it.
            organ: with a positive click, the organ to grow where it is missing (see :data:`GROW_THRESHOLD`).
            cancel: a token that abandons the click between windows (a newer click wins); the state is unchanged.

        Returns:
            a :class:`ClickResult`; ``status`` says what happened (never raises for a point outside).
        """
        t0 = time.perf_counter()
        if len(ras) != 3 or not all(math.isfinite(float(v)) for v in ras):
            raise ConfigError(f"a click needs 3 finite numbers R,A,S (mm); got {list(ras)!r}.")
        self.image  # noqa: B018 - raises when not open
        idx = self._input_index(ras)
        ras_txt = ", ".join(f"{float(v):.1f}" for v in ras)
        if idx is None:
            return ClickResult("outside", positive=positive, message=f"the point ({ras_txt}) RAS is outside the volume", seconds=time.perf_counter() - t0)
        want = None
        if organ is not None:
            want = self.labels.find(organ)
            if want is None:
                raise ConfigError(f"organ {organ!r} is not one of the model's organs ({', '.join(self.labels.names)}).")
        guided = self.guided and (want is not None or not positive)
        if not positive and not guided:
            return self._remove(idx, t0)
        seed_g = self._grid_index_of_input([idx])[0]
        if seed_g[0] < 0:
            return ClickResult("no-organ", index=idx, message="no organ here", seconds=time.perf_counter() - t0)
        counter = [0]
        grid_undo = None
        if guided:
            try:
                outcome = self._guided_update(idx, seed_g, want.value if want is not None else 0, cancel, counter, t0)
            except Cancelled:
                return ClickResult("cancelled", index=idx, windows=counter[0], message="superseded by a newer click", seconds=time.perf_counter() - t0)
            if isinstance(outcome, ClickResult):
                return outcome
            grid_undo = outcome
            if not positive:
                return self._guided_removal(idx, grid_undo, counter, t0)
        picked = self._pick(idx, seed_g, want, grid_undo, cancel, counter, t0)
        if isinstance(picked, ClickResult):
            return picked
        return self._commit_selection(idx, *picked, grid_undo, counter, t0)

    def _pick(self, idx, seed_g: np.ndarray, want: Any, grid_undo: Any, cancel: CancelToken | None, counter: list[int], t0: float):
        """Under the lock: ``(value, status, component)`` of the organ a positive click selects, grows or (after a guided
        correction, ``grid_undo``) re-selects; or the ClickResult that ends the click here."""
        self._urgent += 1
        with self._lock:
            self._urgent -= 1
            self._focus = self._grid_to_padded(seed_g).astype(float)
            try:
                self._ensure(self._grid_to_padded(seed_g[None]), cancel, counter)
                value = int(self._grid_labels[tuple(seed_g)])
                status = "added"
                if grid_undo is not None:
                    if value != want.value:  # the network did not follow the click here
                        self._undo_grid(grid_undo)
                        return ClickResult(
                            "no-organ", index=idx, windows=counter[0], message=f"the model did not place {want.name} here", seconds=time.perf_counter() - t0
                        )
                    wv = want.value

                    def predicate() -> np.ndarray:
                        return self._grid_labels == wv

                    status = "corrected"
                elif want is not None and value != want.value:
                    thr = self.grow_threshold
                    v = want.value
                    p = float(self._grid_prob[(v, *seed_g)]) if self._grid_prob is not None else 0.0
                    if p < thr:
                        return ClickResult(
                            "no-organ",
                            index=idx,
                            windows=counter[0],
                            message=f"no {want.name} here (probability {p:.2f} < {thr:g})",
                            seconds=time.perf_counter() - t0,
                        )

                    def predicate() -> np.ndarray:
                        lab = self._grid_labels
                        return (self._grid_prob[v] >= thr) & ((lab == 0) | (lab == v))

                    value, status = v, "grown"
                elif value == 0:
                    return ClickResult("no-organ", index=idx, windows=counter[0], message="no organ here", seconds=time.perf_counter() - t0)
                else:

                    def predicate() -> np.ndarray:
                        return self._grid_labels == value

                found = self._select(idx, seed_g, predicate, cancel, counter)
            except Cancelled:
                return ClickResult("cancelled", index=idx, windows=counter[0], message="superseded by a newer click", seconds=time.perf_counter() - t0)
        return value, status, found

    def _commit_selection(self, idx, value: int, status: str, found: Any, grid_undo: Any, counter: list[int], t0: float) -> ClickResult:
        """Write the selected component into the session's label map (input grid) and describe the change."""
        name = self.labels.by_value(value).name
        if found is None:  # pragma: no cover - the seed is in the organ by construction
            return ClickResult("no-organ", index=idx, message="no organ here", seconds=time.perf_counter() - t0)
        comp, a = found
        cb = _bbox(comp)
        assert cb is not None
        lo_k, hi_k = np.array(cb[0]), np.array(cb[1])
        comp = comp[tuple(slice(int(p), int(q)) for p, q in zip(lo_k, hi_k))]
        off = a + lo_k[::-1]  # (i, j, k)
        box = tuple(slice(int(s), int(s + n)) for s, n in zip(off[::-1], comp.shape))
        cur = self._state[box]
        if status == "grown":
            comp = comp & ((cur == 0) | (cur == value))
        if status == "corrected":  # the organ's voxels the correction took away (inside its changed region) go too
            gone = (cur == value) & ~comp & self._changed_input(grid_undo, off, comp.shape)
        new = cur.copy()
        new[comp] = value
        if status == "corrected":
            new[gone] = 0
        if np.array_equal(new, cur):
            if status == "corrected":
                self._undo_grid(grid_undo)
            status = "unchanged"
            msg = f"{name} is already selected"
        else:
            self._history.append((box, cur.copy(), grid_undo))
            self._state[box] = new
            msg = f"{name}: {int(comp.sum())} voxels" + {"grown": " grown", "corrected": " (corrected by the click)"}.get(status, "")
        return ClickResult(
            status,
            organ=name,
            value=value,
            labels=self._crop_image(box),
            offset=tuple(int(v) for v in off),  # type: ignore[arg-type]
            seconds=time.perf_counter() - t0,
            windows=counter[0],
            index=idx,
            message=msg,
            voxels=int(comp.sum()),
        )

    # ------------------------------------------------------------------ guided corrections
    def _guided_update(self, idx, seed_g: np.ndarray, channel: int, cancel: CancelToken | None, counter: list[int], t0: float):
        """Feed one more guidance click to the network and update the model-grid labels in the connected changed
        region around it; returns ``(grid box, previous labels)`` for undo, or a ClickResult when nothing changed."""
        import torch
        from scipy import ndimage

        from repux.inference.guidance import GridClick, guided_probabilities, sigma_voxels, window_reached

        seg = self.segmenter
        g = seg.guidance
        self._urgent += 1
        with self._lock:
            self._urgent -= 1
            padded = self._grid_to_padded(seed_g)
            self._focus = padded.astype(float)
            self._ensure(padded[None], cancel, counter)  # the automatic labels around the click are the baseline
            click = GridClick(tuple(int(v) for v in padded), int(channel))
            clicks = [*self._guide, click]
            sigma = sigma_voxels(g.sigma_mm, seg.preprocessing.spacing)
            shape = self._x.shape[2:]
            boxes = [c.support(sigma, shape) for c in clicks]
            reach = [i for i, st in enumerate(self._starts) if any(window_reached(box, st, self._roi) for box in boxes)]
            lo = self._starts[reach].min(0)
            hi = (self._starts[reach] + self._roi).max(0)
            acc = None
            wsum = torch.zeros(tuple(int(v) for v in hi - lo), dtype=torch.float32)
            for i in reach:
                if cancel is not None:
                    cancel.check()
                st = self._starts[i]
                xi = self._x[(slice(None), slice(None), *self._slices[i])]
                p = guided_probabilities(seg, xi, clicks, g.channels, sigma, st)
                counter[0] += 1
                if acc is None:
                    acc = torch.zeros((p.shape[0], *wsum.shape), dtype=torch.float32)
                dst = tuple(slice(int(a - l), int(a - l + r)) for a, l, r in zip(st, lo, self._roi))
                acc[(slice(None), *dst)] += p * self._weight[None]
                wsum[dst] += self._weight
            assert acc is not None
            new_p = acc.argmax(0).numpy().astype(np.uint8)
            # padded box -> grid coordinates inside the crop
            g_lo = np.maximum(lo - self._pad_lo + self._crop_start, self._crop_start)
            g_hi = np.minimum(hi - self._pad_lo + self._crop_start, self._crop_stop)
            p_lo = g_lo - self._crop_start + self._pad_lo - lo
            gbox = tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi))
            new = new_p[tuple(slice(int(a), int(a + (b - c))) for a, b, c in zip(p_lo, g_hi, g_lo))]
            old = self._grid_labels[gbox]
            changed = (new != old) & self._grid_final[gbox]
            seed_local = tuple(int(v) for v in seed_g - g_lo)
            lab, _ = ndimage.label(changed, structure=np.ones((3, 3, 3), bool))
            near = tuple(slice(max(0, c - 1), c + 2) for c in seed_local)
            ids = np.unique(lab[near])
            ids = ids[ids > 0]
            if ids.size == 0:  # the network's answer around the click is what it was: the click is not kept
                return ClickResult("unchanged", index=idx, windows=counter[0], message="the click changed nothing here", seconds=time.perf_counter() - t0)
            region = np.isin(lab, ids)
            prev = old.copy()
            old[region] = new[region]
            self._guide.append(click)
            return (gbox, prev)

    def _undo_grid(self, grid_undo) -> None:
        """Take back a guided correction on the model grid: its labels and its guidance click (None: nothing)."""
        if grid_undo is None:
            return
        gbox, prev = grid_undo
        with self._lock:
            self._grid_labels[gbox] = prev
            if self._guide:
                self._guide.pop()

    def _changed_input(self, grid_undo, off: np.ndarray, shape_kji: tuple[int, ...]) -> np.ndarray:
        """Input-grid voxels ``(k, j, i)`` of the box at ``off`` whose model-grid label the correction changed."""
        gbox, prev = grid_undo
        changed = np.zeros(self._grid_shape, np.uint8)
        changed[gbox] = (self._grid_labels[gbox] != prev).astype(np.uint8)
        a = np.asarray(off)
        b = a + np.asarray(shape_kji)[::-1]
        return self._resample_box(changed, a, b) > 0

    def _guided_removal(self, idx, grid_undo, counter: list[int], t0: float) -> ClickResult:
        """A negative guidance click: the selected voxels whose label the correction changed are cleared."""
        gbox = grid_undo[0]
        lo = np.array([s.start for s in gbox])
        hi = np.array([s.stop for s in gbox])
        a, b = self._input_box_of_grid(lo, hi, margin=1)
        box = tuple(slice(int(p), int(q)) for p, q in zip(a[::-1], b[::-1]))
        changed = self._changed_input(grid_undo, a, tuple(int(v) for v in (b - a)[::-1]))
        cur = self._state[box]
        new_grid = np.where(changed, self._resample_box(self._grid_labels, a, b), 0)
        drop = changed & (cur > 0) & (new_grid != cur)
        if not drop.any():
            self._undo_grid(grid_undo)
            return ClickResult(
                "unchanged", index=idx, positive=False, windows=counter[0], message="the click removed nothing selected", seconds=time.perf_counter() - t0
            )
        values = np.unique(cur[drop])
        self._history.append((box, cur.copy(), grid_undo))
        cur[drop] = 0
        return self._removed(idx, box, values, int(drop.sum()), t0, windows=counter[0], how=" (corrected by the click)")

    def _remove(self, idx: tuple[int, int, int], t0: float) -> ClickResult:
        kji = idx[::-1]
        value = int(self._state[kji])
        if value == 0:
            return ClickResult("no-organ", index=idx, positive=False, message="no selected organ here", seconds=time.perf_counter() - t0)
        mask = self._state == value
        bb = _bbox(mask)
        assert bb is not None
        sub = tuple(slice(p, q) for p, q in zip(*bb))
        comp = _face_component(mask[sub], tuple(k - s.start for k, s in zip(kji, sub)))
        cb = _bbox(comp)
        assert cb is not None
        box = tuple(slice(s.start + p, s.start + q) for s, p, q in zip(sub, *cb))
        comp = comp[tuple(slice(p, q) for p, q in zip(*cb))]
        cur = self._state[box]
        self._history.append((box, cur.copy(), None))
        cur[comp] = 0
        return self._removed(idx, box, np.array([value]), int(comp.sum()), t0)

    def _removed(self, idx, box: tuple[slice, ...], values: np.ndarray, count: int, t0: float, *, windows: int = 0, how: str = "") -> ClickResult:
        """The ClickResult of a negative click that cleared ``count`` voxels of the organs ``values`` inside ``box``."""
        one = values.size == 1
        name = ", ".join(self.labels.by_value(int(v)).name for v in values)
        return ClickResult(
            "removed",
            organ=name if one else None,
            value=int(values[0]) if one else 0,
            labels=self._crop_image(box),
            offset=tuple(int(s.start) for s in box[::-1]),  # type: ignore[arg-type]
            seconds=time.perf_counter() - t0,
            windows=windows,
            index=idx,
            positive=False,
            message=f"{name}: removed {count} voxels{how}",
            voxels=count,
        )

    def _crop_image(self, box: tuple[slice, ...]) -> sitk.Image:
        crop = sitk.GetImageFromArray(np.ascontiguousarray(self._state[box]))
        img = self.image
        crop.SetSpacing(img.GetSpacing())
        crop.SetDirection(img.GetDirection())
        crop.SetOrigin(img.TransformIndexToPhysicalPoint([int(s.start) for s in box[::-1]]))
        return crop

    # ------------------------------------------------------------------ state
    def label_image(self) -> sitk.Image:
        """The session's whole label map (what the clicks selected) on the input grid."""
        out = sitk.GetImageFromArray(self._state)
        out.CopyInformation(self.image)
        return out

    def undo(self) -> ClickResult:
        """Restore the state before the last change (status ``undone``; ``unchanged`` when there is nothing to undo)."""
        t0 = time.perf_counter()
        if not self._history:
            return ClickResult("unchanged", message="nothing to undo", seconds=time.perf_counter() - t0)
        box, prev, grid_undo = self._history.pop()
        self._state[box] = prev
        self._undo_grid(grid_undo)  # a guided correction: its model-grid labels and its guidance click go too
        return ClickResult(
            "undone",
            labels=self._crop_image(box),
            offset=tuple(s.start for s in box[::-1]),  # type: ignore[arg-type]
            seconds=time.perf_counter() - t0,
            message="undone",
        )

    def reset(self) -> ClickResult:
        """Clear every selection (undoable); the computed windows stay."""
        t0 = time.perf_counter()
        bb = _bbox(self._state > 0)
        if bb is None:
            return ClickResult("unchanged", message="nothing to reset", seconds=time.perf_counter() - t0)
        box = tuple(slice(p, q) for p, q in zip(*bb))
        self._history.append((box, self._state[box].copy(), None))
        self._state[box] = 0
        return ClickResult("reset", labels=self._crop_image(box), offset=tuple(s.start for s in box[::-1]), seconds=time.perf_counter() - t0, message="reset")  # type: ignore[arg-type]


def segment_points(
    segmenter: Any,
    image: sitk.Image | str | Path,
    points: Sequence[Sequence[float]],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[sitk.Image, list[ClickResult]]:
    """The organ components under RAS ``points`` (what a session's clicks give), as one label map on the input grid.

    Raises:
        InputImageError: a point is outside the volume or on background (nothing is returned).
    """
    if not isinstance(image, sitk.Image):
        from repux.io.images import read_image

        image = read_image(image)
    check_points_inside(image, points)
    s = InteractiveSession(segmenter=segmenter, background=False)
    s.open(image, progress=progress, cancel=cancel)
    results = []
    for p in points:
        r = s.click(p, cancel=cancel)
        if r.status not in ("added", "unchanged"):
            txt = ",".join(f"{float(v):g}" for v in p)
            raise InputImageError(f"--point {txt}: {r.message}; nothing written.")
        results.append(r)
    out = s.label_image()
    s.close_volume()
    return out, results


def check_points_inside(image: sitk.Image, points: Sequence[Sequence[float]]) -> None:
    """Refuse RAS points outside the image's voxels (cheap: before a model is loaded).

    Raises:
        InputImageError: naming the first point outside.
    """
    size = np.array(image.GetSize())
    for p in points:
        r, a, s_ = (float(v) for v in p)
        c = np.array(image.TransformPhysicalPointToContinuousIndex((-r, -a, s_)))
        if np.any(c < -0.5) or np.any(c >= size - 0.5):
            txt = ",".join(f"{float(v):g}" for v in p)
            raise InputImageError(
                f"--point {txt}: the point is outside the volume (voxel index {np.round(c, 1).tolist()} of size {size.tolist()}); nothing written."
            )


def measure_latencies(segmenter: Any, *, size: Sequence[int] = (512, 512, 300), spacing: Sequence[float] = (0.8, 0.8, 1.5), seed: int = 3) -> dict[str, Any]:
    """Session open, cold click and warm click times on a synthetic CT of ``size`` voxels (``repux benchmark --sections interactive``).

    The phantom is generated on a coarse grid and resampled (linear) onto the requested grid. Cold: the liver click with
    no window computed; warm: a spleen click, then the liver again, once every window is computed.
    """
    import torch

    from repux.data.phantom import generate_phantom
    from repux.labels import FLARE

    size = [int(v) for v in size]
    spacing = [float(v) for v in spacing]
    extent = [n * sp for n, sp in zip(size, spacing)]
    ph = generate_phantom(seed, orientation="axial", spacing=(4.0, 4.0, 4.0), size_mm=extent, noise_hu=15.0)
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetDirection(ph.image.GetDirection())
    d = np.array(ph.image.GetDirection()).reshape(3, 3)
    centre = np.array(ph.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ph.image.GetSize()]))
    ref.SetOrigin(tuple(float(v) for v in centre - d @ ((np.array(size) - 1) / 2 * np.array(spacing))))
    ct = sitk.Resample(ph.image, ref, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16)
    labels = sitk.GetArrayFromImage(sitk.Resample(ph.label_map(FLARE), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    def ras(value: int) -> tuple[float, float, float]:
        pts = np.argwhere(labels == value)
        k, j, i = pts[len(pts) // 2]
        x, y, z = ct.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        return (-x, -y, z)

    out: dict[str, Any] = {"input_size": size, "input_spacing": spacing, "torch_threads": torch.get_num_threads()}
    s = InteractiveSession(segmenter=segmenter, background=False)
    t = time.perf_counter()
    info = s.open(ct)
    out.update(open_s=round(time.perf_counter() - t, 3), windows=info["windows"], model_grid_size=info["model_grid_size"])
    r = s.click(ras(1))
    out.update(cold_click_s=round(r.seconds, 3), cold_click_windows=r.windows, cold_click_organ=r.organ)
    t = time.perf_counter()
    s.compute_all()
    out["rest_of_full_pass_s"] = round(time.perf_counter() - t, 3)
    r = s.click(ras(3))
    out.update(warm_click_s=round(r.seconds, 3), warm_click_organ=r.organ)
    r = s.click(ras(1))
    out["warm_click_same_organ_s"] = round(r.seconds, 3)
    s.close_volume()
    return out
