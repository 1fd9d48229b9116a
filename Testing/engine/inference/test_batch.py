"""Cohorts and standard outputs: --organs, slab-wise stitching, batch, shards, DICOM SEG, statistics, memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from repux.errors import ConfigError
from repux.inference.segmenter import Segmenter, stream_argmax


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "repux", *args], capture_output=True, text=True, timeout=600, check=False, **kw)


def _body(shape=(30, 40, 40), seed=4, spacing=(4.0, 4.0, 4.0)) -> sitk.Image:
    """A small CT-like volume (k, j, i): air around a soft-tissue body with brighter blobs."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    a = np.full(shape, -1000.0, np.float32)
    body = ((i - shape[2] / 2) / (shape[2] * 0.45)) ** 2 + ((j - shape[1] / 2) / (shape[1] * 0.4)) ** 2 <= 1
    a[body] = 40.0
    a[body & (i < shape[2] / 2) & (k > 5)] = 120.0
    a += rng.normal(0, 10, shape).astype(np.float32)
    img = sitk.GetImageFromArray(a.astype(np.int16))
    img.SetSpacing(spacing)
    return img


# ------------------------------------------------------------------------------------ stitching
@pytest.mark.parametrize("shape, roi, overlap", [((70, 50, 130), (32, 32, 32), 0.5), ((20, 40, 25), (32, 32, 32), 0.25), ((40, 36, 64), (32, 32, 48), 0.6)])
def test_slab_stitching_equals_monai_sliding_window(shape, roi, overlap):
    from monai.inferers import sliding_window_inference

    from repux.inference.segmenter import entropy_map

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 5, 3, padding=1)

    def pred(b):
        return torch.softmax(conv(b), 1)

    x = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        ref = sliding_window_inference(x, roi, 2, pred, overlap=overlap, mode="gaussian")[0]
        labels, ent = stream_argmax(x, pred, roi_size=roi, overlap=overlap, sw_batch_size=3, entropy=True)
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert (labels == ref.argmax(0).numpy()).all()
    assert np.abs(ent - entropy_map(ref).numpy()).max() < 1e-5


# ------------------------------------------------------------------------------------ --organs
def test_organs_subset_renumbers_and_drops_the_others(tiny_model_dir):
    img = _body()
    full = Segmenter(tiny_model_dir, device="cpu").segment(img)
    sub = Segmenter(tiny_model_dir, device="cpu", organs=["Spleen", "LIVER"])
    assert sub.labels.names == ["liver", "spleen"] and [lab.value for lab in sub.labels] == [1, 2]
    res = sub.segment(img)
    a, f = res.array(), full.array()
    expected = np.zeros_like(f)
    expected[f == 1] = 1  # liver
    expected[f == 3] = 2  # spleen (value 3 in the model)
    assert (a == expected).all()
    assert set(res.summary["volumes_ml"]) == {"liver", "spleen"} and res.summary["organs"] == ["liver", "spleen"]
    assert Segmenter(tiny_model_dir, device="cpu", organs="kidney").labels.names == ["kidney"]


def test_unknown_organ_lists_the_models_organs(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"'heart' is not an organ of this model; choose among liver, kidney, spleen, pancreas"):
        Segmenter(tiny_model_dir, device="cpu", organs="liver,heart")


