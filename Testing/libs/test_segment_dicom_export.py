"""RepUX Segment: export the current segmentation as DICOM SEG for a volume loaded from Slicer's DICOM database.

Real MRML (slicer-core); the volume is the real 16x16 CT series (dicom-ct-tiny, stray slice left out) as
Slicer's DICOM plugin leaves it: a scalar volume whose ``DICOM.instanceUIDs`` attribute names the
instances, and a database whose ``fileForInstance`` gives their files (a stand-in for ctkDICOMDatabase).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slicer, pytest.mark.realdata]

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom-ct-tiny" / "series"


class FakeDicomDatabase:
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


@pytest.fixture
def dicomVolume(mrml, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    import SimpleITK as sitk

    if not SHARED.is_dir():
        pytest.skip(f"real test data not available: {SHARED}")
    folder = tmp_path / "db"
    folder.mkdir()
    files = {}
    for f in sorted(SHARED.iterdir()):
        ds = pydicom.dcmread(str(f))
        if float(ds.ImagePositionPatient[2]) > 0:  # the three regularly spaced slices
            shutil.copy(f, folder / f.name)
            files[ds.SOPInstanceUID] = str(folder / f.name)
    from repux.io.images import read_image

    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(read_image(folder), str(nrrd))
    volume = mrml.loadVolume(nrrd, "CT")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(files))
    return volume, FakeDicomDatabase(files), files


def _segmentation(mrml, volume):
    import vtk
    from vtkmodules.util import numpy_support

    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for name, color, box in (("liver", (0.87, 0.51, 0.4), (slice(0, 3), slice(2, 8), slice(2, 8))), ("tumor", (1.0, 1.0, 0.0), (slice(1, 3), slice(9, 14), slice(9, 14)))):
        lab = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        a = np.zeros((3, 16, 16), np.uint8)
        a[box] = 1
        img = vtk.vtkImageData()
        img.SetDimensions(16, 16, 3)
        img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(a.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
        lab.SetAndObserveImageData(img)
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        lab.SetIJKToRASMatrix(m)
        before = set(seg.GetSegmentation().GetSegmentIDs())
        assert mrml.segmentationsLogic.ImportLabelmapToSegmentationNode(lab, seg)
        (new,) = set(seg.GetSegmentation().GetSegmentIDs()) - before
        segment = seg.GetSegmentation().GetSegment(new)
        segment.SetName(name)
        segment.SetColor(*color)
        if name == "liver":
            segment.SetTag("TerminologyEntry", "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
        mrml.scene.RemoveNode(lab)
    return seg


def test_export_dicom_seg_of_a_dicom_volume(mrml, dicomVolume, tmp_path):
    hd = pytest.importorskip("highdicom")
    from RepUXSegmentLib.dicomexport import exportDicomSeg

    volume, db, files = dicomVolume
    seg = _segmentation(mrml, volume)
    out = tmp_path / "out" / "seg.dcm"
    exportDicomSeg(seg, volume, out, db, mrml.context(), pythonExecutable=sys.executable, timeout=300)
    exe = shutil.which("dciodvfy")
    if exe is not None:
        r = subprocess.run([exe, str(out)], capture_output=True, text=True, timeout=60, check=False)
        assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []
    s = hd.seg.segread(str(out))
    assert [x.SegmentLabel for x in s.SegmentSequence] == ["liver", "tumor"]
    assert s.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert {i.ReferencedSOPInstanceUID for i in s.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(files)
    # the tumor (segment 2) is in the two upper slices only: frames matched by position through the engine
    uids = sorted(files, key=lambda u: float(__import__("pydicom").dcmread(files[u], stop_before_pixels=True).ImagePositionPatient[2]))
    px = s.get_pixels_by_source_instance(uids, segment_numbers=[2])
    assert px[0].sum() == 0 and px[1].sum() == 25 and px[2].sum() == 25
    assert not list((tmp_path / "out").glob(".*"))


def test_export_refuses_a_volume_not_from_the_dicom_database(mrml, dicomVolume, tmp_path):
    from RepUXSegmentLib.dicomexport import DicomSegExportError, exportDicomSeg

    volume, db, files = dicomVolume
    seg = _segmentation(mrml, volume)
    volume.RemoveAttribute("DICOM.instanceUIDs")
    with pytest.raises(DicomSegExportError, match="not loaded from Slicer's DICOM database"):
        exportDicomSeg(seg, volume, tmp_path / "seg.dcm", db, mrml.context(), pythonExecutable=sys.executable)
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(files))
    with pytest.raises(DicomSegExportError, match="not in the DICOM database"):
        exportDicomSeg(seg, volume, tmp_path / "seg.dcm", FakeDicomDatabase({}), mrml.context(), pythonExecutable=sys.executable)
    assert not (tmp_path / "seg.dcm").exists()
