"""DICOM as it comes from a PACS (issue 22): each case a small series derived in tmp_path from the shared real series.

Every case is either segmented (read) with the right geometry or refused in one line that says what to
do; every DICOM SEG written here passes dicom3tools' ``dciodvfy`` with 0 errors and reads back with
highdicom and pydicom.  IO-only cases call the readers directly; the few end-to-end runs use the
built-in-sized tiny model in-process on the 16x16 series (dicom-ct-tiny) or the 512x512x3 series.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hardening_helpers import leftovers, restore_repux_logger  # noqa: F401  (autouse fixture)
from helpers import shared_file

from repux.errors import InputImageError, OutputError
from repux.io.images import read_image, same_grid

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
from pydicom.uid import generate_uid  # noqa: E402

pytestmark = pytest.mark.realdata


# ------------------------------------------------------------------------------------ helpers
def _series3() -> list:
    """The real 512x512x3 CT series (GE, uncompressed), as datasets."""
    folder = shared_file("dicom-ct-3slice", "series")
    return [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]


def _tiny3() -> list:
    """The real 16x16 head CT slices (extension-less files) without the stray first slice: 3 slices 1.25 mm apart."""
    folder = shared_file("dicom-ct-tiny", "series")
    ds = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]
    return [d for d in ds if float(d.ImagePositionPatient[2]) > 0]


def _write(datasets, folder: Path, names=None, ext: str = ".dcm") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(datasets):
        name = names[n] if names else f"{n:03d}{ext}"
        ds.save_as(str(folder / name), enforce_file_format=True)
    return folder


def _reference(folder_of_originals) -> sitk.Image:
    return read_image(folder_of_originals)


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines of dicom3tools' IOD checker (skip when it is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: apt-get install dicom3tools (.ci/run installs it)")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


def _labels_on(img: sitk.Image) -> sitk.Image:
    """A label map on ``img``'s grid: liver (1) in every slice, spleen (3) in all but the first."""
    a = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)
    r, c = a.shape[1], a.shape[2]
    a[:, r // 4 : r // 2, c // 4 : c // 2] = 1
    a[1:, r // 2 : 3 * r // 4, c // 2 : 3 * c // 4] = 3
    lab = sitk.GetImageFromArray(a)
    lab.CopyInformation(img)
    return lab


def _check_seg(path: Path, source_datasets, expected_labels=("liver", "kidney", "spleen", "pancreas")) -> object:
    """dciodvfy 0 errors; highdicom/pydicom read back names, colours, SNOMED codes and the referenced instances."""
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(str(path))
    raw = pydicom.dcmread(str(path))
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(expected_labels)
    codes = {"liver": "10200004", "kidney": "64033007", "spleen": "78961009", "pancreas": "15776009"}
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == [codes[n] for n in expected_labels]
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in seg.SegmentSequence)
    uids = {str(d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID) for d in source_datasets}
    refs = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == uids
    assert seg.StudyInstanceUID == source_datasets[0].StudyInstanceUID
    return seg


def _main(args, capsys) -> tuple[int, str]:
    from repux.cli.main import main

    rc = main(args)
    return rc, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("repux: error:")]


# ------------------------------------------------------------------------------------ 1. DICOM SEG from imperfect sources
def test_seg_of_the_real_series_end_to_end_passes_dciodvfy(tiny_model_dir, tmp_path, capsys):
    """The plain case, through the CLI with the tiny model: a valid SEG of the real 512x512x3 series."""
    src = _write(_series3(), tmp_path / "ct")
    out = tmp_path / "seg.dcm"
    rc, err = _main(["segment", "-i", str(src), "-o", str(out), "-m", str(tiny_model_dir), "--device", "cpu", "--threads", "1"], capsys)
    assert rc == 0, err
    seg = _check_seg(out, [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(src.iterdir())])
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentAlgorithmName == "RepUX tiny-test"


def test_blank_sop_uids_are_taken_from_the_file_meta(tmp_path):
    """The issue's traceback: SOP Class/Instance UID blanked in the datasets, kept in the file meta."""
    from repux.io.dicomseg import dicom_source_files, write_dicom_seg
    from repux.labels import FLARE

    originals = _series3()
    blanked = []
    for ds in copy.deepcopy(originals):
        ds.SOPClassUID = ""
        ds.SOPInstanceUID = ""
        blanked.append(ds)
    folder = tmp_path / "anon"
    folder.mkdir()
    for n, ds in enumerate(blanked):  # keep the file meta as the anonymiser left it
        ds.file_meta.MediaStorageSOPInstanceUID = originals[n].SOPInstanceUID
        pydicom.dcmwrite(str(folder / f"{n}.dcm"), ds, enforce_file_format=False)
    assert pydicom.dcmread(str(folder / "0.dcm")).SOPInstanceUID == ""
    files = dicom_source_files(folder)
    img = read_image(folder)
    out = write_dicom_seg(_labels_on(img), FLARE, files, tmp_path / "seg.dcm", model_id="t", model_version="1")
    _check_seg(out, originals)


