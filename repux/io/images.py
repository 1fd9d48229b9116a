"""Image input/output with full geometry (SimpleITK).

Images travel through RepUX as :class:`SimpleITK.Image` objects, which carry
the origin, spacing and direction (LPS physical space, ITK convention), so the
geometry - oblique and left-handed grids included - is never lost.  Arrays
from ``sitk.GetArrayFromImage`` are ``(k, j, i)`` in file order; Slicer arrays
are ``(k, j, i)`` too but Slicer's reader flips ``k`` for left-handed files,
MONAI/nibabel arrays are ``(i, j, k)``: always carry the IJK->RAS matrix
(:func:`ijk_to_ras`) with an array.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``,
``.seg.nrrd``), MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder, a
DICOMDIR, or one file of the series; the largest series is used unless a Series
Instance UID is given; :mod:`repux.io.dicomseries` leaves out duplicates,
localizers and secondary captures and refuses what has no volume geometry;
single-frame series are decoded by SimpleITK's GDCM, multi-frame enhanced CT by
highdicom/pydicom).  Every write goes to a temporary file in the target folder that is
renamed into place, so a crash or a kill never leaves half a file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from repux.errors import InputImageError, OutputError, guard_io
from repux.io.files import atomic_path, atomic_write_text, check_output_location

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "atomic_path",
    "atomic_write_text",
    "check_image",
    "check_output_location",
    "geometry",
    "ijk_to_ras",
    "list_dicom_series",
    "read_image",
    "read_segmentation_nrrd_labels",
    "same_grid",
    "suffix_of",
    "verify_image_file",
    "write_image",
    "write_segmentation_nrrd",
]

logger = logging.getLogger(__name__)

#: DICOM modalities that hold no image volume to segment
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "KO", "PR", "REG", "DOC", "RWV", "FID", "RTDOSE"}

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | Path) -> str:
    """The image suffix, e.g. ``".nii.gz"`` or ``".seg.nrrd"`` (lower case)."""
    name = Path(path).name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return Path(path).suffix.lower()


def list_dicom_series(folder: str | Path) -> list[dict[str, Any]]:
    """DICOM series in ``folder`` (recursively), largest first.

    Each: ``uid``, ``files`` (the volume's files in slice order, after :func:`repux.io.dicomseries.prepare_series`:
    duplicates, localizers and secondary captures left out), ``num_files``, ``description``, ``modality``,
    ``notes`` (what was left out) and ``error`` (why the series cannot be segmented, or None).
    """
    from repux.io.dicomseries import prepare_series, scan_folder

    out = []
    for s in scan_folder(folder):
        error = None
        try:
            prepare_series(s)
        except InputImageError as err:
            error = str(err)
        files = s.files or [i.path for i in s.instances]
        modality = next((i.modality for i in s.instances if i.modality), "")
        out.append(
            {"uid": s.uid, "files": files, "num_files": len(files), "description": s.description, "modality": modality, "notes": s.notes, "error": error, "series": s}
        )
    return out


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    from repux.io.dicomseries import prepare_series, scan_folder

    broken: list[str] = []
    found = scan_folder(folder, broken=broken)
    if broken:
        raise InputImageError(broken[0])
    series = [s for s in found if any(i.is_image for i in s.instances) and not {i.modality for i in s.instances} <= NON_IMAGE_MODALITIES]
    if not series:
        others = sorted({i.modality or "?" for s in found for i in s.instances})
        why = f" (only non-image objects: {', '.join(others)})" if others else ""
        raise InputImageError(f"no DICOM series found in folder {str(folder)!r}{why}.")
    if series_uid:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            raise InputImageError(
                f"--series-uid {series_uid} is not in {str(folder)!r}; available: " + ", ".join(f"{s.name} ({s.num_files} files)" for s in series)
            )
        chosen = match[0]
    else:
        chosen = series[0]
        if len(series) > 1:
            logger.info(
                "folder holds %d DICOM series; using the largest (%s, %d files); the others: %s; choose another with --series-uid",
                len(series),
                chosen.name,
                chosen.num_files,
                ", ".join(f"{s.name} ({s.description or 'no description'}, {s.num_files} files)" for s in series[1:]),
            )
    prepare_series(chosen)
    if chosen.multiframe:
        return _read_multiframe(chosen.files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen.files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise InputImageError(f"cannot read DICOM series {chosen.name} in {str(folder)!r}: {_first_line(err)}") from err
    logger.info("read DICOM series %s: %d slices", chosen.name, len(chosen.files))
    return img


def _read_multiframe(path: str) -> sitk.Image:
    """A multi-frame (enhanced or legacy-converted enhanced) CT instance as a volume (highdicom: frame geometry, rescale)."""
    import highdicom as hd

    try:
        volume = hd.imread(path).get_volume(dtype=np.float32)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "decode" in text.lower() or "plugin" in text.lower() or "handler" in text.lower():
            raise InputImageError(
                f"cannot decode the pixel data of the multi-frame DICOM {path!r} ({text}); run 'repux doctor' to see the installed DICOM decoders "
                "(pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls), or decompress it (e.g. gdcmconv --raw)."
            ) from err
        raise InputImageError(
            f"the multi-frame DICOM {path!r} is not a regular 3-D volume ({text}); load it in 3D Slicer and export a volume, or export the series as single-frame images."
        ) from err
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise InputImageError(f"the multi-frame DICOM {path!r} has pixel data of shape {arr.shape}; RepUX needs a scalar 3-D CT volume.")
    if np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        arr = arr.astype(np.int16)
    # highdicom's array is (slice, row, column) with an affine to LPS; SimpleITK's (k, j, i) is the same order
    affine = np.asarray(volume.affine, dtype=float)
    cols = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]  # i: along a row, j: down the rows, k: across slices
    if float(np.dot(np.cross(cols[0], cols[1]), cols[2])) < 0:  # frames stored against the slice normal: sort them along it, as a series is
        arr = arr[::-1]
        affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (arr.shape[0] - 1)
        cols[2] = -cols[2]
    spacing = [float(np.linalg.norm(c)) for c in cols]
    direction = np.stack([c / s for c, s in zip(cols, spacing)], axis=1)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    logger.info("read multi-frame DICOM %s: %d frames", path, arr.shape[0])
    return img


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(err).__name__


@guard_io("reading the input", InputImageError)
def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a 3-D image file or DICOM series folder.

    Args:
        path: image file, DICOM file or DICOM folder.
        series_uid: Series Instance UID to pick in a multi-series folder.

    Raises:
        InputImageError: missing file, unreadable data.
    """
    p = Path(path)
    if not p.exists():
        raise InputImageError(f"input {str(p)!r} does not exist.")
    if p.is_dir():
        return _read_dicom_series(p, series_uid)
    if suffix_of(p) == ".dcm" or _looks_like_dicom(p):
        return _read_dicom_series(p.parent, series_uid)
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise InputImageError(f"cannot read {str(p)!r} as an image: {_first_line(err)}") from err


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def check_image(image: sitk.Image, *, max_voxels: int | None = None, ct: bool = True, name: str = "input") -> list[str]:
    """Validate an image for segmentation; return warnings, raise for fatal problems.

    Raises:
        InputImageError: not 3-D, multi-component, too large, empty/constant, NaN voxels.
    """
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2:
        raise InputImageError(f"{name} is a 2-D image of size {size}; RepUX segments 3-D volumes (CT series or NIfTI/NRRD volumes).")
    if dim == 4:
        raise InputImageError(f"{name} is a 4-D image of size {size}; select one 3-D frame first (e.g. with Slicer's Sequences module or SimpleITK).")
    if dim != 3:
        raise InputImageError(f"{name} has {dim} dimensions (size {size}); RepUX needs a 3-D volume.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); RepUX needs a scalar CT volume."
        )
    if min(size) < 2:
        raise InputImageError(f"{name} has size {size}: it is a single slice; RepUX needs a 3-D volume with several slices.")
    n = math.prod(size)
    if max_voxels is not None and n > max_voxels:
        raise InputImageError(
            f"{name} has {n:,} voxels ({size[0]}x{size[1]}x{size[2]}), more than the --max-voxels budget of {max_voxels:,}; "
            "crop it to the region of interest, resample it to a coarser spacing, or raise --max-voxels if the machine has the memory."
        )
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputImageError(f"{name} contains {bad:,} NaN or infinite voxels; fix or mask them before segmentation.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputImageError(f"{name} is empty: every voxel has the value {lo:g}.")
    warnings = []
    if ct:
        p1, p99 = (float(v) for v in np.percentile(arr[:: max(1, arr.shape[0] // 16)], [1, 99]))
        if lo > -500 or hi < 100 or p99 > 4000 or p1 > 200:
            warnings.append(
                f"{name} intensities range {lo:g}..{hi:g} (1st-99th percentile {p1:g}..{p99:g}) do not look like CT in Hounsfield units "
                "(air about -1000, soft tissue 0..100); results may be poor. Is this an MR image or a CT without rescale slope/intercept?"
            )
    spacing = image.GetSpacing()
    if max(spacing) > 8 * min(spacing) and max(spacing) > 6:
        warnings.append(f"{name} has very anisotropic spacing {tuple(round(s, 2) for s in spacing)} mm; thick slices reduce accuracy.")
    for w in warnings:
        logger.warning(w)
    return warnings


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes a NIfTI-1 file (uncompressed stream) must hold, from its header; None when not NIfTI-1."""
    import struct

    if len(header) < 348:
        return None
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            n = max(1, min(int(dims[0]), 7))
            return int(vox_offset) + math.prod(max(1, int(d)) for d in dims[1 : n + 1]) * bitpix // 8
    return None


def verify_image_file(path: str | Path, like: sitk.Image | None = None) -> None:
    """Check that an image file is complete (raises otherwise).

    NIfTI: the (decompressed) file holds the header's voxel count (ITK's NIfTI
    reader accepts truncated files); other formats: read back completely.  With
    ``like``, the size and number of components must match.
    """
    import gzip

    p = Path(path)
    suffix = suffix_of(p)
    if suffix in (".nii", ".nii.gz"):
        with open(p, "rb") as f:
            magic = f.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(p, "rb") as f:
            header = f.read(348)
            total = len(header)
            while True:
                b = f.read(1 << 22)
                if not b:
                    break
                total += len(b)
        expected = _nifti_expected_bytes(header)
        if expected is None:
            raise InputImageError(f"{str(p)!r} has no NIfTI-1 header")
        if total < expected:
            raise InputImageError(f"{str(p)!r} holds {total} of {expected} bytes")
        r = sitk.ImageFileReader()
        r.SetFileName(str(p))
        r.ReadImageInformation()
        size = r.GetSize()
    else:
        img = sitk.ReadImage(str(p))
        size = img.GetSize()
    if like is not None and tuple(size) != tuple(like.GetSize()):
        raise InputImageError(f"{str(p)!r} reads back with size {size}, not {like.GetSize()}")


def _write_verified(image: sitk.Image, path: str | Path, compress: bool) -> None:
    with atomic_path(path, verify=lambda tmp: verify_image_file(tmp, image)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as err:
            raise OutputError(
                f"cannot write {str(path)!r}: {_first_line(err)}; is the disk full or a file-size limit reached? The previous file is unchanged."
            ) from err


@guard_io("writing the output", OutputError, 1)
def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image atomically (format from the suffix), verified before the rename.

    Raises:
        OutputError: the file cannot be written completely (read-only place, full disk, size limit).
    """
    _write_verified(image, path, compress)
    return Path(path)


@guard_io("writing the output", OutputError, 2)
def write_segmentation_nrrd(label_image: sitk.Image, labels, path: str | Path, compress: bool = True) -> Path:
    """Write a label map as a 3D Slicer segmentation (``.seg.nrrd``) with names, colours and terminology.

    All segments share one layer (label values as in ``labels``); segments absent
    from the image are still listed (empty), so the file always has the model's segments.
    """
    img = sitk.Cast(label_image, sitk.sitkUInt8 if len(labels) < 256 else sitk.sitkUInt16)
    for k in list(img.GetMetaDataKeys()):
        img.EraseMetaData(k)
    size = img.GetSize()
    img.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    img.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    img.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    img.SetMetaData("Segmentation_ConversionParameters", "")
    extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
    for i, lab in enumerate(labels):
        pre = f"Segment{i}_"
        img.SetMetaData(pre + "ID", f"Segment_{lab.value}")
        img.SetMetaData(pre + "Name", lab.name)
        img.SetMetaData(pre + "NameAutoGenerated", "0")
        img.SetMetaData(pre + "Color", " ".join(f"{c:.6f}" for c in lab.color_float))
        img.SetMetaData(pre + "ColorAutoGenerated", "0")
        img.SetMetaData(pre + "LabelValue", str(lab.value))
        img.SetMetaData(pre + "Layer", "0")
        img.SetMetaData(pre + "Extent", extent)
        img.SetMetaData(pre + "Tags", f"TerminologyEntry:{lab.slicer_terminology()}|")
    # SimpleITK picks the NRRD writer from the ".nrrd" ending of the temp name
    _write_verified(img, path, compress)
    return Path(path)


def read_segmentation_nrrd_labels(path: str | Path) -> dict[int, dict[str, str]]:
    """Segment metadata of a ``.seg.nrrd`` keyed by label value (name, color, tags)."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    out: dict[int, dict[str, str]] = {}
    i = 0
    while r.HasMetaDataKey(f"Segment{i}_ID"):
        meta = {k.split("_", 1)[1]: r.GetMetaData(k) for k in r.GetMetaDataKeys() if k.startswith(f"Segment{i}_")}
        out[int(meta.get("LabelValue", i + 1))] = meta
        i += 1
    return out


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from (i, j, k) voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return lps_to_ras @ m


def geometry(image: sitk.Image) -> dict[str, Any]:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when both images have the same size, spacing, origin and direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )
