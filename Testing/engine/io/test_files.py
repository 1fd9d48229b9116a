"""Writes never lose data: temp + verify + rename, the umask's mode, one-line errors on full disks and read-only places."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from hardening_helpers import (
    REPO,
    leftovers,
    one_error_line,
    restore_repux_logger,
    run_python,
)

from repux.errors import ConfigError, OutputError
from repux.io.files import atomic_path, atomic_write_text, check_output_location, default_file_mode
from repux.io.images import verify_image_file, write_image

LIMIT = 64 * 1024


def _img(shape=(40, 100, 100)):
    rng = np.random.default_rng(0)
    return sitk.GetImageFromArray(rng.integers(0, 5, shape).astype(np.uint8))


def test_atomic_path_plain_use_and_umask_mode(tmp_path):
    old = os.umask(0o002)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("hello")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o664
        assert default_file_mode() == 0o664
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
        os.umask(0o022)
        write_image(_img((4, 5, 6)), tmp_path / "c.nii.gz")
        assert stat.S_IMODE((tmp_path / "c.nii.gz").stat().st_mode) == 0o644
        # a replaced file keeps its mode
        os.chmod(tmp_path / "a.txt", 0o640)
        atomic_write_text(tmp_path / "a.txt", "again")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert leftovers(tmp_path) == []


def test_verify_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("previous")

    def bad(p):
        raise ValueError("checksum mismatch")

    with pytest.raises(OutputError, match=r"does not read back \(checksum mismatch\).*previous file is unchanged"), atomic_path(target, verify=bad) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "previous"
    with pytest.raises(OutputError, match="nothing was written"), atomic_path(target):
        pass
    assert target.read_text() == "previous" and leftovers(tmp_path) == []


def test_os_errors_in_the_body_become_one_line(tmp_path):
    with pytest.raises(OutputError, match=r"cannot write .*No space left on device \(ENOSPC\); free some space"), atomic_path(tmp_path / "x.bin"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"])
def test_truncated_image_files_are_detected(tmp_path, suffix):
    p = tmp_path / f"x{suffix}"
    sitk.WriteImage(_img(), str(p), suffix not in (".nii",))
    verify_image_file(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        verify_image_file(p)


def test_check_output_location(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_output_location(tmp_path)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_location(tmp_path / "f" / "out.nii.gz")
    with pytest.raises(OutputError, match="is a file; a folder is expected"):
        check_output_location(tmp_path / "f", folder=True)
    assert check_output_location(tmp_path / "new" / "deeper" / "x.nii") == tmp_path / "new" / "deeper" / "x.nii"
    assert not (tmp_path / "new").exists()  # nothing created by the check


_WRITERS = r"""
import sys, json, pathlib, numpy as np, SimpleITK as sitk, torch
from repux.errors import OutputError
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path({out!r})
results = {{}}
def attempt(name, fn):
    try:
        fn(); results[name] = "ok"
    except OutputError as e:
        results[name] = "OutputError: " + str(e)
    except BaseException as e:
        results[name] = "OTHER " + type(e).__name__ + ": " + str(e)
img = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 5, (40, 100, 100)).astype(np.uint8))
from repux.io.images import write_image, write_segmentation_nrrd
from repux.labels import FLARE
for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
    attempt("image" + suffix, lambda: write_image(img, out / ("image" + suffix), compress=suffix != ".nii"))