def test_missing_study_and_series_uid_is_refused_before_inference(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Study/Series Instance UID blank: one line naming them and the formats that work, before the model loads;
    the same folder still segments to NIfTI."""
    import repux.inference.segmenter

    ds3 = _tiny3()
    for ds in ds3:
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
    src = _write(ds3, tmp_path / "anon", ext="")
    loaded = []
    real_init = repux.inference.segmenter.Segmenter.__init__

    def spy(self, *a, **k):
        loaded.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(repux.inference.segmenter.Segmenter, "__init__", spy)
    rc, err = _main(["segment", "-i", str(src), "-o", str(tmp_path / "seg.dcm"), "-m", str(tiny_model_dir), "--device", "cpu"], capsys)
    (line,) = _error_lines(err)
    assert rc == 1 and "Study Instance UID (0020,000D)" in line and "Series Instance UID (0020,000E)" in line and ".seg.nrrd" in line
    assert not loaded, "the model was loaded before the refusal"
    assert not (tmp_path / "seg.dcm").exists() and leftovers(tmp_path) == []
    rc, err = _main(["segment", "-i", str(src), "-o", str(tmp_path / "labels.nii.gz"), "-m", str(tiny_model_dir), "--device", "cpu"], capsys)
    assert rc == 0, err
    assert same_grid(read_image(tmp_path / "labels.nii.gz"), read_image(src))


def test_missing_frame_of_reference_gets_a_new_one_and_is_said(tmp_path, caplog):
    from repux.io.dicomseg import dicom_source_files, write_dicom_seg
    from repux.labels import FLARE

    ds3 = _tiny3()
    for ds in ds3:
        del ds.FrameOfReferenceUID
        del ds.PatientID  # type 2 removed by an anonymiser: the SEG still has it (empty)
    src = _write(ds3, tmp_path / "nofor")
    with caplog.at_level(logging.WARNING, logger="repux"):
        out = write_dicom_seg(_labels_on(read_image(src)), FLARE, dicom_source_files(src), tmp_path / "seg.dcm")
    _check_seg(out, ds3)
    assert pydicom.dcmread(str(out)).FrameOfReferenceUID and "gets a new one" in caplog.text


# ------------------------------------------------------------------------------------ 2. series as found in practice
def _coronal_localizer(ds):
    loc = copy.deepcopy(ds)
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    loc.SOPInstanceUID = generate_uid()
    loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
    loc.InstanceNumber = 1000
    return loc


def _secondary_capture(ds):
    sc = copy.deepcopy(ds)
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SOPInstanceUID = generate_uid()
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    sc.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 0.3]
    return sc


def test_localizer_and_secondary_capture_inside_the_series_are_skipped_with_a_note(tmp_path, caplog):
    ds3 = _tiny3()
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    # a coronal localizer with the same position as an axial slice (the "2 slices at the same position")
    extra = [_coronal_localizer(ds3[0]), _secondary_capture(ds3[1])]
    src = _write(ds3 + extra, tmp_path / "mixed")
    with caplog.at_level(logging.WARNING, logger="repux"):
        img = read_image(src)
    assert same_grid(img, ref) and np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))
    assert "localizer" in caplog.text and "secondary capture" in caplog.text


def test_localizer_without_image_type_is_skipped_by_orientation(tmp_path, caplog):
    ds3 = _tiny3()
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    loc = _coronal_localizer(ds3[1])
    loc.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # a scanner that does not say it
    with caplog.at_level(logging.WARNING, logger="repux"):
        img = read_image(_write(ds3 + [loc], tmp_path / "mixed"))
    assert same_grid(img, ref) and "another orientation" in caplog.text


def test_dicomdir_with_nested_folders_and_extensionless_files(tmp_path):
    from pydicom.fileset import FileSet

    ds3 = _tiny3()
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    fs = FileSet()
    for ds in ds3:
        fs.add(ds)
    fs.write(str(tmp_path / "cd"))
    files = [p for p in (tmp_path / "cd").rglob("*") if p.is_file()]
    assert (tmp_path / "cd" / "DICOMDIR").is_file() and any(len(p.relative_to(tmp_path / "cd").parts) >= 4 for p in files)
    assert all(not p.suffix for p in files)
    for path in (tmp_path / "cd", tmp_path / "cd" / "DICOMDIR"):  # the folder, or the DICOMDIR itself
        img = read_image(path)
        assert same_grid(img, ref) and np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))


def test_extensionless_files_and_non_dicom_neighbours(tmp_path):
    src = shared_file("dicom-ct-tiny", "series")
    folder = tmp_path / "tiny"
    shutil.copytree(src, folder)
    (folder / "README.txt").write_text("exported by a PACS\n")
    (folder / "notes").write_text("no extension, not DICOM\n")
    # the real tiny series has a stray slice 200 mm away: refused in one line that says what to do
    with pytest.raises(InputImageError, match="irregular slice spacing.*remove the stray slices"):
        read_image(folder)
    stray = min(folder.iterdir(), key=lambda p: float(pydicom.dcmread(str(p), force=True).get("ImagePositionPatient", [0, 0, 1e9])[2]))
    stray.unlink()
    img = read_image(folder)
    assert img.GetSize() == (16, 16, 3) and img.GetSpacing()[2] == pytest.approx(1.25, abs=1e-3)


def test_duplicate_instances_are_dropped_with_a_note(tmp_path, caplog):
    ds3 = _tiny3()
    src = _write(ds3, tmp_path / "dup")
    shutil.copy(src / "001.dcm", src / "001_copy.dcm")
    (src / "sub").mkdir()
    shutil.copy(src / "002.dcm", src / "sub" / "again.dcm")
    with caplog.at_level(logging.WARNING, logger="repux"):
        img = read_image(src)
    assert img.GetSize() == (16, 16, 3) and "dropped 2 duplicate instance" in caplog.text


def test_two_acquisitions_at_the_same_positions_are_refused(tmp_path):
    ds3 = _tiny3()
    second = copy.deepcopy(ds3)
    for ds in second:
        ds.SOPInstanceUID = generate_uid()
    with pytest.raises(InputImageError, match="same slice position.*--series-uid"):
        read_image(_write(ds3 + second, tmp_path / "two"))


def test_gantry_tilt_is_refused_with_what_to_do(tmp_path):
    ds3 = _tiny3()
    for k, ds in enumerate(ds3):  # 15 degrees: each slice 1.25 mm on is shifted along y
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]) + k * 1.25 * np.tan(np.radians(15)), float(ds.ImagePositionPatient[2])]
        ds.GantryDetectorTilt = 15
    with pytest.raises(InputImageError, match=r"gantry tilt of 15\.0 degrees.*3D Slicer"):
        read_image(_write(ds3, tmp_path / "tilt"))


def test_several_series_largest_used_others_named(tmp_path, caplog):
    ds3 = _tiny3()
    small = copy.deepcopy(ds3[:2])
    uid = generate_uid()
    for ds in small:
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = uid, generate_uid(), "small one"
    folder = _write(ds3, tmp_path / "many")
    _write(small, folder / "other", ext=".dcm")
    with caplog.at_level(logging.INFO, logger="repux"):
        img = read_image(folder)
    assert img.GetSize()[2] == 3 and uid in caplog.text and "small one" in caplog.text
    assert read_image(folder, series_uid=uid).GetSize()[2] == 2


def _enhanced(datasets):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    return LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1
    )


def test_multiframe_enhanced_ct_reads_like_the_series_and_gets_a_valid_seg(tmp_path):
    from repux.io.dicomseg import dicom_source_files, write_dicom_seg
    from repux.labels import FLARE

    ds3 = _series3()
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    mf = _enhanced(ds3)
    (tmp_path / "mf").mkdir()
    mf.save_as(str(tmp_path / "mf" / "enhanced.dcm"))
    img = read_image(tmp_path / "mf")
    assert same_grid(img, ref, tol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))
    files = dicom_source_files(tmp_path / "mf")
    assert files == [str(tmp_path / "mf" / "enhanced.dcm")]
    out = write_dicom_seg(_labels_on(img), FLARE, files, tmp_path / "seg.dcm")
    assert dciodvfy_errors(out) == []
    seg = hd.seg.segread(str(out))
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == mf.SOPInstanceUID
    # frames map to the right slices: segment 3 (spleen) is absent from the first (lowest) slice only
    lab = sitk.GetArrayFromImage(_labels_on(img))
    got = seg.get_volume(combine_segments=True).array
    assert got.shape == lab.shape and np.array_equal(np.sort(got.reshape(3, -1).max(1)), np.sort(lab.reshape(3, -1).max(1)))


def _jpeg_baseline(ds):
    """8-bit JPEG baseline (lossy) of a CT slice: stored (HU + 1024) / 16, rescale slope 16."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    v8 = np.clip((hu + 1024) / 16, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(v8, mode="L").save(buf, "JPEG", quality=95)
    out = copy.deepcopy(ds)
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
    out.RescaleSlope, out.RescaleIntercept = 16, -1024
    out.PixelData = encapsulate([buf.getvalue()])
    out["PixelData"].VR = "OB"
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.LossyImageCompression = "01"
    return out


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless", "JPEGBaseline8Bit"])
def test_compressed_transfer_syntaxes(syntax, tmp_path):
    import pydicom.uid

    ds3 = _series3()
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    uid = getattr(pydicom.uid, syntax)
    if syntax == "JPEGBaseline8Bit":
        comp = [_jpeg_baseline(d) for d in ds3]
    else:
        comp = []
        for d in copy.deepcopy(ds3):
            d.compress(uid)
            comp.append(d)
    folder = _write(comp, tmp_path / syntax)
    assert pydicom.dcmread(str(folder / "000.dcm"), stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    img = read_image(folder)
    assert same_grid(img, ref)
    got, want = sitk.GetArrayFromImage(img).astype(np.float32), sitk.GetArrayFromImage(ref).astype(np.float32)
    if syntax == "JPEGBaseline8Bit":
        inside = want > -1000  # lossy, 16 HU steps
        assert np.median(np.abs(got - np.clip(want, -1024, 3056))[inside]) < 16
    else:
        assert np.array_equal(got, want)


def test_truncated_file_is_one_clear_line(tmp_path, capsys, tiny_model_dir):
    ds3 = _tiny3()
    src = _write(ds3, tmp_path / "trunc")
    data = (src / "001.dcm").read_bytes()
    (src / "001.dcm").write_bytes(data[: len(data) - 200])  # pixel data cut short
    rc, err = _main(["segment", "-i", str(src), "-o", str(tmp_path / "o.nii.gz"), "-m", str(tiny_model_dir), "--device", "cpu"], capsys)
    (line,) = _error_lines(err)
    assert rc == 1 and "Traceback" not in err and ("trunc" in line or "cannot read" in line)
    (src / "001.dcm").write_bytes(data[:300])  # header cut short
    with pytest.raises(InputImageError, match="001.dcm.*truncated or corrupt"):
        read_image(src)


# ------------------------------------------------------------------------------------ 3. the last guard
@pytest.mark.parametrize("target", ["repux.io.dicomseries.read_instance", "SimpleITK.ImageSeriesReader.Execute", "SimpleITK.ReadImage", "repux.io.dicomseg.check_seg_sources"])
def test_unexpected_reader_errors_become_one_line(target, tmp_path, capsys, monkeypatch, tiny_model_dir):
    import importlib

    ds3 = _tiny3()
    src = _write(ds3, tmp_path / "in")
    nii = tmp_path / "ct.nii.gz"
    sitk.WriteImage(read_image(src), str(nii))
    module, _, attr = target.rpartition(".")
    owner = importlib.import_module(module) if module != "SimpleITK.ImageSeriesReader" else sitk.ImageSeriesReader

    def boom(*a, **k):
        raise KeyError("injected failure")

    monkeypatch.setattr(owner, attr, boom)
    inp = nii if target == "SimpleITK.ReadImage" else src
    out = tmp_path / ("o.dcm" if "dicomseg" in target else "o.nii.gz")
    args = ["segment", "-i", str(inp), "-o", str(out), "-m", str(tiny_model_dir), "--device", "cpu"]
    rc, err = _main(args, capsys)
    (line,) = _error_lines(err)
    assert rc == 1 and "Traceback" not in err and "injected failure" in line and str(inp) in line and "reading" in line, err
    assert not out.exists() and leftovers(tmp_path) == []
    rc, err = _main([*args, "-v"], capsys)
    assert rc == 1 and "Traceback" in err and "KeyError" in err


WRITERS = [
    ("o.nii.gz", "SimpleITK.WriteImage"),
    ("o.seg.nrrd", "SimpleITK.WriteImage"),
    ("o.dcm", "highdicom.seg.Segmentation.save_as"),
    ("o.nii.gz", "repux.inference.statistics.statistics_csv"),
]


@pytest.mark.parametrize("output,target", WRITERS, ids=[f"{o}-{t.rsplit('.', 1)[-1]}" for o, t in WRITERS])
def test_unexpected_writer_errors_become_one_line_and_nothing_half_written(output, target, tmp_path, capsys, monkeypatch, tiny_model_dir):
    import importlib

    src = _write(_tiny3(), tmp_path / "in")
    module, _, attr = target.rpartition(".")
    if module == "highdicom.seg.Segmentation":
        owner = hd.seg.Segmentation
    else:
        owner = importlib.import_module(module)
    real = getattr(owner, attr)

    def half_then_boom(*a, **k):
        if attr == "save_as":  # write half a file, then fail
            Path(a[1]).write_bytes(b"\0" * 1000)
        elif attr == "WriteImage":
            Path(a[1]).write_bytes(b"\0" * 1000)
        raise ValueError("injected failure")

    monkeypatch.setattr(owner, attr, half_then_boom)
    out = tmp_path / "out" / output
    args = ["segment", "-i", str(src), "-o", str(out), "-m", str(tiny_model_dir), "--device", "cpu"]
    if attr == "statistics_csv":
        args.append("--statistics")
    rc, err = _main(args, capsys)
    (line,) = _error_lines(err)
    assert rc == 1 and "Traceback" not in err and "injected failure" in line and "writing" in line, err
    assert real is not None
    if attr != "statistics_csv":
        assert str(out) in line and not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless", "JPEGLSLossless"])
def test_compressed_multiframe_is_decoded_by_the_declared_decoders(syntax, tmp_path):
    import pydicom.uid

    ds3 = _series3()  # 512x512: openjpeg needs more than 16x16 for its resolution levels
    ref = read_image(_write(copy.deepcopy(ds3), tmp_path / "ref"))
    mf = _enhanced(ds3)
    mf.compress(getattr(pydicom.uid, syntax))
    (tmp_path / "mf").mkdir()
    mf.save_as(str(tmp_path / "mf" / "enhanced"))
    img = read_image(tmp_path / "mf")
    assert same_grid(img, ref, tol=1e-3) and np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))


