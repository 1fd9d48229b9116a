"""Typed, validated settings shared by inference and training.

All settings are frozen dataclasses with ``to_dict``/``from_dict`` so they are
stored verbatim in ``model.json`` and in training checkpoints.  Spacings are
in millimetres in the order of the re-oriented array axes (x, y, z of the
``orientation`` code, e.g. R-L, A-P, S-I for ``"RAS"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from repux.errors import ConfigError

__all__ = [
    "DEVICE_KINDS",
    "DEVICE_RULE",
    "GUIDANCE_SIGMA_MM",
    "Guidance",
    "QUALITIES",
    "QUALITY_PRESETS",
    "InferenceSettings",
    "IntensityWindow",
    "Preprocessing",
    "is_device_name",
    "parse_roi_size",
]

_AXES = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


def _tuple3(name: str, value: Any, kind: type = float, positive: bool = True) -> tuple:
    try:
        seq = [value] * 3 if isinstance(value, (int, float)) else list(value)
        out = tuple(kind(v) for v in seq)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be 3 numbers; got {value!r}.") from err
    if len(out) != 3:
        raise ConfigError(f"{name} must have 3 values (x, y, z); got {value!r}.")
    if positive and any(v <= 0 for v in out):
        raise ConfigError(f"{name} values must be > 0; got {value!r}.")
    return out


#: the largest window edge (voxels): 512^3 windows already need tens of GB
MAX_ROI = 512


def parse_roi_size(value: Any) -> tuple[int, int, int]:
    """Parse ``96``, ``"96"``, ``"96,96,64"`` or a sequence into a valid ``roi_size``.

    Raises:
        ConfigError: unless every size is a multiple of 16 and at least 32.
    """
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            value = [int(p) for p in parts] if len(parts) > 1 else int(parts[0])
        except (ValueError, IndexError) as err:
            raise ConfigError(f"roi_size {value!r} is not a window size: use one integer (96) or three (96,96,64).") from err
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in items):
        raise ConfigError(f"roi_size {value!r} is not a window size: use integers.")
    roi = _tuple3("roi_size", value, int)
    if any(r % 16 or r < 32 or r > MAX_ROI for r in roi):
        raise ConfigError(f"roi_size {roi} is not allowed: each size must be a multiple of 16 from 32 to {MAX_ROI} (the network down-samples 4 times).")
    return roi  # type: ignore[return-value]


@dataclass(frozen=True)
class IntensityWindow:
    """Clip CT intensities to ``[a_min, a_max]`` HU and scale them to ``[b_min, b_max]``."""

    a_min: float = -125.0
    a_max: float = 275.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    def __post_init__(self) -> None:
        if not self.a_max > self.a_min:
            raise ConfigError(f"intensity window needs a_max > a_min; got a_min={self.a_min}, a_max={self.a_max}.")


@dataclass(frozen=True)
class Preprocessing:
    """How an image is brought onto the model's grid (official AMOS recipe by default).

    Attributes:
        orientation: axis codes of the network's array axes. Defaults to "RAS".
        spacing: target voxel size in mm. Defaults to (1.5, 1.5, 2.0).
        intensity: HU window. Defaults to -125..275 -> 0..1.
        crop_foreground: crop to the body's bounding box before the sliding window.
        foreground_threshold: HU above which a voxel counts as foreground. Defaults to -500.
        foreground_margin_mm: margin added around the foreground box. Defaults to 10 mm.
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    intensity: IntensityWindow = field(default_factory=IntensityWindow)
    crop_foreground: bool = True
    foreground_threshold: float = -500.0
    foreground_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        code = str(self.orientation).upper()
        if len(code) != 3 or sorted(_AXES.get(c, "?") for c in code) != ["AP", "RL", "SI"]:
            raise ConfigError(f"orientation must be a 3-letter code using each of R/L, A/P, S/I once (e.g. 'RAS'); got {self.orientation!r}.")
        object.__setattr__(self, "orientation", code)
        object.__setattr__(self, "spacing", _tuple3("spacing", self.spacing))
        if isinstance(self.intensity, Mapping):
            object.__setattr__(self, "intensity", IntensityWindow(**self.intensity))
        if self.foreground_margin_mm < 0:
            raise ConfigError(f"foreground_margin_mm must be >= 0; got {self.foreground_margin_mm}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing"] = list(self.spacing)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {sorted(unknown)}; allowed: {sorted(known)}.")
        kw = dict(d)
        if "intensity" in kw and isinstance(kw["intensity"], Mapping):
            kw["intensity"] = IntensityWindow(**kw["intensity"])
        return cls(**kw)