attempt("seg.nrrd", lambda: write_segmentation_nrrd(img, FLARE, out / "labels.seg.nrrd"))
from repux.training.checkpoint import save_checkpoint
attempt("checkpoint", lambda: save_checkpoint({{"model": {{"w": torch.randn(100000)}}, "iteration": 2}}, out / "checkpoint.pt"))
from repux.models.folder import save_model
from repux.nn import create_model
torch.manual_seed(0)
attempt("model", lambda: save_model(create_model("tiny", out_channels=FLARE.num_classes), out / "model", labels=FLARE, overwrite=True))
from repux.io.files import atomic_write_text
attempt("json", lambda: atomic_write_text(out / "report.json", "x" * 200000))
from repux.data.datasets import write_manifest, Case
attempt("manifest", lambda: write_manifest(out / "ds", FLARE, [Case("c%05d" % i, out / "i.nii.gz", out / "l.nii.gz") for i in range(3000)]))
print("RESULTS " + json.dumps(results))
"""


def _previous_files(out):
    """Small valid files that a failed write must leave intact."""
    import torch

    from repux.training.checkpoint import save_checkpoint

    write_image(_img((4, 5, 6)), out / "image.nii")
    save_checkpoint({"model": {"w": torch.zeros(3)}, "iteration": 1}, out / "checkpoint.pt")
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _results(proc):
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert line, proc.stdout + proc.stderr
    import json

    return json.loads(line[0][8:])


def test_every_writer_under_a_file_size_limit(tmp_path):
    """RLIMIT_FSIZE 64 KB: every writer raises OutputError (never a silent truncated file), previous files intact, no temp files."""
    out = tmp_path / "out"
    out.mkdir()
    before = _previous_files(out)
    proc = run_python(_WRITERS.format(out=str(out)), limit_bytes=LIMIT)
    results = _results(proc)
    assert len(results) == 9
    for name, outcome in results.items():
        assert outcome.startswith("OutputError: cannot write"), (name, outcome)
        assert "\n" not in outcome
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    assert not (out / "model").exists() and not (out / "labels.seg.nrrd").exists() and not (out / "report.json").exists()
    assert not (out / "ds" / "repux-dataset.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # space is back: the same writes succeed
    proc = run_python(_WRITERS.format(out=str(out)))
    assert set(_results(proc).values()) == {"ok"}


def test_every_writer_in_a_read_only_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    before = _previous_files(out)
    code = _WRITERS.format(out=str(out))
    from hardening_helpers import readonly_command

    proc = subprocess.run(
        readonly_command([sys.executable, "-c", code], out),
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.chmod(out, 0o755)
    results = _results(proc)
    for name, outcome in results.items():
        assert outcome.startswith("OutputError: cannot write") and ("Read-only file system" in outcome or "Permission denied" in outcome), (name, outcome)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _ct(path):
    rng = np.random.default_rng(1)
    a = np.full((40, 100, 100), -1000, np.int16)
    a[5:35, 20:80, 20:80] = 40 + rng.integers(-10, 10, (30, 60, 60))
    im = sitk.GetImageFromArray(a)
    im.SetSpacing((4.0, 4.0, 5.0))
    sitk.WriteImage(im, str(path))
    return path


def test_segment_under_a_file_size_limit_fails_cleanly(tmp_path):
    """The issue's case: 'repux segment -o out.nii' under a 64 KB limit used to exit 0 with a truncated file."""
    ct = _ct(tmp_path / "ct.nii.gz")
    out = tmp_path / "res" / "out.nii"
    out.parent.mkdir()
    out.write_bytes(b"previous result")
    code = f"import sys; from repux.cli.main import main; sys.exit(main(['segment', '-i', {str(ct)!r}, '-o', {str(out)!r}, '--progress', 'none', '--roi-size', '32']))"
    proc = run_python(code, limit_bytes=LIMIT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "cannot write" in line and "out.nii" in line
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


def test_read_only_output_folder_fails_before_inference(tmp_path):
    ct = _ct(tmp_path / "ct.nii.gz")
    ro = tmp_path / "ro"
    ro.mkdir()
    code = (
        "import sys, time; t = time.perf_counter(); from repux.cli.main import main; "
        f"rc = main(['segment', '-i', {str(ct)!r}, '-o', {str(ro / 'out.seg.nrrd')!r}]); "
        "print('TORCH', 'torch' in sys.modules, 'SECONDS', round(time.perf_counter() - t, 3)); sys.exit(rc)"
    )
    from hardening_helpers import readonly_command

    proc = subprocess.run(
        readonly_command([sys.executable, "-c", code], ro),
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.chmod(ro, 0o755)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--output" in line and "cannot be written" in line
    assert "TORCH False" in proc.stdout
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["segment", "-i", "/no/such/ct.nii.gz", "-o", "{tmp}/o.nii.gz"], "--input '/no/such/ct.nii.gz' does not exist"),
        (["segment", "-i", "{tmp}/ct.nii.g", "-o", "{tmp}/o.nii.gz"], "Did you mean 'ct.nii.gz'?"),
        (["segment", "-i", "{tmp}/ct.nii.gz", "-o", "{tmp}/o.nii.gz", "-m", "no-such-model"], "--model: unknown model 'no-such-model'"),
        (["train", "--dataset", "{tmp}/nothing", "-o", "m1"], "--dataset '{tmp}/nothing' does not exist"),
        (["finetune", "--dataset", "{tmp}/ct.nii.gz", "--base", "repux-tiny-phantom", "-o", "m1"], "is a file; a folder is expected"),
        (["evaluate", "-m", "repux-tiny-phantom", "--dataset", "{tmp}", "-o", "{tmp}/ct.nii.gz/r"], "is a file, not a folder"),
    ],
)
def test_mistyped_paths_answer_fast_without_heavy_imports(tmp_path, argv, expected):
    _ct(tmp_path / "ct.nii.gz")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (
        "import sys, time; t = time.perf_counter(); from repux.cli.main import main; "
        f"rc = main({argv!r}); dt = time.perf_counter() - t; "
        "print('HEAVY', sorted(m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules), 'SECONDS', round(dt, 3)); sys.exit(rc)"
    )
    t = time.perf_counter()
    proc = run_python(code)
    wall = time.perf_counter() - t
    assert proc.returncode == 1, proc.stderr
    assert expected.replace("{tmp}", str(tmp_path)) in one_error_line(proc.stderr)
    assert "HEAVY []" in proc.stdout
    assert wall < 5.0  # the whole interpreter; the command itself is reported below
    seconds = float(proc.stdout.split("SECONDS")[1])
    assert seconds < 1.0, proc.stdout


