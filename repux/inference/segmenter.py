"""The inference engine: any CT in, an organ label map in the same geometry out.

:class:`Segmenter` holds a loaded model and its settings (build it once,
segment many volumes); :func:`segment` is the one-call form.  The pipeline is

``check -> preprocess (orient, resample, HU window, body crop) -> MONAI
sliding_window_inference (Gaussian blending, optional flip TTA, AMP on GPU)
-> argmax -> optional largest-component clean-up -> nearest-neighbour
resampling onto the input grid``

and the result is a :class:`SegmentationResult` whose label image has the
input's exact voxel grid.  Progress goes to a callback as fractions of the
whole job; a :class:`~repux.progress.CancelToken` stops the job between
windows.  On CUDA out-of-memory the engine retries with a smaller
``sw_batch_size``, then stitches on the CPU, then runs on the CPU, logging
each step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from repux.config import QUALITY_PRESETS, InferenceSettings, Preprocessing
from repux.device import autocast_dtype, precision_name, resolve_device, set_threads
from repux.errors import ConfigError, InputImageError
from repux.inference.preprocess import foreground_box, from_model_grid, scale_intensity, to_model_grid
from repux.io.images import check_image, read_image, write_image, write_segmentation_nrrd
from repux.labels import LabelSet, normalize_name
from repux.models.folder import ModelCard
from repux.progress import CancelToken, ProgressCallback, ProgressTracker

__all__ = [
    "PAIRED_ORGANS",
    "PreparedCase",
    "SegmentationResult",
    "Segmenter",
    "count_windows",
    "entropy_map",
    "keep_largest_components",
    "segment",
    "select_organs",
    "stream_argmax",
]

logger = logging.getLogger(__name__)

#: organs whose single label covers a left and a right part: keep the 2 largest components
PAIRED_ORGANS = {"kidney", "kidneys", "adrenal gland", "adrenal glands", "lung", "lungs"}

#: TTA flips (network axes x, y, z of a (B, C, x, y, z) tensor)
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))

STAGES = {"load": 2.0, "preprocess": 5.0, "infer": 85.0, "postprocess": 5.0, "write": 3.0}

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` returns.

    Attributes:
        labels: label map on the input's grid (uint8), values as in ``label_set``.
        label_set: names, colours and terminology of the values.
        summary: organ volumes (mL), timings (s), device, model id and sha256...
        uncertainty: normalised entropy (0..1) on the input grid, when requested.
    """

    labels: sitk.Image
    label_set: LabelSet
    summary: dict[str, Any]
    uncertainty: sitk.Image | None = None
    image: sitk.Image | None = None

    def statistics(self) -> list[dict[str, Any]]:
        """Per-organ statistics on the input grid (see :func:`repux.inference.statistics.organ_statistics`)."""
        from repux.inference.statistics import organ_statistics

        if self.image is None:
            raise ConfigError("statistics need the input image; this result was made without it.")
        return organ_statistics(self.image, self.labels, self.label_set)

    def save(self, path: str | Path) -> Path:
        """Write the labels: ``.seg.nrrd`` as a Slicer segmentation, else a label map (``.nii.gz``, ``.nrrd``...)."""
        p = Path(path)
        if p.name.lower().endswith(".seg.nrrd"):
            return write_segmentation_nrrd(self.labels, self.label_set, p)
        return write_image(self.labels, p)

    def array(self) -> np.ndarray:
        """Label array ``(k, j, i)`` in file order."""
        return sitk.GetArrayFromImage(self.labels)


@dataclass
class PreparedCase:
    """A volume read, checked and on the model grid, waiting for (or back from) the network."""

    image: sitk.Image
    grid_image: sitk.Image
    grid_shape: tuple[int, int, int]
    crop: tuple[slice, ...]
    x: torch.Tensor | None
    warnings: list[str]
    timings: dict[str, float]
    processed_size: list[int] | None = None
    windows: int = 0
    label_crop: np.ndarray | None = None
    entropy_crop: np.ndarray | None = None


