"""A training set on disk: a folder the engine trains on directly (no Qt, no Slicer).

Layout (the ``repux`` dataset manifest, see :mod:`repux.data.datasets`)::

    <folder>/repux-dataset.json      labels (values 1..N, names, colours, SNOMED codes) and cases
    <folder>/images/<case id>.nrrd   the CT, in the volume's own geometry
    <folder>/labels/<case id>.nrrd   the label map, same grid as the image

Each case entry keeps what the module's case table shows in the case ``meta``
(written as extra keys of the case in the manifest): ``name``, ``organs``
(organs with at least one voxel), ``added`` (ISO date), ``source_model`` (the
model whose segmentation was corrected, "" when unknown), plus ``source_volume``,
``resampled`` and ``segments`` (which segment went to which label).

The set is just the folder: it survives a Slicer restart, can be copied, and
``repux finetune --dataset <folder>`` / ``repux dataset check <folder>`` read it
as it is.  The label set only grows (new classes get the next value), so label
files written earlier stay valid.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGES_FOLDER",
    "LABELS_FOLDER",
    "MANIFEST",
    "CaseRow",
    "TrainingSet",
    "TrainingSetError",
    "isTrainingSet",
]

MANIFEST = "repux-dataset.json"
IMAGES_FOLDER = "images"
LABELS_FOLDER = "labels"
FILE_SUFFIX = ".nrrd"
#: top-level manifest key for what only this module uses
TRAINER_KEY = "repux_trainer"
TRAINER_FORMAT_VERSION = 1

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TrainingSetError(ValueError):
    """The training set folder or a request on it is not usable (the message says why and what to do)."""


@dataclass(frozen=True)
class CaseRow:
    """One line of the case table.

    Attributes:
        id: case id (file names, stable).
        name: display name (renamable).
        organs: organs with at least one voxel in the label map.
        added: ISO date and time the case was added (UTC).
        sourceModel: model whose segmentation was corrected ("" when unknown).
        resampled: how the segmentation was resampled onto the volume grid ("" when it was on it).
    """

    id: str
    name: str
    organs: tuple[str, ...]
    added: str
    sourceModel: str
    resampled: str = ""

    @property
    def addedDate(self) -> str:
        """``YYYY-MM-DD HH:MM`` in local time (the raw value when it cannot be parsed)."""
        try:
            when = _dt.datetime.fromisoformat(self.added)
        except ValueError:
            return self.added
        if when.tzinfo is not None:
            when = when.astimezone()
        return when.strftime("%Y-%m-%d %H:%M")


def isTrainingSet(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a RepUX dataset manifest."""
    return (Path(folder) / MANIFEST).is_file()


