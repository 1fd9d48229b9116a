"""The model store as RepUXSegment shows it (no Qt).

Listing and deleting use the ``repux.models.store`` Python API in this process (cheap:
no torch).  Downloads, imports and conversions run ``repux models install``,
``repux models import`` and ``repux convert-official --install`` in a child
process (:func:`installArguments` & co. build their arguments) so the GUI stays
responsive and downloads report progress and are sha256-verified by the engine.
Available compute devices come from ``repux info --json`` in a child process too,
so Slicer's own process never initialises CUDA.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LABEL_SET_CHOICES",
    "CatalogCache",
    "DeviceChoice",
    "ModelInfo",
    "convertOfficialArguments",
    "deviceInfoArguments",
    "doctorArguments",
    "findModel",
    "importArguments",
    "installArguments",
    "listModels",
    "parseDeviceInfo",
    "removeModel",
    "sanitizeModelId",
    "storeFolder",
    "suggestModelId",
]

logger = logging.getLogger(__name__)

#: label sets ``repux convert-official --labels`` knows by name
LABEL_SET_CHOICES = ("flare", "amos")

_ID_CHARS = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``repux models list --json``.

    Attributes:
        id: model id (what ``--model`` takes).
        version: model version.
        status: ``built-in``, ``installed``, ``downloadable`` or ``official`` (the paper's checkpoint: imported, not downloaded).
        sizeMB: size of the weights (or of the download) in MB.
        labels: organ names, by label value.
        path: model folder ("" for downloadable models).
        name: display name.
        description: longer text (catalog or model card).
        source: where to get an official checkpoint (the official repository).
    """

    id: str
    version: str
    status: str
    sizeMB: float
    labels: tuple[str, ...] = field(default_factory=tuple)
    path: str = ""
    name: str = ""
    description: str = ""
    source: str = ""

    @property
    def installed(self) -> bool:
        return self.status in ("built-in", "installed")

    @property
    def displayName(self) -> str:
        return self.name if self.name and self.name != self.id else self.id


@dataclass(frozen=True)
class DeviceChoice:
    """A compute device: ``device`` is what ``--device`` takes, ``name`` the hardware name."""

    device: str
    name: str = ""
    memoryGB: float | None = None

    @property
    def isGpu(self) -> bool:
        return self.device.startswith("cuda") or self.device == "mps"


def _modelInfo(r: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        id=r["id"],
        version=r["version"],
        status=r["status"],
        sizeMB=r["size_mb"],
        labels=tuple(r["labels"]),
        path=r["path"],
        name=r["name"],
        description=r["description"],
        source=r.get("source", ""),
    )


