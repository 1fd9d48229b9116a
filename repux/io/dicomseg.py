"""DICOM Segmentation (SEG) output with highdicom.

A label map that RepUX wrote on a DICOM series' grid becomes a BINARY DICOM
SEG object that a PACS or viewer can show over the series: it references the
source series and every source instance (one frame per source slice and
organ, empty frames omitted), each organ is a segment with the model's name,
its recommended display colour (CIELab) and its SNOMED CT category and type
(and left/right modifier), and the segments are identified as produced by an
AUTOMATIC algorithm "RepUX <model id>" of the model's version.

Frames are matched to the source instances through their Image Position
(Patient): RepUX's label map is sorted along the slice normal, while the
source files may be in any order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.errors import InputImageError, OutputError, guard_io
from repux.labels import Label, LabelSet

__all__ = ["check_seg_sources", "dicom_source_files", "segment_descriptions", "write_dicom_seg"]

logger = logging.getLogger(__name__)



#: what a DICOM SEG needs from its source series, and the elements that hold it
REQUIRED_SOURCE_UIDS = {
    "StudyInstanceUID": "Study Instance UID (0020,000D)",
    "SeriesInstanceUID": "Series Instance UID (0020,000E)",
    "SOPClassUID": "SOP Class UID (0008,0016)",
    "SOPInstanceUID": "SOP Instance UID (0008,0018)",
}
#: the formats that need no DICOM identity
OTHER_FORMATS = "write .seg.nrrd, .nii.gz, .nrrd or .mha instead (--format seg.nrrd)"


@guard_io("reading the DICOM headers of", InputImageError)
def dicom_source_files(path: str | Path, series_uid: str | None = None) -> list[str]:
    """The files of the DICOM series a path stands for (a folder, or one file of the series), checked for a SEG.

    Same choice as :func:`repux.io.images.read_image`: ``series_uid`` or the largest image series, with
    duplicates, localizers and secondary captures left out.  Called before inference, so a series a SEG
    cannot reference is refused before any work (:func:`check_seg_sources`).

    Raises:
        InputImageError: the path is not a DICOM series, or the series lacks the identity a SEG needs.
    """
    from repux.io.images import NON_IMAGE_MODALITIES, _looks_like_dicom, list_dicom_series, suffix_of

    p = Path(path)
    if p.is_file():
        if not (suffix_of(p) == ".dcm" or _looks_like_dicom(p)):
            raise InputImageError(f"--format dicom-seg needs a DICOM input; {str(p)!r} is not a DICOM series (write .seg.nrrd, .nii.gz, .nrrd or .mha).")
        p = p.parent
    series = [s for s in list_dicom_series(p) if s["modality"] not in NON_IMAGE_MODALITIES]
    if series_uid:
        series = [s for s in series if s["uid"] == series_uid]
    if not series:
        raise InputImageError(f"--format dicom-seg needs a DICOM input; no DICOM image series in {str(path)!r}.")
    if series[0]["error"]:
        raise InputImageError(series[0]["error"])
    files = list(series[0]["files"])
    check_seg_sources(files)
    return files


def _source_uid(ds: Any, keyword: str) -> str:
    """A UID of the source dataset; SOP Class/Instance from the file meta where the dataset's are blank."""
    value = str(ds.get(keyword, "") or "").strip()
    if not value and keyword in ("SOPClassUID", "SOPInstanceUID"):
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            value = str(meta.get("MediaStorage" + keyword, "") or "").strip()
    return value


