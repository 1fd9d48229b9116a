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

from .errors import InputImageError
from .labels import Label, LabelSet

__all__ = ["NON_IMAGE_MODALITIES", "dicom_source_files", "segment_descriptions", "write_dicom_seg"]

logger = logging.getLogger(__name__)

#: DICOM modalities that hold no image volume to segment
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "KO", "PR", "REG", "DOC", "RWV", "FID", "RTDOSE"}


def dicom_source_files(path: str | Path, series_uid: str | None = None) -> list[str]:
    """The files of the DICOM series a path stands for (a folder, or one file of the series).

    Same choice as :func:`repux.imageio.read_image`: ``series_uid`` or the largest series.

    Raises:
        InputImageError: the path is not a DICOM series.
    """
    from .imageio import _looks_like_dicom, list_dicom_series, suffix_of

    p = Path(path)
    if p.is_file():
        if not (suffix_of(p) == ".dcm" or _looks_like_dicom(p)):
            raise InputImageError(f"--format dicom-seg needs a DICOM input; {str(p)!r} is not a DICOM series (write .seg.nrrd, .nii.gz, .nrrd or .mha).")
        p = p.parent
    series = list_dicom_series(p)
    if series_uid:
        series = [s for s in series if s["uid"] == series_uid]
    if not series:
        raise InputImageError(f"--format dicom-seg needs a DICOM input; no DICOM series in {str(path)!r}.")
    return list(series[0]["files"])


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
    from .labels import Code

    return lab.type if lab.type is not None else Code("85756007", "SCT", "Tissue")


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

    Raises:
        InputImageError: a source slice has no plane in the label map (another grid).
    """
    import warnings

    import highdicom as hd
    import pydicom

    from ._version import __version__
    from .imageio import atomic_path

    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    arr = sitk.GetArrayViewFromImage(label_image)  # (k, j, i): k along the slice normal
    frames = np.zeros((len(sources), arr.shape[1], arr.shape[2]), dtype=np.uint8)
    for n, ds in enumerate(sources):
        ipp = [float(v) for v in ds.ImagePositionPatient]
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
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    logger.info("wrote DICOM SEG %s: %d segments, %d source instances", path, len(labels), len(sources))
    return Path(path)