@dataclass(frozen=True)
class InferenceSettings:
    """Sliding-window settings (MONAI names).

    Attributes:
        roi_size: window size in voxels. Defaults to (96, 96, 96).
        overlap: fraction of overlap between windows. Defaults to 0.5.
        sw_batch_size: windows per forward pass. Defaults to 1 (CPU) - the engine raises it on GPU.
        mode: blending, "gaussian" or "constant". Defaults to "gaussian".
        tta: average over axis flips (8x slower). Defaults to False.
    """

    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.5
    sw_batch_size: int = 1
    mode: str = "gaussian"
    tta: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi_size", parse_roi_size(self.roi_size))
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ConfigError(f"overlap must be in [0, 1); got {self.overlap!r}.")
        if not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be a positive integer; got {self.sw_batch_size!r}.")
        if self.mode not in ("gaussian", "constant"):
            raise ConfigError(f"mode must be 'gaussian' or 'constant'; got {self.mode!r}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown inference keys {sorted(unknown)}; allowed: {sorted(known)}.")
        return cls(**dict(d))


#: GUI/CLI quality levels -> (overlap, tta)
QUALITY_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"overlap": 0.25, "tta": False},
    "standard": {"overlap": 0.5, "tta": False},
    "best": {"overlap": 0.5, "tta": True},
}
#: the quality levels every front end offers, in order (one list: the CLI, the Libs and the web read it)
QUALITIES: tuple[str, ...] = tuple(QUALITY_PRESETS)

#: device kinds a user may name (``cuda:N`` picks a GPU; ``gpu`` is accepted as another name of ``cuda``)
DEVICE_KINDS: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DEVICE_RULE = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(value: object) -> bool:
    """True for a device the engine accepts (:data:`DEVICE_KINDS` or ``cuda:N``); availability is checked when the job starts."""
    if not isinstance(value, str):
        return False
    s = value.strip().lower()
    return s in DEVICE_KINDS or (s.startswith("cuda:") and s[5:].isdigit())


def spacing_from(value: Sequence[float] | float) -> tuple[float, float, float]:
    return _tuple3("spacing", value)  # type: ignore[return-value]


#: heatmap Gaussian sigma (mm): DeepEdit's 3 voxels at its ~1.5 mm grid
GUIDANCE_SIGMA_MM = 4.5


@dataclass(frozen=True)
class Guidance:
    """What ``model.json`` says about a model's click channels.

    Attributes:
        labels: channel order of the heatmaps, ``("background", organ, ...)``: one channel per class.
        sigma_mm: Gaussian sigma of a click's heatmap, in millimetres of the model grid.
    """

    labels: tuple[str, ...]
    sigma_mm: float = GUIDANCE_SIGMA_MM

    @property
    def channels(self) -> int:
        return len(self.labels)

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or self.labels[0] != "background":
            raise ConfigError(f"guidance.labels must start with 'background' and name at least one organ; got {list(self.labels)!r}.")
        if (
            isinstance(self.sigma_mm, bool)
            or not isinstance(self.sigma_mm, (int, float))
            or not math.isfinite(self.sigma_mm)
            or not 0.1 <= self.sigma_mm <= 100
        ):
            raise ConfigError(f"guidance.sigma_mm must be a number from 0.1 to 100 (mm); got {self.sigma_mm!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "labels": list(self.labels), "sigma_mm": float(self.sigma_mm)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Guidance:
        if not isinstance(d, Mapping):
            raise ConfigError(f"guidance must be an object with channels, labels and sigma_mm; got {type(d).__name__}.")
        labels = d.get("labels")
        if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
            raise ConfigError(f"guidance.labels must be a list of names; got {labels!r}.")
        g = cls(tuple(labels), d.get("sigma_mm", GUIDANCE_SIGMA_MM))
        if "channels" in d and d["channels"] != g.channels:
            raise ConfigError(f"guidance.channels is {d['channels']!r} but guidance.labels names {g.channels} channels.")
        return g

    @classmethod
    def for_labels(cls, organ_names: Sequence[str], sigma_mm: float = GUIDANCE_SIGMA_MM) -> Guidance:
        return cls(("background", *organ_names), float(sigma_mm))