def check_seg_sources(source_files: Sequence[str | Path]) -> list[str]:
    """Refuse, in one line, a series whose identity a DICOM SEG cannot reference; return notes on what will be generated.

    SOP Class/Instance UIDs come from the file meta where blank; a missing Study or Series Instance UID
    (an anonymiser that blanked them) cannot be made up: the SEG must name the series it belongs to.

    Raises:
        InputImageError: naming the missing elements and the formats that work.
    """
    import pydicom

    missing: dict[str, int] = {}
    notes = []
    series = set()
    no_for = 0
    for f in source_files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        for keyword in REQUIRED_SOURCE_UIDS:
            if not _source_uid(ds, keyword):
                missing[keyword] = missing.get(keyword, 0) + 1
        series.add(_source_uid(ds, "SeriesInstanceUID"))
        if not str(ds.get("FrameOfReferenceUID", "") or "").strip():
            no_for += 1
    if missing:
        what = ", ".join(f"{REQUIRED_SOURCE_UIDS[k]} (blank in {n} of {len(source_files)} files)" for k, n in missing.items())
        raise InputImageError(
            f"--format dicom-seg: the source series has no {what}, so a DICOM SEG cannot reference it (an anonymiser blanked them?); "
            f"{OTHER_FORMATS}, or export the series from the PACS with its UIDs."
        )
    if len(series) > 1:
        raise InputImageError(f"--format dicom-seg: the source files belong to {len(series)} series; a DICOM SEG references one (choose it with --series-uid).")
    if no_for:
        notes.append("the source series has no Frame of Reference UID (0020,0052): the SEG gets a new one")
    return notes


def _coded(code) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(code.value, code.scheme, code.meaning)


def segment_descriptions(labels: LabelSet, model_id: str, model_version: str) -> list[Any]:
    """highdicom segment descriptions: name, colour, SNOMED CT codes, algorithm identification."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.color import CIELabColor
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    algo = AlgorithmIdentificationSequence(
        name=f"RepUX {model_id}"[:64], family=codes.cid7162.ArtificialIntelligence, version=str(model_version)[:64] or "unknown"
    )
    out = []
    for lab in labels:
        out.append(
            SegmentDescription(
                segment_number=lab.value,
                segment_label=lab.name[:64],
                segmented_property_category=_coded(lab.category),
                segmented_property_type=_coded(_type_code(lab)),
                algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                tracking_uid=None,
                tracking_id=None,
                display_color=CIELabColor.from_rgb(*lab.color),
            )
        )
        if lab.modifier is not None:
            prop = out[-1].SegmentedPropertyTypeCodeSequence[0]
            from pydicom.dataset import Dataset
            from pydicom.sequence import Sequence as DicomSequence

            mod = Dataset()
            mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = lab.modifier.value, lab.modifier.scheme, lab.modifier.meaning
            prop.SegmentedPropertyTypeModifierCodeSequence = DicomSequence([mod])
    return out


def _type_code(lab: Label):
    from repux.labels import Code

    return lab.type if lab.type is not None else Code("85756007", "SCT", "Tissue")


def _load_sources(source_files: Sequence[str | Path]) -> tuple[list[Any], list[str]]:
    """The source headers, with blank SOP Class/Instance UIDs taken from the file meta; and notes."""
    import pydicom

    sources, notes, patched = [], [], 0
    for f in source_files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not str(ds.get(keyword, "") or "").strip() and _source_uid(ds, keyword):
                setattr(ds, keyword, _source_uid(ds, keyword))
                patched += 1
        for keyword in _TYPE2:  # removed by an anonymiser: present and empty, as the SEG's modules need them
            if keyword not in ds:
                setattr(ds, keyword, "")
        sources.append(ds)
    if patched:
        notes.append(f"took {patched} blank SOP Class/Instance UID(s) of the source from the file meta (Media Storage SOP Class/Instance UID)")
    return sources, notes


def _frame_positions(ds: Any) -> list[list[float]]:
    """Image Position (Patient) of each frame of a source instance (one for a single-frame image)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        out = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            plane = item.get("PlanePositionSequence") or ds.SharedFunctionalGroupsSequence[0].get("PlanePositionSequence")
            out.append([float(v) for v in plane[0].ImagePositionPatient])
        return out
    return [[float(v) for v in ds.ImagePositionPatient]]


#: Type 2 elements of the SEG's Patient, General Study and General Equipment modules: present, empty where the source has none
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


