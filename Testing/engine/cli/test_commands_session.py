"""``repux segment --point`` and ``repux session`` (JSON lines through the launcher-shaped interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from repux.labels import FLARE

from helpers import REPO


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory):
    from repux.data.phantom import generate_phantom

    ph = generate_phantom(3, orientation="oblique", size_mm=(300, 240, 200))
    folder = tmp_path_factory.mktemp("ct")
    path = folder / "ct.nii.gz"
    sitk.WriteImage(ph.image, str(path))
    return path, ph


def _ras(img, kji):
    k, j, i = (int(v) for v in kji)
    x, y, z = img.TransformIndexToPhysicalPoint((i, j, k))
    return (-x, -y, z)


def _liver_voxel(ph, apply_labels):
    from scipy import ndimage

    truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
    pts = np.argwhere(ndimage.binary_erosion((truth == 1) & (apply_labels == 1), iterations=2))
    return tuple(pts[len(pts) // 2])


def test_segment_point_writes_the_clicked_organ_only(phantom_ct, tmp_path, capsys):
    from repux.cli.main import main
    from repux.inference.segmenter import Segmenter

    path, ph = phantom_ct
    seg = Segmenter("repux-tiny-phantom", device="cpu")
    img = sitk.ReadImage(str(path))
    apply_labels = sitk.GetArrayFromImage(seg.segment(img).labels)
    kji = _liver_voxel(ph, apply_labels)
    r, a, s = _ras(img, kji)
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", "-i", str(path), "-o", str(out), f"--point={r},{a},{s}", "-m", "repux-tiny-phantom", "--progress", "none", "--device", "cpu"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((apply_labels == 1).astype(np.uint8))))
    assert np.array_equal(got == 1, cc == cc[kji]) and set(np.unique(got)) == {0, 1}

    for point, why in (((r + 5000.0, a, s), "outside the volume"), (_ras(img, (0, 0, 0)), "no organ here")):
        bad = tmp_path / "bad.nii.gz"
        capsys.readouterr()
        rc = main(["segment", "-i", str(path), "-o", str(bad), "--point=" + ",".join(str(v) for v in point), "-m", "repux-tiny-phantom", "--progress", "none", "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and not bad.exists()
        assert len(err) == 1 and err[0].startswith("repux: error: --point") and why in err[0]


def _read_until(proc, pred, timeout=120.0):
    """JSON lines from the child until ``pred(obj)``; returns (obj, all lines)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the session ended early; lines: {seen[-5:]}; stderr: {proc.stderr.read()[-2000:]}")
        obj = json.loads(line)
        seen.append(obj)
        if pred(obj):
            return obj, seen
    raise AssertionError(f"no matching line within {timeout} s: {seen[-5:]}")


def _send(proc, **cmd):
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()


@pytest.mark.slicer
def test_session_protocol_through_launcher(phantom_ct, tmp_path):
    """repux session through a PythonSlicer-shaped launcher: open, click (crop file), undo, the last click wins, stop exits 0."""
    sys.path.insert(0, str(REPO / "Testing" / "libs"))
    from launcher import launchedPids, makeLauncher, pidAlive

    path, ph = phantom_ct
    img = sitk.ReadImage(str(path))
    launcher = makeLauncher(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [launcher, "-m", "repux", "session", "--model", "repux-tiny-phantom", "--device", "cpu", "--no-background"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
    )
    try:
        ready, _ = _read_until(proc, lambda o: "reply" in o)
        assert ready["reply"] == "ready" and [d["name"] for d in ready["labels"]][:1] == ["liver"]
        _send(proc, command="open", input=str(path), id=1)
        opened, lines = _read_until(proc, lambda o: o.get("reply") == "open")
        assert opened["ok"] and opened["id"] == 1 and opened["windows"] >= 1
        assert any(o.get("stage") == "preprocess" for o in lines)  # progress lines as every job's
        _send(proc, command="click", ras=[1e4, 0, 0], id=2)
        outside, _ = _read_until(proc, lambda o: o.get("reply") == "click")
        assert outside["status"] == "outside" and "labels" not in outside
        # two clicks in a row: the first is superseded (or done first), the last one always answers for its own point
        from scipy import ndimage

        truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
        kidney = tuple(np.argwhere(ndimage.binary_erosion(truth == 2, iterations=2))[0])
        liver = tuple(np.argwhere(ndimage.binary_erosion(truth == 1, iterations=3))[len(np.argwhere(ndimage.binary_erosion(truth == 1, iterations=3))) // 2])
        _send(proc, command="click", ras=list(_ras(img, kidney)), id=3)
        _send(proc, command="click", ras=list(_ras(img, liver)), id=4)
        last, lines = _read_until(proc, lambda o: o.get("reply") == "click" and o.get("id") == 4)
        first = [o for o in lines if o.get("reply") == "click" and o.get("id") == 3][0]
        assert first["status"] in ("cancelled", "added")
        assert last["status"] == "added" and last["organ"] == "liver"
        crop = sitk.ReadImage(last["labels"])
        assert list(crop.GetSize()) == last["size"] and np.allclose(crop.GetOrigin(), img.TransformIndexToPhysicalPoint(last["offset"]))
        assert (sitk.GetArrayFromImage(crop) == 1).sum() == last["voxels"] > 0
        _send(proc, command="undo", id=5)
        undone, _ = _read_until(proc, lambda o: o.get("reply") == "undo")
        assert undone["status"] == "undone" and not (sitk.GetArrayFromImage(sitk.ReadImage(undone["labels"])) == 1).any()
        _send(proc, command="bogus", id=6)
        bogus, _ = _read_until(proc, lambda o: o.get("reply") == "bogus")
        assert bogus["ok"] is False and "unknown command" in bogus["error"]
        _send(proc, command="stop")
        stopped, _ = _read_until(proc, lambda o: o.get("stage") == "stopped")
        assert proc.wait(30) == 0
        assert not Path(last["labels"]).exists()  # the session's temporary folder is removed
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in launchedPids(launcher):
        assert not pidAlive(pid)