def test_doctor_lists_the_dicom_decoders():
    from repux.tools.doctor import diagnose, format_report

    report = diagnose(forward=False)
    dec = report["dicom_decoders"]
    assert dec["JPEG 2000 (lossless/lossy)"] and dec["JPEG-LS lossless"] and dec["RLE lossless"] and dec["JPEG baseline (8-bit)"]
    assert report["dicom_packages"]["pylibjpeg-openjpeg"] and "JPEG-LS lossless" in format_report(report)


def test_dicom_seg_command_writes_a_valid_seg_and_refuses_in_one_line(tmp_path, capsys):
    import json

    ds3 = _tiny3()
    src = _write(ds3, tmp_path / "ct", ext="")
    lab = tmp_path / "labels.nrrd"
    sitk.WriteImage(_labels_on(read_image(src)), str(lab))
    names = tmp_path / "labels.json"
    names.write_text(json.dumps([{"value": 1, "name": "liver"}, {"value": 2, "name": "kidney"}, {"value": 3, "name": "spleen"}]))
    lst = tmp_path / "files.txt"
    lst.write_text("".join(f"{p}\n" for p in sorted(src.iterdir())))
    out = tmp_path / "seg.dcm"
    rc, err = _main(["dicom-seg", "-i", str(lab), "--labels", str(names), "--source", f"@{lst}", "-o", str(out)], capsys)
    assert rc == 0, err
    _check_seg(out, ds3, expected_labels=("liver", "kidney", "spleen"))
    # a label the JSON does not name, and a source without its Series Instance UID: one line each, nothing written
    names.write_text(json.dumps([{"value": 1, "name": "liver"}]))
    rc, err = _main(["dicom-seg", "-i", str(lab), "--labels", str(names), "--source", str(src), "-o", str(tmp_path / "x.dcm")], capsys)
    assert rc == 1 and "label values [3]" in _error_lines(err)[0]
    for ds in ds3:
        ds.SeriesInstanceUID = ""
    anon = _write(ds3, tmp_path / "anon")
    rc, err = _main(["dicom-seg", "-i", str(lab), "--source", str(anon), "-o", str(tmp_path / "x.dcm")], capsys)
    (line,) = _error_lines(err)
    assert rc == 1 and "Series Instance UID (0020,000E)" in line and not (tmp_path / "x.dcm").exists()
