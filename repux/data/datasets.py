"""Training datasets: the RepUX manifest and readers for MSD and nnU-Net layouts.

A RepUX dataset is a folder with ``repux-dataset.json``::

    {
      "format": "repux-dataset", "format_version": 1, "name": "phantoms",
      "labels": [{"value": 1, "name": "liver", "color": [221, 130, 101], ...}, ...],
      "cases": [{"id": "case_000", "image": "imagesTr/case_000.nii.gz",
                 "label": "labelsTr/case_000.nii.gz", "split": "train"}, ...]
    }

Paths are relative to the folder.  ``split`` is ``train``, ``val``, ``test``
or absent (then a seeded random split is drawn).  The same reader also
accepts the two layouts people already have:

* Medical Segmentation Decathlon: ``dataset.json`` with ``"training": [{"image":
  "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]`` and ``"labels": {"0": "background", ...}``;
* nnU-Net v2 raw: ``dataset.json`` with ``"channel_names"``, ``"labels": {"background": 0, ...}``,
  ``"file_ending"``, images ``imagesTr/<case>_0000<ending>`` and labels ``labelsTr/<case><ending>``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repux.errors import DatasetError
from repux.labels import LabelSet

__all__ = ["MANIFEST", "Case", "Dataset", "dataset_fingerprint", "load_dataset", "split_cases", "write_manifest"]

logger = logging.getLogger(__name__)

MANIFEST = "repux-dataset.json"
FORMAT = "repux-dataset"


@dataclass
class Case:
    """One annotated volume."""

    id: str
    image: Path
    label: Path
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def recorded_clicks(self) -> list[list[float]]:
        """RAS points (mm) of the clicks recorded with the case: meta ``"clicks"`` (``{class name: [{"ras": [R, A, S],
        "positive": ..., "organ": ...}, ...]}``, written by RepUX Trainer from the segments' click tags); malformed
        entries are left out."""
        out: list[list[float]] = []
        raw = self.meta.get("clicks")
        if not isinstance(raw, dict):
            return out
        for entries in raw.values():
            for c in entries if isinstance(entries, list) else []:
                ras = c.get("ras") if isinstance(c, dict) else None
                if isinstance(ras, list) and len(ras) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ras):
                    out.append([float(v) for v in ras])
        return out

    def to_dict(self, root: Path) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "image": _rel(self.image, root), "label": _rel(self.label, root)}
        if self.split:
            d["split"] = self.split
        d.update(self.meta)
        return d


def _rel(p: Path, root: Path) -> str:
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


@dataclass
class Dataset:
    """A list of cases plus the label set they use."""

    root: Path
    labels: LabelSet
    cases: list[Case]
    name: str = "dataset"
    layout: str = "repux"
    label_values: dict[str, int] = field(default_factory=dict)

    def by_split(self, split: str) -> list[Case]:
        return [c for c in self.cases if c.split == split]


def _parse_labels_msd(labels: dict[str, Any]) -> tuple[LabelSet, dict[str, int]]:
    items = sorted(((int(k), str(v)) for k, v in labels.items()), key=lambda kv: kv[0])
    items = [(k, v) for k, v in items if k != 0]
    return _label_set_from_pairs(items)


def _parse_labels_nnunet(labels: dict[str, Any]) -> tuple[LabelSet, dict[str, int]]:
    items = []
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise DatasetError(f"nnU-Net region-based labels ({name}: {v}) are not supported; use one integer per label.")
        if int(v) != 0:
            items.append((int(v), str(name)))
    return _label_set_from_pairs(sorted(items))


def _label_set_from_pairs(items: Sequence[tuple[int, str]]) -> tuple[LabelSet, dict[str, int]]:
    """Label sets need values 1..N; files may use other values, kept in ``label_values``."""
    ls = LabelSet.from_names([n for _, n in items])
    values = {lab.name: v for lab, (v, _) in zip(ls, items)}
    return ls, values


def load_dataset(path: str | Path) -> Dataset:
    """Read a RepUX, MSD or nnU-Net v2 dataset folder (or its JSON file).

    Raises:
        DatasetError: when no known layout is found or the JSON is invalid.
    """
    p = Path(path)
    root = p.parent if p.is_file() else p
    if not root.is_dir():
        raise DatasetError(f"dataset {str(path)!r} does not exist.")
    manifest = p if p.is_file() else root / MANIFEST
    if manifest.name == MANIFEST and manifest.is_file():
        data = _read_json(manifest)
        if data.get("format") != FORMAT:
            raise DatasetError(f"{manifest} is not a RepUX dataset manifest (format {data.get('format')!r}).")
        labels, cases = _parse_manifest(manifest, root, data)
        return Dataset(root, labels, cases, str(data.get("name", root.name)), "repux", {lab.name: lab.value for lab in labels})
    dj = p if p.is_file() else root / "dataset.json"
    if not dj.is_file():
        raise DatasetError(
            f"no {MANIFEST} or dataset.json in {str(root)!r}; create one with 'repux phantoms' or the RepUXTrainer module, or use an MSD/nnU-Net folder."
        )
    data = _read_json(dj)
    if "channel_names" in data and "file_ending" in data:
        return _load_nnunet(root, data)
    if "training" in data:
        return _load_msd(root, data)
    raise DatasetError(f"{dj} is neither an MSD (has 'training') nor an nnU-Net v2 (has 'channel_names' and 'file_ending') dataset.json.")


def _parse_manifest(manifest: Path, root: Path, data: dict[str, Any]) -> tuple[LabelSet, list[Case]]:
    """Labels and cases of a ``repux-dataset.json``, every field checked (a hand-edited file gets a precise message)."""
    where = str(manifest)
    raw_labels = data.get("labels")
    if not isinstance(raw_labels, list) or not raw_labels or not all(isinstance(d, dict) for d in raw_labels):
        raise DatasetError(f"{where}: 'labels' must be a non-empty list of label objects (value, name...); got {_short(raw_labels)}.")
    try:
        labels = LabelSet.from_list(raw_labels, name=str(data.get("name", root.name)))
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{where}: 'labels' is invalid: {err}") from err
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list):
        raise DatasetError(f"{where}: 'cases' must be a list of case objects; got {_short(raw_cases)}.")
    cases = []
    seen: set[str] = set()
    for i, c in enumerate(raw_cases):
        if not isinstance(c, dict):
            raise DatasetError(f"{where}: case {i + 1} must be an object with id, image and label; got {_short(c)}.")
        missing = [k for k in ("id", "image", "label") if not isinstance(c.get(k), str) or not c.get(k)]
        if missing:
            raise DatasetError(f"{where}: case {i + 1} ({c.get('id', '?')!r}) lacks {', '.join(missing)} (non-empty text).")
        if c["id"] in seen:
            raise DatasetError(f"{where}: case id {c['id']!r} appears twice.")
        seen.add(c["id"])
        split = c.get("split")
        if split not in (None, "train", "val", "test"):
            raise DatasetError(f"{where}: case {c['id']!r} has split {split!r}; use train, val, test or leave it out.")
        cases.append(Case(c["id"], root / c["image"], root / c["label"], split, {k: v for k, v in c.items() if k not in ("id", "image", "label", "split")}))
    return labels, cases


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"cannot parse {p}: {err} (the file is truncated or was edited by hand; restore it or re-create the dataset).") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {p}: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{p} must hold a JSON object.")
    return data


def _load_msd(root: Path, data: dict[str, Any]) -> Dataset:
    labels, values = _parse_labels_msd(data.get("labels", {}))
    cases = []
    for i, item in enumerate(data["training"]):
        img = root / str(item["image"]).lstrip("./") if str(item["image"]).startswith("./") else root / item["image"]
        lab = root / str(item["label"]).lstrip("./") if str(item["label"]).startswith("./") else root / item["label"]
        cid = Path(item["image"]).name.split(".")[0] or f"case_{i:03d}"
        cases.append(Case(cid, img, lab, item.get("split")))
    return Dataset(root, labels, cases, str(data.get("name", root.name)), "msd", values)


def _load_nnunet(root: Path, data: dict[str, Any]) -> Dataset:
    if len(data["channel_names"]) != 1:
        raise DatasetError(f"nnU-Net dataset {root} has {len(data['channel_names'])} input channels; RepUX models take one CT channel.")
    labels, values = _parse_labels_nnunet(data.get("labels", {}))
    ending = data["file_ending"]
    cases = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        cid = lab.name[: -len(ending)]
        cases.append(Case(cid, root / "imagesTr" / f"{cid}_0000{ending}", lab))
    return Dataset(root, labels, cases, str(data.get("name", root.name)), "nnunet", values)


def write_manifest(root: str | Path, labels: LabelSet, cases: Iterable[Case], name: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``repux-dataset.json`` atomically."""
    r = Path(root)
    data: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1,
        "name": name or r.name,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": labels.to_list(),
        "cases": [c.to_dict(r) for c in cases],
    }
    if extra:
        data.update(extra)
    from repux.io.files import atomic_write_text

    return atomic_write_text(r / MANIFEST, json.dumps(data, indent=2) + "\n")