def test_cli_organs_writes_only_those_segments(tiny_model_dir, tmp_path):
    from repux.io.images import read_segmentation_nrrd_labels

    inp = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_body(), str(inp))
    out = tmp_path / "o.seg.nrrd"
    r = _run(["segment", "-i", str(inp), "-m", str(tiny_model_dir), "-o", str(out), "--organs", "liver,Pancreas", "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    meta = read_segmentation_nrrd_labels(out)
    assert [meta[v]["Name"] for v in sorted(meta)] == ["liver", "pancreas"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max() <= 2
    r = _run(["segment", "-i", str(inp), "-m", str(tiny_model_dir), "-o", str(tmp_path / "x.nii.gz"), "--organs", "lung"])
    assert r.returncode == 1 and r.stderr.count("repux: error:") == 1 and "'lung'" in r.stderr and "liver, kidney, spleen, pancreas" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.nii.gz").exists()


# ------------------------------------------------------------------------------------ batch
def _cohort(folder, n=4, bad_at=None, shape=(24, 32, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"case{i}.nii.gz"
        if i == bad_at:
            p.write_bytes(b"not an image")
        else:
            sitk.WriteImage(_body(shape, seed=i), str(p))
        paths.append(p)
    return paths


def test_batch_resume_bad_case_report_and_exit_code(tiny_model_dir, tmp_path):
    import json

    paths = _cohort(tmp_path / "in", n=4, bad_at=1)
    out = tmp_path / "out"
    args = ["segment", "-i", str(tmp_path / "in"), "-m", str(tiny_model_dir), "-o", str(out), "--device", "cpu", "--progress", "json"]
    r = _run(args)
    assert r.returncode == 1, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "case1" in ln and "ERROR" in ln]
    assert len(err) == 1 and "cannot read" in err[0] and "Traceback" not in r.stderr
    rep = json.loads((out / "repux-batch.json").read_text())
    status = {c["case"]: c["status"] for c in rep["cases"]}
    assert status == {"case0": "done", "case1": "failed", "case2": "done", "case3": "done"}
    assert all(c["device"] == "cpu" and c["input"] for c in rep["cases"])
    assert (out / "repux-batch.csv").read_text().splitlines()[0] == "case,input,output,status,error,warnings,seconds,device"
    events = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert {e.get("case_count") for e in events if "case_index" in e} == {4}
    fr = [e["fraction"] for e in events]
    assert fr == sorted(fr) and fr[-1] == 1.0
    for i in (0, 2, 3):
        a = sitk.ReadImage(str(out / f"case{i}.seg.nrrd"))
        assert a.GetSize() == sitk.ReadImage(str(paths[i])).GetSize()
    # rerun: complete outputs are skipped, the fixed case is done, nothing else is recomputed
    before = (out / "case0.seg.nrrd").stat().st_mtime_ns
    sitk.WriteImage(_body((24, 32, 32), seed=9), str(paths[1]))
    r = _run(args)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "repux-batch.json").read_text())
    assert {c["case"]: c["status"] for c in rep["cases"]} == {"case0": "skipped", "case1": "done", "case2": "skipped", "case3": "skipped"}
    assert (out / "case0.seg.nrrd").stat().st_mtime_ns == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    r = _run([*args, "--overwrite"])
    assert r.returncode == 0 and (out / "case0.seg.nrrd").stat().st_mtime_ns != before


def test_shards_cover_every_case_exactly_once(tmp_path):
    from repux.inference.batch import Case, parse_shard, select_shard, shard_from_env

    cases = [Case(f"patient{i:03d}", f"/x/{i}.nii.gz") for i in range(57)]
    for n in (1, 2, 3, 8):
        parts = [select_shard(cases, i, n) for i in range(n)]
        names = [c.name for p in parts for c in p]
        assert sorted(names) == sorted(c.name for c in cases) and len(names) == len(set(names))
        assert [c.name for c in select_shard(list(reversed(cases)), 0, n)] == [c.name for c in reversed(parts[0])]  # order-independent
    assert min(len(p) for p in [select_shard(cases, i, 3) for i in range(3)]) > 8  # not all in one shard
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "a/b", "1", "-1/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4)
    assert shard_from_env({"WORLD_SIZE": "1"}) is None and shard_from_env({}) is None


def test_cli_shards_and_list_file_split_a_cohort(tiny_model_dir, tmp_path):
    import json

    paths = _cohort(tmp_path / "in", n=3)
    lst = tmp_path / "cases.txt"
    lst.write_text("# cohort\n" + "\n".join(f"in/{p.name}" for p in paths) + "\n\n")
    out = tmp_path / "out"
    seen = []
    for i in range(2):
        r = _run(["segment", "-i", f"@{lst}", "-m", str(tiny_model_dir), "-o", str(out), "--shard", f"{i}/2", "--device", "cpu", "--format", "nii.gz"])
        assert r.returncode == 0, r.stderr
        rep = json.loads((out / f"repux-batch.shard{i}of2.json").read_text())
        seen += [c["case"] for c in rep["cases"] if c["status"] == "done"]
    assert sorted(seen) == ["case0", "case1", "case2"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--shard", "3/2"], "argument --shard: '3/2' is not a shard"),
        (["--uncertainty", "u.nii.gz"], "--uncertainty is for a single case"),
        (["-o", "FILE"], "is a file; with several cases --output is a folder"),
        (["-i", "@missing.txt"], "--input list file"),
    ],
)
def test_batch_argument_errors_are_one_line(extra, pattern, tmp_path, tiny_model_dir):
    (tmp_path / "FILE").write_text("x")
    for name in ("a.nii.gz", "b.nii.gz"):  # exist (paths are checked first), never read: the argument error comes before
        (tmp_path / name).write_bytes(b"not read")
    args = ["segment", "-i", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "-m", str(tiny_model_dir), "-o", str(tmp_path / "out")]
    if extra[0] == "-o":
        args[args.index("-o") + 1] = str(tmp_path / "FILE")
        extra = []
    elif extra[0] == "-i":
        args[2:4] = ["@" + str(tmp_path / "missing.txt")]
        extra = []
    r = _run([*args, *extra], cwd=tmp_path)
    assert r.returncode == (2 if extra and extra[0] == "--shard" else 1), r.stderr  # 2: argparse's usage error
    assert r.stderr.count("repux: error:") == 1 and pattern in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_segment_many_api_yields_results_and_dicom_seg_refuses_non_dicom(tiny_model_dir, tmp_path):
    import repux
    from repux.inference.batch import discover_cases

    paths = _cohort(tmp_path / "in", n=2)
    seg = Segmenter(tiny_model_dir, device="cpu", organs="liver")
    results = list(repux.segment_many([str(p) for p in paths], seg, tmp_path / "out", format="mha", report=False))
    assert [(r.name, r.status) for r in results] == [("case0", "done"), ("case1", "done")]
    assert set(results[0].volumes_ml) == {"liver"} and results[0].timings["infer"] > 0
    assert not (tmp_path / "out" / "repux-batch.json").exists()
    res = list(repux.segment_many(paths, tiny_model_dir, tmp_path / "o2", format="dicom-seg", device="cpu"))
    assert [r.status for r in res] == ["failed", "failed"] and "needs a DICOM series input" in res[0].error
    # duplicate names become unique; a folder of non-image DICOM objects is its own failed case
    (tmp_path / "dup").mkdir()
    sitk.WriteImage(_body((20, 24, 24)), str(tmp_path / "dup" / "case0.nrrd"))
    cases = discover_cases([tmp_path / "in", tmp_path / "dup"])
    assert [c.name for c in cases] == ["case0", "case1", "case0_2"]


def test_write_failure_fails_only_that_case_and_leaves_no_partial_file(tiny_model_dir, tmp_path, monkeypatch):
    from repux.inference import batch
    from repux.io import images as imageio

    paths = _cohort(tmp_path / "in", n=3, shape=(20, 24, 24))
    real = imageio.sitk.WriteImage

    def disk_full(image, name, *args):
        if ".case1." in str(name):  # the writer had started the temporary file when the disk filled up
            with open(name, "wb") as f:
                f.write(b"NRRD0004\npartial")
            raise RuntimeError("sitk::ERROR: Could not write file: No space left on device")
        return real(image, name, *args)

    monkeypatch.setattr(imageio.sitk, "WriteImage", disk_full)
    rows = list(batch.segment_many(paths, tiny_model_dir, tmp_path / "out", device="cpu"))
    assert [r.status for r in rows] == ["done", "failed", "done"]
    assert "No space left on device" in rows[1].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.seg.nrrd", "case2.seg.nrrd", "repux-batch.csv", "repux-batch.json"]


@pytest.mark.realdata
def test_folder_of_non_image_dicom_objects_is_its_own_failed_case(tmp_path):
    import shutil

    from helpers import shared_file

    from repux.inference.batch import discover_cases

    (tmp_path / "seg_only").mkdir()
    shutil.copy(shared_file("dicom-ct-3slice", "liver.dcm"), tmp_path / "seg_only" / "liver.dcm")
    (tmp_path / "mixed").mkdir()
    shutil.copytree(shared_file("dicom-ct-3slice", "series"), tmp_path / "mixed" / "ct")
    shutil.copy(shared_file("dicom-ct-3slice", "liver.dcm"), tmp_path / "mixed" / "liver.dcm")
    (seg_case,) = discover_cases([tmp_path / "seg_only"])
    assert seg_case.error and "only non-image DICOM objects (SEG)" in seg_case.error
    (ct_case,) = discover_cases([tmp_path / "mixed"])  # the SEG beside the series is not a case
    assert ct_case.error is None and ct_case.is_dicom and len(ct_case.files) == 3 and ct_case.name.startswith("99000_")


def test_torchrun_rank_maps_to_its_gpu(monkeypatch):
    import torch

    from repux.inference.batch import torchrun_device

    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torchrun_device("auto", env) == "cuda:1" and torchrun_device("cpu", env) == "cpu"
    assert torchrun_device("auto", {"WORLD_SIZE": "1"}) == "auto"


# ------------------------------------------------------------------------------------ DICOM SEG
@pytest.mark.realdata
def test_dicom_seg_round_trip_on_the_real_series(tiny_model_dir, tmp_path):
    import highdicom as hd
    import pydicom
    from helpers import shared_file

    series = shared_file("dicom-ct-3slice", "series")
    out = tmp_path / "seg.dcm"
    r = _run(["segment", "-i", str(series), "-o", str(out), "-m", str(tiny_model_dir), "--device", "cpu", "--organs", "liver,kidney,spleen"])
    assert r.returncode == 0, r.stderr
    # the label map RepUX makes for the same series (same engine, same settings), compared voxel by voxel with the SEG read back
    labels = Segmenter(tiny_model_dir, device="cpu", organs="liver,kidney,spleen").segment(series).labels
    seg = hd.seg.segread(str(out))
    src = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(series.iterdir())]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {d.SOPInstanceUID for d in src}
    segs = seg.SegmentSequence
    assert [s.SegmentLabel for s in segs] == ["liver", "kidney", "spleen"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segs] == ["10200004", "64033007", "78961009"]
    assert all(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004" and s.SegmentAlgorithmType == "AUTOMATIC" for s in segs)
    assert segs[0].SegmentAlgorithmName == "RepUX tiny-test" and len(segs[0].RecommendedDisplayCIELabValue) == 3
    arr = sitk.GetArrayFromImage(labels)
    assert arr.max() > 0, "the model found no organ: the comparison would be vacuous"
    px = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src], combine_segments=True)
    for n, d in enumerate(src):  # the files are in descending z: match frames by position, not by order
        k = round(labels.TransformPhysicalPointToContinuousIndex([float(v) for v in d.ImagePositionPatient])[2])
        assert (px[n] == arr[k]).all()
    # a non-DICOM input with dicom-seg: one line, nothing written
    nii = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_body(), str(nii))
    r = _run(["segment", "-i", str(nii), "-o", str(tmp_path / "x.dcm"), "-m", str(tiny_model_dir)])
    assert r.returncode == 1 and r.stderr.count("repux: error:") == 1 and "needs a DICOM input" in r.stderr and not (tmp_path / "x.dcm").exists()