@guard_io("writing the DICOM SEG", OutputError, 3)
def write_dicom_seg(
    label_image: sitk.Image,
    labels: LabelSet,
    source_files: Sequence[str | Path],
    path: str | Path,
    *,
    model_id: str = "unknown",
    model_version: str = "unknown",
    series_description: str = "RepUX segmentation",
) -> Path:
    """Write ``label_image`` (on the source series' grid) as a BINARY DICOM SEG (atomically).

    The source may be single-frame images (one SEG frame per source slice and organ) or one
    multi-frame (enhanced) CT instance.  Blank SOP Class/Instance UIDs of the sources are taken
    from their file meta; a missing Frame of Reference UID is generated (and said).

    Raises:
        InputImageError: the sources lack the identity a SEG needs (:func:`check_seg_sources`), or a
            source slice has no plane in the label map (another grid).
    """
    import warnings

    import highdicom as hd

    from repux._version import __version__
    from repux.io.images import atomic_path

    notes = check_seg_sources(source_files)
    sources, more = _load_sources(source_files)
    notes = more + notes
    arr = sitk.GetArrayViewFromImage(label_image)  # (k, j, i): k along the slice normal
    positions = [(ds, ipp) for ds in sources for ipp in _frame_positions(ds)]
    if len(sources) > 1 and any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise InputImageError("DICOM SEG: the sources mix multi-frame and other instances; give one multi-frame instance or a series of single-frame images.")
    frames = np.zeros((len(positions), arr.shape[1], arr.shape[2]), dtype=np.uint8)
    for n, (ds, ipp) in enumerate(positions):
        idx = label_image.TransformPhysicalPointToContinuousIndex(ipp)
        k = round(idx[2])
        if abs(idx[0]) > 0.05 or abs(idx[1]) > 0.05 or abs(idx[2] - k) > 0.05 or not 0 <= k < arr.shape[0]:
            raise InputImageError(
                f"DICOM SEG: source slice {ds.SOPInstanceUID} (position {ipp}) is not a plane of the label map; the label map must be on the series' grid."
            )
        if (int(ds.Rows), int(ds.Columns)) != arr.shape[1:]:
            raise InputImageError(
                f"DICOM SEG: source slice {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}; the label map planes are {arr.shape[1]}x{arr.shape[2]}."
            )
        frames[n] = arr[k]
    first = sources[0]
    if not str(first.get("FrameOfReferenceUID", "") or "").strip():
        frame_of_reference = hd.UID()
        for ds in sources:
            ds.FrameOfReferenceUID = frame_of_reference
    extra: dict[str, Any] = {}
    if not str(first.get("SpecificCharacterSet", "") or "").strip():
        extra["specific_character_set"] = "ISO_IR 100"  # an empty (0008,0005) in the source is not a valid value to copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's notes on the source's patient-name style
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(labels, model_id, model_version),
            series_instance_uid=hd.UID(),
            series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="RepUX",
            manufacturer_model_name=f"RepUX {model_id}"[:64],
            software_versions=f"repux {__version__}; model {model_id} {model_version}"[:64],
            device_serial_number="0",
            series_description=series_description[:64],
            content_label="REPUX",
            content_description=f"{model_id} {model_version}"[:64],
            **extra,
        )
    for keyword in _TYPE2:  # an anonymiser may have removed them; the SEG IOD needs them present (may be empty)
        if keyword not in seg:
            setattr(seg, keyword, "")
    with atomic_path(path, verify=_verify_seg) as tmp:
        seg.save_as(str(tmp))
    for n in notes:
        logger.warning("DICOM SEG %s: %s", Path(path).name, n)
    logger.info("wrote DICOM SEG %s: %d segments, %d source instances", path, len(labels), len(sources))
    return Path(path)


def _verify_seg(tmp: Path) -> None:
    """Read the written SEG back completely (a truncated file fails here, before the rename)."""
    import pydicom

    ds = pydicom.dcmread(str(tmp))
    if ds.get("Modality") != "SEG" or "PixelData" not in ds:
        raise InputImageError(f"{str(tmp)!r} does not read back as a DICOM SEG")