def _nowIso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class TrainingSet:
    """The cases and label set of a training-set folder.

    Use :meth:`create` or :meth:`open`; every change is written to the manifest at once
    (atomically), so the folder is always a valid dataset.
    """

    def __init__(self, root: Path, labels: Any, cases: list[Any], name: str, extra: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.labels = labels
        self.cases = list(cases)
        self.name = name
        self.extra: dict[str, Any] = dict(extra or {})

    # ------------------------------------------------------------- open / save
    @classmethod
    def create(cls, folder: str | os.PathLike[str], labels: Any, name: str | None = None, referenceModel: str = "") -> TrainingSet:
        """A new, empty training set in ``folder`` (created if needed) with the label set ``labels``.

        Raises:
            TrainingSetError: the folder already holds a training set, or holds other files.
        """
        root = Path(folder).expanduser()
        if isTrainingSet(root):
            raise TrainingSetError(f"{root} already holds a training set; open it instead.")
        if root.exists() and not root.is_dir():
            raise TrainingSetError(f"{root} is a file; choose a folder for the training set.")
        if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise TrainingSetError(f"{root} is not empty; choose an empty (or new) folder for a new training set.")
        root.mkdir(parents=True, exist_ok=True)
        extra = {"version": TRAINER_FORMAT_VERSION, "created": _nowIso(), "reference_model": str(referenceModel)}
        trainingSet = cls(root, labels, [], name or root.name, extra)
        trainingSet.save()
        return trainingSet

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> TrainingSet:
        """The training set in ``folder``.

        Raises:
            TrainingSetError: no manifest, or a manifest that is not a RepUX dataset.
        """
        from repux.data.datasets import Case
        from repux.errors import RepuxError
        from repux.labels import LabelSet

        root = Path(folder).expanduser()
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise TrainingSetError(f"{root} is not a training set (no {MANIFEST}); choose an empty folder to create one.")
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise TrainingSetError(f"cannot read {manifest}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != "repux-dataset":
            raise TrainingSetError(f"{manifest} is not a RepUX dataset manifest.")
        try:
            labels = LabelSet.from_list(data.get("labels", []), name=str(data.get("name", root.name)))
        except RepuxError as err:
            raise TrainingSetError(f"{manifest}: {err}") from err
        cases = []
        for entry in data.get("cases", []):
            if not isinstance(entry, dict) or not {"id", "image", "label"} <= set(entry):
                raise TrainingSetError(f"{manifest}: every case needs 'id', 'image' and 'label'; got {entry!r}.")
            meta = {k: v for k, v in entry.items() if k not in ("id", "image", "label", "split")}
            cases.append(Case(str(entry["id"]), root / entry["image"], root / entry["label"], entry.get("split"), meta))
        extra = data.get(TRAINER_KEY) if isinstance(data.get(TRAINER_KEY), dict) else {}
        return cls(root, labels, cases, str(data.get("name", root.name)), extra)

    def save(self) -> Path:
        """Write the manifest (atomically)."""
        from repux.data.datasets import write_manifest

        return write_manifest(self.root, self.labels, self.cases, name=self.name, extra={TRAINER_KEY: self.extra})

    def reload(self) -> None:
        """Read the manifest again (another Slicer or a script may have changed it)."""
        other = TrainingSet.open(self.root)
        self.labels, self.cases, self.name, self.extra = other.labels, other.cases, other.name, other.extra

    # ---------------------------------------------------------------- queries
    @property
    def manifestPath(self) -> Path:
        return self.root / MANIFEST

    @property
    def referenceModel(self) -> str:
        return str(self.extra.get("reference_model", ""))

    @property
    def caseIds(self) -> list[str]:
        return [c.id for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, caseId: str) -> Any:
        """The :class:`repux.data.datasets.Case` with ``caseId``.

        Raises:
            TrainingSetError: no such case.
        """
        for c in self.cases:
            if c.id == caseId:
                return c
        raise TrainingSetError(f"the training set has no case {caseId!r}; its cases are: {', '.join(self.caseIds) or 'none'}.")

    def row(self, caseId: str) -> CaseRow:
        return self._row(self.case(caseId))

    def rows(self) -> list[CaseRow]:
        """The case table, in the order the cases were added."""
        return [self._row(c) for c in self.cases]

    @staticmethod
    def _row(case: Any) -> CaseRow:
        meta = case.meta
        return CaseRow(
            id=case.id,
            name=str(meta.get("name") or case.id),
            organs=tuple(str(o) for o in meta.get("organs", ())),
            added=str(meta.get("added", "")),
            sourceModel=str(meta.get("source_model", "")),
            resampled=str(meta.get("resampled", "")),
        )

    def imagePath(self, caseId: str) -> Path:
        return self.root / IMAGES_FOLDER / f"{caseId}{FILE_SUFFIX}"

    def labelPath(self, caseId: str) -> Path:
        return self.root / LABELS_FOLDER / f"{caseId}{FILE_SUFFIX}"

    def uniqueCaseId(self, name: str) -> str:
        """A file-safe id from ``name`` that no case (and no file) uses yet."""
        base = _UNSAFE.sub("_", str(name).strip()).strip("._-")[:48] or "case"
        taken = set(self.caseIds)
        candidate, n = base, 2
        while candidate in taken or self.imagePath(candidate).exists() or self.labelPath(candidate).exists():
            candidate = f"{base}_{n}"
            n += 1
        return candidate

    def annotatedOrgans(self) -> set[str]:
        """Organs that have voxels in at least one case."""
        return {o for row in self.rows() for o in row.organs}

    def warnings(self) -> list[str]:
        """What a user should know before fine-tuning on this set."""
        out = []
        if len(self.cases) < 2:
            out.append(f"the training set has {len(self.cases)} case(s); fine-tuning needs at least 2 (one is held out for validation).")
        never = [lab.name for lab in self.labels if lab.name not in self.annotatedOrgans()]
        if self.cases and never:
            out.append(
                f"no case has voxels of {', '.join(never)}: the fine-tuned model learns to never predict "
                f"{'it' if len(never) == 1 else 'them'} (correct at least one case with these organs, or ignore the warning if that is intended)."
            )
        return out

    # ---------------------------------------------------------------- changes
    def registerCase(
        self,
        caseId: str,
        name: str,
        organs: Iterable[str],
        sourceModel: str = "",
        meta: Mapping[str, Any] | None = None,
        split: str | None = None,
    ) -> Any:
        """Record a case whose image and label files were written to :meth:`imagePath` / :meth:`labelPath`.

        Raises:
            TrainingSetError: the id is taken or a file is missing.
        """
        from repux.data.datasets import Case

        if caseId in self.caseIds:
            raise TrainingSetError(f"the training set already has a case {caseId!r}.")
        image, label = self.imagePath(caseId), self.labelPath(caseId)
        for p in (image, label):
            if not p.is_file():
                raise TrainingSetError(f"case {caseId!r}: {p} was not written.")
        if split not in (None, "train", "val", "test"):
            raise TrainingSetError(f"split must be train, val, test or empty; got {split!r}.")
        fullMeta: dict[str, Any] = {
            "name": str(name),
            "organs": sorted(set(organs), key=self._labelOrder),
            "added": _nowIso(),
            "source_model": str(sourceModel or ""),
        }
        fullMeta.update(meta or {})
        case = Case(caseId, image, label, split, fullMeta)
        self.cases.append(case)
        try:
            self.save()
        except OSError:
            self.cases.remove(case)
            raise
        return case

    def _labelOrder(self, name: str) -> int:
        label = self.labels.find(name)
        return label.value if label is not None else len(self.labels) + 1

    def removeCase(self, caseId: str, deleteFiles: bool = True) -> None:
        """Remove a case from the manifest and (by default) delete its two files.

        Raises:
            TrainingSetError: no such case.
        """
        case = self.case(caseId)
        self.cases.remove(case)
        self.save()
        if deleteFiles:
            for p in (Path(case.image), Path(case.label)):
                if p.is_file() and self.root.resolve() in p.resolve().parents:
                    p.unlink()

    def renameCase(self, caseId: str, newName: str) -> None:
        """Change the display name of a case (its id and file names stay, so nothing moves on disk).

        Raises:
            TrainingSetError: no such case or an empty name.
        """
        text = str(newName).strip()
        if not text:
            raise TrainingSetError("a case name cannot be empty.")
        case = self.case(caseId)
        case.meta["name"] = text
        self.save()