def split_cases(cases: Sequence[Case], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Training and validation cases: explicit splits first, else a seeded random split (at least one validation case when possible)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1); got {val_fraction}.")
    explicit_val = [c for c in cases if c.split == "val"]
    train = [c for c in cases if c.split == "train"]
    rest = [c for c in cases if c.split not in ("train", "val", "test")]
    if explicit_val:
        return train + rest, explicit_val
    rng = random.Random(seed)
    pool = list(rest)
    rng.shuffle(pool)
    n_val = int(round(len(pool) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(pool) + len(train) >= 2 and pool:
        n_val = 1
    val = sorted(pool[:n_val], key=lambda c: c.id)
    tr = train + sorted(pool[n_val:], key=lambda c: c.id)
    return tr, val


def dataset_fingerprint(cases: Sequence[Case], labels: LabelSet) -> str:
    """A short hash of the case ids, file sizes and label names (identifies the training data)."""
    h = hashlib.sha256()
    for lab in labels:
        h.update(f"{lab.value}:{lab.name};".encode())
    for c in sorted(cases, key=lambda c: c.id):
        for p in (c.image, c.label):
            size = p.stat().st_size if p.exists() else -1
            h.update(f"{c.id}|{p.name}|{size};".encode())
    return h.hexdigest()[:16]