def select_organs(labels: LabelSet, organs: Sequence[str] | str | None) -> tuple[LabelSet, np.ndarray | None]:
    """The label set restricted to ``organs`` (renumbered 1..k in the model's order) and the value lookup table.

    Names match case-insensitively (and through the known aliases).  Returns ``(labels, None)``
    when ``organs`` is empty or None (all organs).

    Raises:
        ConfigError: an unknown name (the message lists the model's organs).
    """
    from repux.labels import resolve_organs

    kept = resolve_organs(labels, organs)
    if len(kept) == len(labels):
        return labels, None
    lut = np.zeros(max(256, labels.num_classes), dtype=np.uint8 if labels.num_classes < 256 else np.uint16)
    for new, lab in enumerate(kept, start=1):
        lut[lab.value] = new
    return LabelSet([lab.with_value(i) for i, lab in enumerate(kept, start=1)], name=labels.name), lut


def label_counts(array: np.ndarray, num_classes: int, chunk: int = 1 << 24) -> np.ndarray:
    """Voxels per label value, counted in chunks (``np.bincount`` on a whole uint8 volume makes an int64 copy)."""
    flat = array.reshape(-1)
    counts = np.zeros(max(num_classes, int(flat.max(initial=0)) + 1), dtype=np.int64)
    for i in range(0, flat.size, chunk):
        c = np.bincount(flat[i : i + chunk], minlength=counts.size)
        counts[: c.size] += c
    return counts