# ------------------------------------------------------------------------------------ statistics
def test_statistics_match_hand_computed_values_and_border_flag():
    from repux.inference.statistics import organ_statistics, statistics_csv
    from repux.labels import LabelSet

    hu = np.full((10, 12, 14), -1000.0, np.float32)
    lab = np.zeros(hu.shape, np.uint8)
    # organ 1: a 2x3x4 block inside, values 0..23 (known mean/median/percentiles)
    lab[3:5, 4:7, 5:9] = 1
    hu[3:5, 4:7, 5:9] = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    # organ 2: touches the last i face (cut by the field of view)
    lab[6:8, 2:4, 12:14] = 2
    hu[6:8, 2:4, 12:14] = 50.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.5, 2.0, 3.0))  # 3 mm^3 per voxel
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(img)
    rows = organ_statistics(img, labels, LabelSet.from_names(["liver", "spleen", "pancreas"]))
    liver, spleen, pancreas = rows
    assert liver["voxels"] == 24 and liver["volume_ml"] == pytest.approx(24 * 3.0 / 1000)
    assert liver["hu_mean"] == pytest.approx(11.5) and liver["hu_median"] == pytest.approx(11.5)
    assert liver["hu_std"] == pytest.approx(np.sqrt((24**2 - 1) / 12))  # population std of 0..23
    assert (liver["hu_min"], liver["hu_max"]) == (0.0, 23.0)
    assert liver["hu_p5"] == pytest.approx(0.05 * 23) and liver["hu_p95"] == pytest.approx(0.95 * 23)
    assert liver["touches_border"] is False
    assert spleen["voxels"] == 8 and spleen["hu_mean"] == 50.0 and spleen["hu_std"] == 0.0 and spleen["touches_border"] is True
    assert pancreas["voxels"] == 0 and pancreas["hu_mean"] is None and pancreas["touches_border"] is False
    text = statistics_csv(rows, {"case": "c1"}).splitlines()
    assert text[0].startswith("case,organ,label,voxels,volume_ml,hu_mean") and text[1].startswith("c1,liver,1,24,0.072,11.5,")