def test_settings_refuse_unknown_keys_and_zero_threads():
    from repux.config import InferenceSettings
    from repux.device import set_threads

    with pytest.raises(ConfigError, match=r"unknown inference keys \['overlapp'\]"):
        InferenceSettings.from_dict({"roi_size": [96, 96, 96], "overlapp": 0.5})
    for bad in (0, -1, 10**6, 2.5, True):
        with pytest.raises(ConfigError, match="--threads must be an integer from 1 to 1024"):
            set_threads(bad)
    assert set_threads(None) >= 1


def test_main_turns_user_os_errors_into_one_line_but_keeps_bug_tracebacks(capsys, monkeypatch):
    from repux.cli import main as cli_main

    def user_error(args, ctx):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/ct.nii.gz")

    def bug(args, ctx):
        raise OSError(errno.EBADF, "Bad file descriptor")

    parser = cli_main.build_parser

    def patched(func):
        def build():
            p = parser()
            p.set_defaults(func=func)
            for a in p._subparsers._group_actions[0].choices.values():
                a.set_defaults(func=func)
            return p

        return build

    monkeypatch.setattr(cli_main, "build_parser", patched(user_error))
    assert cli_main.main(["presets"]) == 1
    assert capsys.readouterr().err.strip() == "repux: error: cannot use '/data/ct.nii.gz': Permission denied (EACCES); choose a folder you can write to."

    def disk_full(args, ctx):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_main, "build_parser", patched(disk_full))
    assert cli_main.main(["presets"]) == 1
    assert capsys.readouterr().err.strip().startswith("repux: error: No space left on device (ENOSPC); free some space")
    monkeypatch.setattr(cli_main, "build_parser", patched(bug))
    with pytest.raises(OSError):
        cli_main.main(["presets"])


def test_model_folders_and_checkpoints_get_the_umask_mode(tmp_path, tiny_model_dir):
    import torch

    from repux.labels import FLARE
    from repux.models.folder import save_model
    from repux.models.store import ModelStore
    from repux.nn import create_model
    from repux.training.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        card = save_model(create_model("tiny", out_channels=FLARE.num_classes), tmp_path / "m", labels=FLARE)
        assert stat.S_IMODE(card.path.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in card.path.iterdir()} == {0o644}
        save_checkpoint({"model": {"w": torch.zeros(2)}, "iteration": 0}, tmp_path / "run" / "checkpoint.pt")
        assert stat.S_IMODE((tmp_path / "run" / "checkpoint.pt").stat().st_mode) == 0o644
        installed = ModelStore().import_model(tiny_model_dir, model_id="mode-test")
        assert stat.S_IMODE(installed.path.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in installed.path.iterdir()} == {0o644}
    finally:
        os.umask(old)