def window_layout(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[list[int], list[tuple[slice, ...]]]:
    """MONAI's sliding-window placement: the constant padding (``F.pad`` order) and the windows on the padded grid.

    The windows are in stitching order (grouped by start plane along the last axis,
    MONAI's order within a group), the order :func:`stream_argmax` blends them in;
    :class:`repux.inference.session.InteractiveSession` places and blends its windows with it.
    """
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    shape = [int(s) for s in shape]
    roi = [int(r) for r in roi_size]
    pad: list[int] = []
    for k in (2, 1, 0):  # F.pad order: last axis first
        diff = max(roi[k] - shape[k], 0)
        pad += [diff // 2, diff - diff // 2]
    size = [shape[0] + pad[4] + pad[5], shape[1] + pad[2] + pad[3], shape[2] + pad[0] + pad[1]]
    scan = _get_scan_interval(size, roi, 3, (float(overlap),) * 3)
    slices = dense_patch_slices(size, roi, scan)
    groups: dict[int, list[tuple[slice, ...]]] = {}
    for sl in slices:
        groups.setdefault(int(sl[2].start), []).append(sl)
    return pad, [sl for z0 in sorted(groups) for sl in groups[z0]]


def importance_map(roi_size: Sequence[int], mode: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The blending weight of one window (MONAI's ``compute_importance_map``, sigma_scale 0.125), ``(x, y, z)`` float32."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(r) for r in roi_size), mode=mode, sigma_scale=0.125, device=device, dtype=torch.float32)


class _ArgmaxSlab:
    """The blended sum of one slab of ``rz`` planes along the last axis, argmaxed into ``labels`` as planes become final.

    ``acc`` is ``(rz, C, X, Y)``: planes ``base .. base + rz`` of the weighted probability sum (allocated with the
    first window, when ``C`` is known); ``wsum`` the sum of the weights.
    """

    def __init__(self, size: Sequence[int], rz: int, weight_z: torch.Tensor, buffer_device: torch.device, dtype: Any, entropy: bool) -> None:
        X, Y, Z = size
        self.size = (X, Y, Z)
        self.rz = rz
        self.weight_z = weight_z  # (z, x, y)
        self.buffer_device = buffer_device
        self.dtype = dtype
        self.labels = np.zeros((X, Y, Z), dtype=dtype)
        self.ent = np.zeros((X, Y, Z), dtype=np.float32) if entropy else None
        self.acc: torch.Tensor | None = None
        self.wsum = torch.zeros((rz, X, Y), dtype=torch.float32, device=buffer_device)
        self.base = 0

    def add(self, probs: torch.Tensor, chunk: Sequence[tuple[slice, ...]]) -> None:
        """Blend the probabilities ``(B, C, x, y, z)`` of the windows ``chunk`` into the slab."""
        X, Y, _ = self.size
        rz = self.rz
        if self.acc is None:
            self.acc = torch.zeros((rz, probs.shape[1], X, Y), dtype=torch.float32, device=self.buffer_device)
        acc, wsum, w = self.acc, self.wsum, self.weight_z
        probs = probs.to(self.buffer_device, torch.float32)
        for p, sl in zip(probs, chunk):
            dz = sl[2].start - self.base
            acc[dz : dz + rz, :, sl[0], sl[1]] += p.permute(3, 0, 1, 2) * w[:, None]
            wsum[dz : dz + rz, sl[0], sl[1]] += w

    def flush(self, upto: int) -> None:
        """Argmax the planes before ``upto`` (they get no more windows) and shift the slab past them."""
        n = min(upto, self.size[2]) - self.base
        acc, wsum, base, rz = self.acc, self.wsum, self.base, self.rz
        if n <= 0 or acc is None:
            return
        a = acc[:n]
        self.labels[:, :, base : base + n] = a.argmax(1).permute(1, 2, 0).to("cpu").numpy().astype(self.dtype, copy=False)
        if self.ent is not None:
            p = a / wsum[:n, None].clamp_min(1e-12)
            self.ent[:, :, base : base + n] = entropy_map(p.transpose(0, 1)).permute(1, 2, 0).to("cpu").numpy()
        keep = rz - n
        for i in range(keep):  # shift the slab plane by plane (no second slab in memory)
            acc[i].copy_(acc[n + i])
            wsum[i].copy_(wsum[n + i])
        acc[keep:] = 0
        wsum[keep:] = 0
        self.base = base + n


def _crop_padding(labels: np.ndarray, ent: np.ndarray | None, pad: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The arrays without the constant padding ``pad`` (``F.pad`` order) :func:`window_layout` added."""
    if not any(pad):
        return labels, ent
    X, Y, Z = labels.shape
    crop = (slice(pad[4], X - pad[5]), slice(pad[2], Y - pad[3]), slice(pad[0], Z - pad[1]))
    return np.ascontiguousarray(labels[crop]), (np.ascontiguousarray(ent[crop]) if ent is not None else None)


def stream_argmax(
    x: torch.Tensor,
    predictor: Predictor,
    *,
    roi_size: Sequence[int],
    overlap: float,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    sw_device: torch.device | str = "cpu",
    buffer_device: torch.device | str = "cpu",
    entropy: bool = False,
    dtype: Any = np.uint8,
) -> tuple[np.ndarray, np.ndarray | None]:
    """MONAI's sliding-window inference, stitched slab by slab: returns the argmax label array, not probabilities.

    The windows, their order of blending and the importance map are MONAI's
    (``dense_patch_slices``, ``compute_importance_map``, constant padding of
    inputs smaller than ``roi_size``), so the labels equal
    ``sliding_window_inference(...).argmax(1)``.  But the blended probabilities
    only exist for one slab of ``roi_size[2]`` planes along the last axis (the
    windows that share a start plane are processed together; planes before the
    next start plane are final, so they are argmaxed and dropped).  The slab is
    float32 (sums of up to 8 weighted probabilities: fp16 would flip near-ties);
    for a 256x256 model grid with 16 classes it is 0.4 GB, whatever the length
    of the scan.

    Args:
        x: ``(1, 1, X, Y, Z)`` network input.
        predictor: ``(B, 1, x, y, z) -> (B, C, x, y, z)`` probabilities.
        entropy: also return the normalised entropy (float32, ``(X, Y, Z)``).

    Returns:
        ``(labels, entropy)`` as ``(X, Y, Z)`` numpy arrays.
    """
    import torch.nn.functional as F

    sw_device = torch.device(sw_device)
    buffer_device = torch.device(buffer_device)
    roi = [int(r) for r in roi_size]
    pad, slices = window_layout(x.shape[2:], roi, overlap)
    if any(pad):
        x = F.pad(x, pad, mode="constant", value=0.0)
    weight = importance_map(roi, mode, sw_device)
    weight_z = weight.permute(2, 0, 1).to(buffer_device)  # (z, x, y)
    slab = _ArgmaxSlab([int(s) for s in x.shape[2:]], roi[2], weight_z, buffer_device, dtype, entropy)
    groups: dict[int, list[tuple[slice, ...]]] = {}
    for sl in slices:
        groups.setdefault(int(sl[2].start), []).append(sl)
    for z0 in sorted(groups):
        slab.flush(z0)
        wins = groups[z0]
        for i in range(0, len(wins), sw_batch_size):
            chunk = wins[i : i + sw_batch_size]
            batch = torch.cat([x[(slice(None), slice(None), *sl)] for sl in chunk]).to(sw_device)
            slab.add(predictor(batch), chunk)
            del batch
    slab.flush(slab.size[2])
    return _crop_padding(slab.labels, slab.ent, pad)


#: an input thinner than this fraction of the model's window along an axis gets a warning
THIN_EXTENT_FRACTION = 0.25


def thin_extent_warnings(grid_shape: Sequence[int], roi_size: Sequence[int], prep: Any, name: str = "input") -> list[str]:
    """Warn (and log) when the volume covers far less than one model window along an axis.

    A network trained on whole abdomens sees 96-voxel windows; a 3-slice DICOM
    series is 1-2 voxels thick on the model grid, and what the model paints there
    (liver over fat and air) is nonsense rather than a segmentation.
    """
    out = []
    for axis, (n, roi, spacing, code) in enumerate(zip(grid_shape, roi_size, prep.spacing, prep.orientation)):
        if n < roi * THIN_EXTENT_FRACTION:
            direction = {"R": "R-L", "L": "R-L", "A": "A-P", "P": "A-P", "S": "S-I", "I": "S-I"}[code]
            out.append(
                f"{name} covers only about {n * spacing:.0f} mm along {direction} ({n} voxel{'s' if n != 1 else ''} of {spacing:g} mm on the model grid) while the model's window "
                f"spans {roi * spacing:.0f} mm: the model was trained on whole volumes and its output on so thin a volume is unreliable; "
                "segment the full series instead."
            )
    for w in out:
        logger.warning(w)
    return out


def count_windows(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI uses for an image (after padding to ``roi_size``)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = [max(int(s), int(r)) for s, r in zip(image_size, roi_size)]
    roi = [int(r) for r in roi_size]
    scan = _get_scan_interval(padded, roi, len(roi), [float(overlap)] * len(roi))
    return len(dense_patch_slices(padded, roi, scan))


def keep_largest_components(label_xyz: np.ndarray, labels: LabelSet) -> np.ndarray:
    """Keep each organ's largest connected component (two for unsided paired organs)."""
    out = label_xyz.copy()
    for lab in labels:
        mask = label_xyz == lab.value
        if not mask.any():
            continue
        keep = 2 if normalize_name(lab.name) in PAIRED_ORGANS else 1
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))), sortByObjectSize=True)
        cc_arr = sitk.GetArrayFromImage(cc)
        out[mask & (cc_arr > keep)] = 0
    return out


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of class probabilities ``(C, ...)`` normalised to 0..1 by ``log C``."""
    p = probs.clamp_min(1e-8)
    return -(p * p.log()).sum(0) / math.log(probs.shape[0])


def resolve_settings(
    base: InferenceSettings,
    device: torch.device,
    *,
    quality: str | None = None,
    overlap: float | None = None,
    tta: bool | None = None,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int | None = None,
) -> InferenceSettings:
    """``base`` with the explicit choices applied: the ``quality`` preset first, then each given value; on CUDA a
    ``sw_batch_size`` of 1 that nobody chose becomes 4."""
    changes: dict[str, Any] = {}
    if quality is not None:
        if quality not in QUALITY_PRESETS:
            raise ConfigError(f"quality must be one of {', '.join(QUALITY_PRESETS)}; got {quality!r}.")
        changes.update(QUALITY_PRESETS[quality])
    if overlap is not None:
        changes["overlap"] = overlap
    if tta is not None:
        changes["tta"] = tta
    if roi_size is not None:
        changes["roi_size"] = tuple(roi_size)
    if sw_batch_size is not None:
        changes["sw_batch_size"] = sw_batch_size
    elif device.type == "cuda" and base.sw_batch_size == 1:
        changes["sw_batch_size"] = 4
    return replace(base, **changes) if changes else base


class Segmenter:
    """A loaded model plus settings, ready to segment volumes.

    Args:
        model: an installed model id, a model folder, its ModelCard already read, or None with ``predictor``.
        device: ``auto|cpu|cuda|cuda:N|mps``. Defaults to "auto".
        settings: sliding-window settings; defaults to the model's.
        quality: ``fast|standard|best`` shortcut for overlap/TTA (overrides ``settings``).
        precision: ``auto|fp32|bf16|fp16``; auto = bf16/fp16 on GPU, fp32 on CPU.
        threads: CPU threads (default: all cores).
        largest_component: per-organ largest connected component clean-up.
        uncertainty: also compute the entropy map.
        organs: only these organs of the model (names, case-insensitive; default all) become
            labels, numbered 1..k in the model's order; the others become background.
        max_voxels: refuse inputs larger than this many voxels.
        predictor: replace the network by any callable ``(B, 1, x, y, z) -> (B, C, x, y, z)``
            (tests inject an oracle); then ``labels`` and ``preprocessing`` are required.
        algorithm: large-kernel convolution algorithm (see :mod:`repux.nn.lkconv`).
        channels_last: run the network in channels-last-3d memory format.
        compile: wrap the network with ``torch.compile``.
    """

    def __init__(
        self,
        model: str | Path | ModelCard | None = None,
        *,
        device: str = "auto",
        settings: InferenceSettings | None = None,
        quality: str | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        roi_size: Sequence[int] | None = None,
        tta: bool | None = None,
        precision: str = "auto",
        threads: int | None = None,
        largest_component: bool = False,
        uncertainty: bool = False,
        max_voxels: int | None = None,
        predictor: Predictor | None = None,
        labels: LabelSet | None = None,
        preprocessing: Preprocessing | None = None,
        algorithm: str = "auto",
        channels_last: bool = False,
        compile: bool = False,
        crop_foreground: bool | None = None,
        fold_batchnorm: bool = True,
        organs: Sequence[str] | str | None = None,
    ) -> None:
        self._setup_device(device, threads, precision)
        self.card: ModelCard | None = None
        self.net: torch.nn.Module | None = None
        self.guidance = None  # repux.config.Guidance of a click-guidance model: Apply feeds it all-zero heatmaps
        if predictor is None:
            if model is None:
                raise ConfigError("Segmenter needs a model (installed id or folder) or a predictor.")
            card = self._load_network(model, algorithm, fold_batchnorm, channels_last, compile)
            self.labels = labels or card.labels
            self.preprocessing = preprocessing or card.preprocessing
            base = card.inference
            self.guidance = card.guidance
        else:
            if labels is None or preprocessing is None:
                raise ConfigError("a custom predictor needs explicit labels and preprocessing.")
            self._predict_net = predictor
            self.labels = labels
            self.preprocessing = preprocessing
            base = settings or InferenceSettings()
        self.settings = resolve_settings(
            settings or base, self.device, quality=quality, overlap=overlap, tta=tta, roi_size=roi_size, sw_batch_size=sw_batch_size
        )
        if crop_foreground is not None:
            self.preprocessing = replace(self.preprocessing, crop_foreground=crop_foreground)
        self.model_labels = self.labels
        self.labels, self.organ_lut = select_organs(self.model_labels, organs)
        self.channels_last = channels_last
        self.largest_component = largest_component
        self.uncertainty = uncertainty
        self.max_voxels = max_voxels
        self.fallbacks: list[str] = []

    def _setup_device(self, device: str, threads: int | None, precision: str) -> None:
        """The device, its thread count (CPU) or TF32/cuDNN autotuning (CUDA), and the autocast dtype."""
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            self.threads = set_threads(threads)
        else:
            self.threads = threads or torch.get_num_threads()
            if self.device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
                torch.backends.cudnn.benchmark = True
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.precision = precision

    def _load_network(self, model: str | Path | ModelCard, algorithm: str, fold_batchnorm: bool, channels_last: bool, compile: bool) -> ModelCard:
        """Load ``model`` in its inference form (re-parameterized) onto the device; returns its card."""
        from repux.models.folder import load_model
        from repux.models.store import resolve_model

        card = model if isinstance(model, ModelCard) else resolve_model(model)
        net, card = load_model(card, device="cpu", algorithm=algorithm)
        net.reparameterize(fold_batchnorm=fold_batchnorm)
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        self.net = net.to(self.device)
        self.card = card
        self._predict_net: Predictor = torch.compile(self.net) if compile else self.net
        return card

    # ------------------------------------------------------------------ helpers
    def _network_call(self, x: torch.Tensor) -> torch.Tensor:
        if self.guidance is not None and x.shape[1] == 1:  # the image alone (CT: one channel)
            # no clicks: all-zero heatmaps, per window (the guidance weights then add nothing: Apply is the automatic model)
            x = torch.cat([x, x.new_zeros((x.shape[0], self.guidance.channels, *x.shape[2:]))], 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.amp_dtype is not None and x.device.type in ("cuda", "cpu"):
            with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
                return self._predict_net(x).float()
        return self._predict_net(x).float()

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        flips = TTA_FLIPS if self.settings.tta else ((),)
        probs = None
        for dims in flips:
            xi = x.flip(dims) if dims else x
            p = torch.softmax(self._network_call(xi), dim=1)
            p = p.flip(dims) if dims else p
            probs = p if probs is None else probs + p
        assert probs is not None
        return probs / len(flips)

    def _stream(self, x: torch.Tensor, tick: Callable[[int], None], cancel: CancelToken | None, entropy: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Sliding window with slab-wise stitching and argmax (see :func:`stream_argmax`), with the CUDA OOM fallbacks."""
        s = self.settings
        sw_batch = s.sw_batch_size
        sw_device: torch.device = self.device
        out_device: torch.device = self.device
        while True:
            try:

                def predictor(batch: torch.Tensor) -> torch.Tensor:
                    if cancel is not None:
                        cancel.check()
                    out = self._probabilities(batch)
                    tick(batch.shape[0])
                    return out

                with torch.inference_mode():
                    return stream_argmax(
                        x,
                        predictor,
                        roi_size=s.roi_size,
                        overlap=s.overlap,
                        mode=s.mode,
                        sw_batch_size=sw_batch,
                        sw_device=sw_device,
                        buffer_device=out_device,
                        entropy=entropy,
                        dtype=np.uint8 if self.model_labels.num_classes < 256 else np.uint16,
                    )
            except torch.OutOfMemoryError:
                if sw_device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                tick(-1)  # restart the window count
                if sw_batch > 1:
                    sw_batch = max(1, sw_batch // 2)
                    msg = f"CUDA out of memory: retrying with sw_batch_size={sw_batch}"
                elif out_device.type == "cuda":
                    out_device = torch.device("cpu")
                    msg = "CUDA out of memory: retrying with stitching on the CPU"
                else:
                    sw_device = torch.device("cpu")
                    if self.net is not None:
                        self.net.to("cpu")
                    self.amp_dtype = None
                    msg = "CUDA out of memory: retrying on the CPU"
                logger.warning(msg)
                self.fallbacks.append(msg)

    # ------------------------------------------------------------------ public
    def segment(
        self,
        image: sitk.Image | str | Path,
        *,
        series_uid: str | None = None,
        roi_ras: Sequence[float] | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment one volume.

        Args:
            image: a SimpleITK image or a path (file or DICOM folder).
            series_uid: DICOM series to use in a multi-series folder.
            roi_ras: restrict processing to the box ``(r0, a0, s0, r1, a1, s1)`` in RAS mm.
            progress: callback receiving :class:`~repux.progress.ProgressEvent`.
            cancel: token; when cancelled, :class:`~repux.errors.Cancelled` is raised.

        Raises:
            InputImageError: for unusable inputs; Cancelled when cancelled.
        """
        tracker = ProgressTracker(progress, STAGES, cancel)
        prepared = self.prepare(image, series_uid=series_uid, roi_ras=roi_ras, tracker=tracker)
        return self.finish(self.infer(prepared, tracker=tracker, cancel=cancel), tracker=tracker)

    def prepare(
        self, image: sitk.Image | str | Path, *, series_uid: str | None = None, roi_ras: Sequence[float] | None = None, tracker: ProgressTracker | None = None
    ) -> PreparedCase:
        """Read, check and bring a volume onto the model grid (the part a batch prefetches in a thread)."""
        tracker = tracker or ProgressTracker(None, STAGES)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tracker.update("load", 0.0, "reading the image")
        img = read_image(image, series_uid) if not isinstance(image, sitk.Image) else image
        warnings = check_image(img, max_voxels=self.max_voxels)
        timings["load"] = time.perf_counter() - t0

        t = time.perf_counter()
        tracker.update("preprocess", 0.0, "re-orienting and resampling")
        prep = self.preprocessing
        grid = to_model_grid(img, prep)
        warnings += thin_extent_warnings(grid.shape, self.settings.roi_size, prep)
        start, end = foreground_box(grid.array, prep)
        if roi_ras is not None:
            start, end = self._intersect_roi(grid.image, roi_ras, start, end)
        crop = tuple(slice(a, b) for a, b in zip(start, end))
        x = torch.from_numpy(scale_intensity(grid.array[crop], prep))[None, None]
        grid_image, grid_shape = grid.image, grid.shape
        del grid  # the HU array on the model grid is not needed any more
        timings["preprocess"] = time.perf_counter() - t
        tracker.update("preprocess", 1.0, f"model grid {grid_shape}, processing {tuple(x.shape[2:])}")
        return PreparedCase(img, grid_image, grid_shape, crop, x, warnings, timings)

    def infer(self, prepared: PreparedCase, *, tracker: ProgressTracker | None = None, cancel: CancelToken | None = None) -> PreparedCase:
        """Run the network over a prepared case: fills ``prepared.labels`` (model grid, uint8) and the entropy."""
        tracker = tracker or ProgressTracker(None, STAGES, cancel)
        x = prepared.x
        t = time.perf_counter()
        n_windows = count_windows(x.shape[2:], self.settings.roi_size, self.settings.overlap)
        done = [0]

        def tick(n: int) -> None:
            if n < 0:
                done[0] = 0
                return
            done[0] += n
            tracker.update("infer", done[0] / max(n_windows, 1), f"window {min(done[0], n_windows)}/{n_windows}", windows_done=done[0], windows_total=n_windows)

        tracker.update("infer", 0.0, f"{n_windows} windows of {self.settings.roi_size} on {self.device}", windows_done=0, windows_total=n_windows)
        label_crop, ent = self._stream(x, tick, cancel, entropy=self.uncertainty)
        if self.organ_lut is not None:
            label_crop = self.organ_lut[label_crop]
        prepared.processed_size = list(x.shape[2:])
        prepared.x = None  # free the network input
        prepared.windows = n_windows
        prepared.label_crop = label_crop
        prepared.entropy_crop = ent
        prepared.timings["infer"] = time.perf_counter() - t
        return prepared

    def finish(self, prepared: PreparedCase, *, tracker: ProgressTracker | None = None) -> SegmentationResult:
        """Clean-up and resampling of an inferred case onto its input grid; the summary."""
        tracker = tracker or ProgressTracker(None, STAGES)
        img = prepared.image
        timings = prepared.timings
        t = time.perf_counter()
        tracker.update("postprocess", 0.0, "argmax and clean-up")
        label_crop = prepared.label_crop
        assert label_crop is not None, "finish() needs an inferred case"
        full = np.zeros(prepared.grid_shape, dtype=label_crop.dtype)
        full[prepared.crop] = label_crop
        if self.largest_component:
            full = keep_largest_components(full, self.labels)
        unc_img = None
        mean_entropy = None
        if prepared.entropy_crop is not None:
            ent = prepared.entropy_crop
            organ = label_crop > 0
            mean_entropy = float(ent[organ].mean()) if organ.any() else float(ent.mean())
            ent_full = np.zeros(prepared.grid_shape, dtype=np.float32)
            ent_full[prepared.crop] = ent
            unc_img = from_model_grid(ent_full, prepared.grid_image, img, interpolator=sitk.sitkLinear)
            del ent_full
        labels_img = from_model_grid(full, prepared.grid_image, img)
        del full
        tracker.update("postprocess", 1.0, "resampled to the input grid")
        timings["postprocess"] = time.perf_counter() - t

        voxel_ml = float(np.prod(img.GetSpacing())) / 1000.0
        counts = label_counts(sitk.GetArrayViewFromImage(labels_img), self.labels.num_classes)
        summary: dict[str, Any] = {
            "input_size": list(img.GetSize()),
            "input_spacing": [round(s, 5) for s in img.GetSpacing()],
            "model_grid_size": list(prepared.grid_shape),
            "processed_size": prepared.processed_size,
            "windows": prepared.windows,
            "volumes_ml": {lab.name: round(float(counts[lab.value]) * voxel_ml, 2) for lab in self.labels},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "threads": self.threads,
            "precision": precision_name(self.amp_dtype),
            "settings": self.settings.to_dict(),
            "warnings": prepared.warnings,
            "fallbacks": list(self.fallbacks),
        }
        if self.labels is not self.model_labels:
            summary["organs"] = self.labels.names
        if mean_entropy is not None:
            summary["mean_entropy"] = round(mean_entropy, 6)
        if self.card is not None:
            summary["model"] = {"id": self.card.id, "version": self.card.version, "sha256": self.card.sha256}
        return SegmentationResult(labels_img, self.labels, summary, unc_img, image=img)

    def _intersect_roi(self, grid_image: sitk.Image, roi_ras: Sequence[float], start, end):
        if len(roi_ras) != 6:
            raise ConfigError(f"roi must be 6 numbers r0,a0,s0,r1,a1,s1 (RAS mm); got {list(roi_ras)}.")
        r0, a0, s0, r1, a1, s1 = (float(v) for v in roi_ras)
        corners = [(-r, -a, s) for r in (r0, r1) for a in (a0, a1) for s in (s0, s1)]  # RAS -> LPS
        idx = np.array([grid_image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
        lo = np.floor(idx.min(0)).astype(int)
        hi = np.ceil(idx.max(0)).astype(int) + 1
        new_start = tuple(int(max(s, lo_i)) for s, lo_i in zip(start, lo))
        new_end = tuple(int(min(e, hi_i)) for e, hi_i in zip(end, hi))
        if any(b <= a for a, b in zip(new_start, new_end)):
            raise InputImageError(f"the ROI {list(roi_ras)} (RAS mm) does not overlap the image's body region.")
        return new_start, new_end


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        from repux.device import _cpu_name

        return _cpu_name()
    return device.type


def segment(image: sitk.Image | str | Path, model: str | Path, **kwargs: Any) -> SegmentationResult:
    """Segment ``image`` with ``model`` in one call (see :class:`Segmenter` for options).

    Example:
        >>> result = segment("ct.nii.gz", model="repux-tiny-phantom")  # doctest: +SKIP
        >>> result.save("ct.seg.nrrd")  # doctest: +SKIP
    """
    seg_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("series_uid", "roi_ras", "progress", "cancel")}
    return Segmenter(model, **kwargs).segment(image, **seg_kwargs)