class CatalogCache:
    """The model catalog's rows (official checkpoints, downloadable models), read on a background thread and kept.

    The catalog is a file or an http(s) URL (``$REPUX_CATALOG``): a slow or unreachable URL must not block Slicer's
    GUI, and a malformed catalog must not hide the models already installed.  :meth:`rows` starts the read when
    the location has not been read yet (or ``refresh``), waits at most ``wait`` seconds for it and returns what is
    known: the rows, or none while the read runs or after it failed (``error`` says why; logged once).  Only the call
    that starts a read waits (or one with ``wait=None``); later calls return at once.
    """

    def __init__(self, reader: Any = None) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._location: str | None = None
        self._rows: list[dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self.error = ""

    @property
    def pending(self) -> bool:
        """The catalog is being read."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _read(self, location: str) -> None:
        try:
            if self._reader is not None:
                rows, error = list(self._reader(location)), ""
            else:
                from repux.models.store import catalog_rows

                rows, error = catalog_rows(location), ""
        except Exception as err:  # ConfigError, but also anything a broken catalog entry raises
            rows, error = [], str(err) or type(err).__name__
            logger.warning("the model catalog could not be read; only the built-in and installed models are listed: %s", error)
        with self._lock:
            if self._location == location:
                self._rows, self.error = rows, error

    def rows(self, wait: float | None = None, refresh: bool = False) -> list[dict[str, Any]]:
        from repux.models.store import _catalog_location

        location = _catalog_location()
        with self._lock:
            if refresh or location != self._location:
                self._location, self._rows, self.error = location, None, ""
                self._thread = None
            started = None
            if self._rows is None and self._thread is None:
                started = self._thread = threading.Thread(target=self._read, args=(location,), name="repux-catalog", daemon=True)
                started.start()
            # only the call that started the read waits, or a caller that waits until read (wait=None, scripts):
            # a hanging URL blocks no later panel refresh
            waitFor = started if started is not None else (self._thread if wait is None else None)
        if waitFor is not None:
            waitFor.join(wait)
        with self._lock:
            return list(self._rows or [])


#: the catalog of this process (the panels of both modules share it)
catalogCache = CatalogCache()


def listModels(store: Any = None, catalog: bool = True, wait: float | None = None, refresh: bool = False) -> list[ModelInfo]:
    """Built-in, installed and downloadable models (the ``repux models list --json`` rows), by id.

    The built-in and installed models are always listed; the catalog's rows (``catalog=True``) come from
    :data:`catalogCache`: ``wait`` seconds at most (None: until read), ``refresh`` reads it again.  A catalog that
    cannot be read is logged and left out (``catalogCache.error``).
    """
    from repux.models.store import list_models

    rows = list_models(store, catalog=False)
    if catalog:
        have = {r["id"] for r in rows}
        rows += [r for r in catalogCache.rows(wait=wait, refresh=refresh) if r["id"] not in have]
    return [_modelInfo(r) for r in rows]


def findModel(modelId: str, models: Iterable[ModelInfo]) -> ModelInfo | None:
    """The row with ``modelId`` (or whose folder is ``modelId``), or None."""
    for m in models:
        if m.id == modelId or (m.path and os.path.normcase(m.path) == os.path.normcase(str(modelId))):
            return m
    return None


def storeFolder(create: bool = False) -> Path:
    """The model store's root folder (``$REPUX_HOME`` or ``~/.repux``)."""
    from repux.models.store import ModelStore

    root = ModelStore().root
    if create:
        (root / "models").mkdir(parents=True, exist_ok=True)
    return root


def removeModel(modelId: str) -> Path:
    """Delete an installed model; returns its former folder.

    Raises:
        repux.errors.ModelFileError: unknown or built-in model.
    """
    from repux.models.store import ModelStore

    return ModelStore().remove(modelId)


def installArguments(modelId: str, replace: bool = False) -> list[str]:
    """``repux models install ID --progress json`` (download, sha256 check, install)."""
    args = ["models", "install", str(modelId), "--progress", "json"]
    if replace:
        args.append("--overwrite")
    return args


def importArguments(source: str | os.PathLike[str], modelId: str | None = None, replace: bool = False) -> list[str]:
    """``repux models import SOURCE [--id ID]`` for a model folder or ``.zip``.

    A path to a ``model.json`` file stands for its folder.
    """
    src = Path(source)
    if src.name == "model.json":
        src = src.parent
    args = ["models", "import", str(src)]
    if modelId:
        args += ["--id", modelId]
    if replace:
        args.append("--overwrite")
    return args


def convertOfficialArguments(checkpoint: str | os.PathLike[str], labels: str, outFolder: str | os.PathLike[str], modelId: str) -> list[str]:
    """``repux convert-official CKPT --labels L --output OUT --id ID --install``.

    Raises:
        ValueError: empty model id or label set.
    """
    if not str(modelId).strip():
        raise ValueError("a model id is needed to install the converted checkpoint.")
    if not str(labels).strip():
        raise ValueError("choose the label set of the checkpoint: flare, amos or a label JSON file.")
    return ["convert-official", str(checkpoint), "--labels", str(labels), "--output", str(outFolder), "--id", str(modelId), "--install"]


def deviceInfoArguments() -> list[str]:
    return ["info", "--json"]


def doctorArguments(device: str = "auto") -> list[str]:
    """``repux doctor`` (the *Check installation* button): versions, devices, a timed forward pass, the model store."""
    return ["doctor", "--device", str(device)]


def parseDeviceInfo(stdoutLines: Sequence[str]) -> list[DeviceChoice]:
    """The devices listed by ``repux info --json``: the CPU, then CUDA GPUs and Apple MPS.

    Raises:
        ValueError: the output is not the expected JSON.
    """
    text = "\n".join(stdoutLines).strip()
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"'repux info --json' printed something else than JSON: {text[:200]!r}") from err
    devices = info.get("devices") if isinstance(info, dict) else None
    if not isinstance(devices, list):
        raise ValueError("'repux info --json' has no 'devices' list.")
    choices: list[DeviceChoice] = []
    for d in devices:
        if not isinstance(d, dict) or "device" not in d:
            continue
        dev = str(d["device"])
        if dev != "cpu" and not dev.startswith("cuda") and dev != "mps":
            continue
        memory = d.get("memory_gb")
        choices.append(DeviceChoice(dev, str(d.get("name") or ""), float(memory) if isinstance(memory, (int, float)) else None))
    return choices


def sanitizeModelId(text: str, maxLength: int = 64, fallback: str = "model") -> str:
    """``text`` as a model store id: lower case, runs of other characters -> ``-`` (letters, digits, ``.``, ``_``, ``-``)."""
    cleaned = _ID_CHARS.sub("-", str(text).lower()).strip("-.")
    return re.sub(r"-{2,}", "-", cleaned)[:maxLength].strip("-.") or fallback


def suggestModelId(source: str | os.PathLike[str], labels: str | None = None, *, now: Any = None, taken: Iterable[str] = (), storeRoot: Any = None) -> str:
    """A model store id for a new model.

    * a converted official checkpoint (``labels`` given: ``flare``, ``amos`` or a label-list file):
      ``repuxnet-<labels>-<checkpoint file stem>``, e.g. ``repuxnet-flare-best-metric-model``;
    * a fine-tuned model (no ``labels``; ``source`` is the base model id or folder):
      ``<base id>-ft-YYYYMMDD-HHMM``, made unique against the store's models and run folders and ``taken``.
    """
    if labels is not None:
        stem = Path(source).name
        for suffix in (".pth", ".pt", ".ckpt"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        labelPart = Path(labels).stem if labels not in LABEL_SET_CHOICES else labels
        return sanitizeModelId(f"repuxnet-{labelPart}-{stem}".replace("_", "-"), 64, "repuxnet-model")
    import datetime

    text = str(source)
    base = Path(text).name if ("/" in text or "\\" in text or text.startswith(".")) else text
    candidate = f"{sanitizeModelId(base, 40)}-ft-{(now or datetime.datetime.now()).strftime('%Y%m%d-%H%M')}"
    root = Path(storeRoot) if storeRoot is not None else storeFolder()
    unavailable = set(taken)
    unique, n = candidate, 2
    while unique in unavailable or (root / "models" / unique).exists() or (root / "runs" / unique).exists():
        unique, n = f"{candidate}-{n}", n + 1
    return unique