def test_cli_statistics_beside_the_output(tiny_model_dir, tmp_path):
    import json

    from repux.inference.statistics import organ_statistics

    inp = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_body(), str(inp))
    out = tmp_path / "o.nii.gz"
    r = _run(["segment", "-i", str(inp), "-o", str(out), "-m", str(tiny_model_dir), "--statistics", "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o.statistics.json").read_text())
    assert [o["organ"] for o in doc["organs"]] == ["liver", "kidney", "spleen", "pancreas"]
    from repux.labels import FLARE

    again = organ_statistics(sitk.ReadImage(str(inp)), sitk.ReadImage(str(out)), FLARE)
    assert [o["voxels"] for o in doc["organs"]] == [o["voxels"] for o in again]
    assert (tmp_path / "o.statistics.csv").read_text().count("\n") == 5


# ------------------------------------------------------------------------------------ memory benchmark
def test_benchmark_memory_section_reports_peak_rss(tmp_path):
    from repux.tools.benchmark import format_report, run_benchmark

    rep = run_benchmark(presets=[], sections=("memory",), memory_size=(64, 64, 48), memory_models=("builtin",), threads=1)
    (row,) = rep["memory"]
    assert "error" not in row, row
    assert row["input_size"] == [64, 64, 48] and row["windows"] >= 1
    assert 100 < row["peak_rss_mb"] < 4000  # the process really ran (torch alone is > 100 MB) and stayed small
    assert "peak RSS" in format_report(rep) and rep["memory_input"]["size"] == [64, 64, 48]
    r = _run(["benchmark", "--sections", "memory,disk"])
    assert r.returncode == 1 and "--sections must be a subset of window,train,volume,memory,batch" in r.stderr


@pytest.mark.slow
def test_large_ct_with_base_model_within_8_gb(tmp_path):
    """512x512x1000 CT, base network on the AMOS grid (random weights, 2 windows through the network): peak < 8 GB."""
    from repux.tools.benchmark import run_benchmark

    rep = run_benchmark(presets=[], sections=("memory",), memory_models=("builtin", "base"), network_windows=2)
    for row in rep["memory"]:
        assert "error" not in row, row
        assert row["peak_rss_mb"] < 8 * 1024, row
