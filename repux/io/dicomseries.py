"""DICOM series as they come from a PACS: scan a folder, sort out what is not the CT, explain.

:func:`scan_folder` reads the headers of every file under a folder (pydicom, no pixels; nested
folders, files without extension, a DICOMDIR and non-DICOM files are all fine) and groups the image
instances by Series Instance UID.  :func:`prepare_series` then decides, for one series, which
instances make the volume, and writes a note for each one it leaves out:

* duplicate instances (the same SOP Instance UID in two files) - the first file is kept;
* localizers/scouts and secondary captures (Image Type LOCALIZER/SCOUT/SCREEN SAVE, a
  secondary-capture SOP class), and slices whose orientation or matrix differs from the
  majority (a coronal scout inside an axial series): skipped, as Slicer's DICOM loader does;
* a multi-frame (enhanced) CT instance is a volume by itself (read with highdicom).

What cannot be made into a volume with the right geometry is refused with one line that says what
to do: a gantry tilt (the slices are sheared), two slices at the same position (several
acquisitions), irregular slice spacing (missing slices).

Blank UIDs (anonymisers): the SOP Class and SOP Instance UIDs come from the file meta (Media
Storage SOP Class/Instance UID) where the dataset's are blank; files without a Series Instance UID
are grouped per folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from repux.errors import InputImageError

__all__ = ["DicomInstance", "DicomSeries", "prepare_series", "read_instance", "scan_folder"]

logger = logging.getLogger(__name__)

#: Media Storage SOP Class of a DICOMDIR (an index, no image)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Secondary Capture Image Storage SOP classes (screenshots, dose reports...)
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
}
#: image storage SOP classes whose files must hold rows and pixels (a file without them is truncated)
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    *SECONDARY_CAPTURE_SOP_CLASSES,
}
#: Image Type values of images that are not slices of the volume
NON_VOLUME_IMAGE_TYPES = {"LOCALIZER", "SCOUT", "SCREEN SAVE", "SCREENSHOT"}
#: a blank or missing Series Instance UID: instances grouped per folder under this key
NO_SERIES_UID = ""
#: tolerance for a gantry tilt (degrees between the slice normal and the slice-to-slice direction)
TILT_TOLERANCE_DEG = 0.5

_SKIP_SUFFIXES = (".json", ".txt", ".csv", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".xml", ".html", ".py", ".md", ".zip", ".gz")


@dataclass
class DicomInstance:
    """The header facts of one DICOM file that the series logic needs."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    modality: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    rows: int
    columns: int
    frames: int
    description: str
    transfer_syntax: str
    uids_from_meta: bool = False  # SOP Class/Instance UID taken from the file meta

    @property
    def is_image(self) -> bool:
        return self.rows > 0 and self.columns > 0


@dataclass
class DicomSeries:
    """One Series Instance UID (or the UID-less files of one folder) and what :func:`prepare_series` made of it."""

    uid: str
    instances: list[DicomInstance]
    folder: str
    description: str = ""
    files: list[str] = field(default_factory=list)  # the volume's files in slice order (one file: multi-frame)
    notes: list[str] = field(default_factory=list)  # what was left out, and why
    multiframe: bool = False

    @property
    def num_files(self) -> int:
        return len(self.files) if self.files else len(self.instances)

    @property
    def name(self) -> str:
        return self.uid or f"(no Series Instance UID, folder {self.folder})"


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _functional(ds: Any, item: str, keyword: str) -> Any:
    """``keyword`` from the shared functional groups, else from the first frame's (enhanced multi-frame objects)."""
    for groups in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")):
        if groups:
            seq = groups[0].get(item)
            if seq:
                value = seq[0].get(keyword)
                if value is not None:
                    return value
    return None


def read_instance(path: str | Path) -> DicomInstance | None:
    """Header facts of one file; None for a file that is not DICOM (or a DICOMDIR).

    Raises:
        InputImageError: a DICOM file whose header cannot be read (truncated, corrupt).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = str(path)
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as err:
        raise InputImageError(f"cannot read {p!r}: {err.strerror or err}.") from err
    preamble = len(head) == 132 and head[128:132] == b"DICM"
    if not preamble and p.lower().endswith(_SKIP_SUFFIXES):
        return None
    try:
        ds = pydicom.dcmread(p, defer_size="2 KB", force=not preamble)  # large values (pixels) are skipped, not read
        # touch the elements we use: a truncated or corrupt header fails here, not later
        meta = getattr(ds, "file_meta", None)
        sop_class = _text(ds, "SOPClassUID")
        sop_instance = _text(ds, "SOPInstanceUID")
        rows = int(ds.get("Rows", 0) or 0)
        columns = int(ds.get("Columns", 0) or 0)
    except InvalidDicomError:
        return None
    except Exception as err:  # pydicom raises many kinds on a broken header
        if not preamble:
            return None  # not DICOM after all
        raise InputImageError(f"DICOM file {p!r} is truncated or corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); remove it or export the series again.") from err
    media_class = _text(meta, "MediaStorageSOPClassUID") if meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if preamble and (len(ds) == 0 or (rows and not has_pixels) or (not rows and (sop_class or media_class) in IMAGE_SOP_CLASSES)):
        raise InputImageError(f"DICOM file {p!r} is truncated or corrupt (it ends before its {'pixel data' if rows else 'header'} is complete); remove it or export the series again.")
    if not preamble and not (sop_class or rows):
        return None  # force=True read something that is not DICOM
    from_meta = False
    if not sop_class and media_class:
        sop_class, from_meta = media_class, True
    if not sop_instance and meta is not None and _text(meta, "MediaStorageSOPInstanceUID"):
        sop_instance, from_meta = _text(meta, "MediaStorageSOPInstanceUID"), True
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    if frames > 1 or orientation is None:
        orientation = orientation or _floats(_functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        position = position or _floats(_functional(ds, "PlanePositionSequence", "ImagePositionPatient"), 3)
    image_type = tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ()) if str(v).strip())
    if not image_type and ds.get("SharedFunctionalGroupsSequence"):
        image_type = tuple(str(v).strip().upper() for v in (ds.get("FrameType") or ()))
    return DicomInstance(
        path=p,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        image_type=image_type,
        orientation=orientation,
        position=position,
        rows=rows,
        columns=columns,
        frames=frames,
        description=_text(ds, "SeriesDescription"),
        transfer_syntax=_text(meta, "TransferSyntaxUID") if meta is not None else "",
        uids_from_meta=from_meta,
    )


def _files_under(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(root) / name


def scan_folder(folder: str | Path, *, broken: list[str] | None = None) -> list[DicomSeries]:
    """The DICOM series under ``folder`` (recursively), largest first; non-image objects included.

    ``broken``: filled with the messages of DICOM files whose header cannot be read (they are left out).
    """
    root = Path(folder)
    groups: dict[tuple[str, str], list[DicomInstance]] = {}
    for f in _files_under(root):
        try:
            inst = read_instance(f)
        except InputImageError as err:
            if broken is not None:
                broken.append(str(err))
            logger.warning("%s", err)
            continue
        if inst is None:
            continue
        key = (inst.series_uid, "" if inst.series_uid else str(f.parent))
        groups.setdefault(key, []).append(inst)
    out = []
    for (uid, folder_key), instances in groups.items():
        desc = next((i.description for i in instances if i.description), "")
        out.append(DicomSeries(uid, instances, folder_key or str(Path(instances[0].path).parent), desc))
    out.sort(key=lambda s: sum(i.frames for i in s.instances if i.is_image), reverse=True)
    return out


def _orientation_key(o: tuple[float, ...] | None) -> tuple[float, ...] | None:
    return None if o is None else tuple(round(v, 3) for v in o)


def prepare_series(series: DicomSeries) -> DicomSeries:
    """Choose the instances that make the volume (``series.files``, in slice order) and note the others.

    Raises:
        InputImageError: nothing to segment, or a geometry RepUX cannot represent (one line, what to do).
    """
    name = series.name
    notes: list[str] = []
    images = _volume_images(_drop_duplicates(series.instances, notes), name, notes)
    multi = [i for i in images if i.frames > 1]
    if multi:
        chosen = max(multi, key=lambda i: i.frames)
        others = [i for i in images if i is not chosen]
        if others:
            notes.append(f"used the multi-frame instance {Path(chosen.path).name} ({chosen.frames} frames); left out {len(others)} other instance(s) of the series")
        series.files, series.notes, series.multiframe = [chosen.path], notes, True
        _log_notes(series)
        return series
    images, major = _majority_geometry(images, notes)
    if major[0] is not None and all(i.position is not None for i in images):
        images = _slices_in_order(images, name)
    # else: no geometry tags: leave the order to ITK
    series.files, series.notes = [i.path for i in images], notes
    _log_notes(series)
    return series


def _drop_duplicates(instances: Iterable[DicomInstance], notes: list[str]) -> list[DicomInstance]:
    """The instances in path order without repeated SOP Instance UIDs (a copied file); notes what was dropped."""
    seen: dict[str, str] = {}
    kept: list[DicomInstance] = []
    duplicates = []
    for inst in sorted(instances, key=lambda i: i.path):
        if inst.sop_instance_uid and inst.sop_instance_uid in seen:
            duplicates.append(inst.path)
            continue
        if inst.sop_instance_uid:
            seen[inst.sop_instance_uid] = inst.path
        kept.append(inst)
    if duplicates:
        notes.append(f"dropped {len(duplicates)} duplicate instance(s) (same SOP Instance UID as another file): {', '.join(Path(p).name for p in duplicates[:5])}")
    return kept


def _volume_images(kept: list[DicomInstance], name: str, notes: list[str]) -> list[DicomInstance]:
    """The images among ``kept`` that can make a volume: no localizer or secondary capture (noted); raises when none."""
    images = [i for i in kept if i.is_image]
    if not images:
        raise InputImageError(f"DICOM series {name} holds no image (modality {kept[0].modality if kept else '?'}); choose a CT series.")
    skipped = [i for i in images if i.sop_class_uid in SECONDARY_CAPTURE_SOP_CLASSES or NON_VOLUME_IMAGE_TYPES & set(i.image_type)]
    if skipped:
        kinds = sorted({"secondary capture" if i.sop_class_uid in SECONDARY_CAPTURE_SOP_CLASSES else "localizer" for i in skipped})
        notes.append(f"skipped {len(skipped)} {' and '.join(kinds)} image(s) by Image Type/SOP Class: {', '.join(Path(i.path).name for i in skipped[:5])}")
        images = [i for i in images if i not in skipped]
    if not images:
        raise InputImageError(f"DICOM series {name} holds only localizer/secondary-capture images; choose the CT series (--series-uid).")
    return images


def _majority_geometry(images: list[DicomInstance], notes: list[str]) -> tuple[list[DicomInstance], Any]:
    """The images of the majority orientation and matrix (a coronal scout or a stray reformat inside an axial series is
    left out, noted) and that ``(orientation key, rows, columns)``."""
    counts: dict[Any, int] = {}
    for i in images:
        k = (_orientation_key(i.orientation), i.rows, i.columns)
        counts[k] = counts.get(k, 0) + 1
    major = max(counts, key=lambda k: counts[k])
    off = [i for i in images if (_orientation_key(i.orientation), i.rows, i.columns) != major]
    if off:
        notes.append(
            f"skipped {len(off)} image(s) with another orientation or matrix than the series' {counts[major]} slices (localizer or reformat): "
            + ", ".join(Path(i.path).name for i in off[:5])
        )
        images = [i for i in images if i not in off]
    return images, major


def _slices_in_order(images: list[DicomInstance], name: str) -> list[DicomInstance]:
    """The slices sorted along their normal; raises for a gantry tilt, two slices at one position or irregular spacing."""
    iop = np.asarray(images[0].orientation)
    normal = np.cross(iop[:3], iop[3:6])
    pos = np.asarray([i.position for i in images])
    along = pos @ normal
    order = np.argsort(along)
    images = [images[k] for k in order]
    pos, along = pos[order], along[order]
    if len(images) >= 2:
        span = pos[-1] - pos[0]
        if np.linalg.norm(span) > 1e-3:
            cos = abs(float(np.dot(span, normal))) / float(np.linalg.norm(span))
            tilt = float(np.degrees(np.arccos(min(1.0, cos))))
            if tilt > TILT_TOLERANCE_DEG:
                raise InputImageError(
                    f"DICOM series {name} was acquired with a gantry tilt of {tilt:.1f} degrees: its slices are sheared, which a volume grid cannot hold. "
                    "Load it in 3D Slicer (DICOM module; with 'Acquisition geometry regularization' enabled) and segment the regularized volume, or export it as NIfTI/NRRD first."
                )
    if len(images) >= 2:
        steps = np.diff(along)
        same = int((steps <= 1e-4).sum())
        if same:
            raise InputImageError(
                f"DICOM series {name} has {same + 1} different instances at the same slice position (several acquisitions or echoes in one series); "
                "select the intended series with --series-uid or remove one acquisition from the folder."
            )
        if len(images) >= 3:
            median = float(np.median(steps))
            if steps.max() - steps.min() > max(0.01 * median, 1e-3):
                i = int(np.argmax(np.abs(steps - median)))
                raise InputImageError(
                    f"DICOM series {name} has irregular slice spacing ({steps.min():.2f} to {steps.max():.2f} mm; a step of {steps[i]:.2f} mm after slice {i + 1} of {len(images)}): "
                    "slices are missing or acquisitions are mixed. Load it in 3D Slicer (which can regularize the geometry) and export a volume, or remove the stray slices."
                )
    return images


_logged: set[tuple[str, str]] = set()


def _log_notes(series: DicomSeries) -> None:
    """Log each note once per process (a series is prepared before inference and again when read)."""
    for n in series.notes:
        if (series.name, n) not in _logged:
            _logged.add((series.name, n))
            logger.warning("DICOM series %s: %s", series.name, n)
