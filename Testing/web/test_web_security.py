"""RepUX Web security: the file browser stays inside its root, uploads are checked before loading,
the server listens on 127.0.0.1 unless told otherwise, and bad options fail before heavy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO

from RepUXWeb.files import FileAccessError, FileBrowser, UploadError, check_upload, safe_file_name

pytestmark = [pytest.mark.web]

NIFTI_GZ = b"\x1f\x8b\x08\x00" + bytes(1020)
NRRD = b"NRRD0004\ntype: short\n" + bytes(1000)
PDF = b"%PDF-1.7\n" + bytes(1000)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "cases" / "dicom").mkdir(parents=True)
    (root / "cases" / "ct.nii.gz").write_bytes(NIFTI_GZ)
    (root / "notes.txt").write_text("x")
    dcm = root / "cases" / "dicom" / "IM0001"
    dcm.write_bytes(bytes(128) + b"DICM" + bytes(64))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.nii.gz").write_bytes(NIFTI_GZ)
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    (root / "secret-link.nii.gz").symlink_to(outside / "secret.nii.gz")
    (root / "link-in.nii.gz").symlink_to(root / "cases" / "ct.nii.gz")
    return root, outside


@pytest.mark.parametrize(
    "path, message",
    [
        ("..", "'..' is not allowed"),
        ("../outside/secret.nii.gz", "'..' is not allowed"),
        ("cases/../../outside/secret.nii.gz", "'..' is not allowed"),
        ("cases\\..\\..\\outside", "'..' is not allowed"),
        ("link-out/secret.nii.gz", "leads outside the root"),
        ("link-out", "leads outside the root"),
        ("secret-link.nii.gz", "leads outside the root"),
        ("missing.nii.gz", "does not exist"),
    ],
)
def test_browser_refuses_paths_outside_root(tree, path, message):
    root, _ = tree
    browser = FileBrowser(root)
    with pytest.raises(FileAccessError, match=message.replace("(", r"\(")):
        browser.files_to_open(path)
    with pytest.raises(FileAccessError):
        browser.list(path)


def test_browser_refuses_absolute_paths_outside_root(tree):
    root, outside = tree
    browser = FileBrowser(root)
    with pytest.raises(FileAccessError, match="outside the root"):
        browser.resolve(str(outside / "secret.nii.gz"))
    with pytest.raises(FileAccessError, match="outside the root"):
        browser.resolve("/etc/passwd")
    assert browser.resolve(str(root / "cases" / "ct.nii.gz")) == (root / "cases" / "ct.nii.gz").resolve()


def test_browser_lists_only_what_is_inside(tree):
    root, _ = tree
    browser = FileBrowser(root)
    listing = browser.list("")
    names = {e["name"]: e for e in listing["entries"]}
    assert set(names) == {"cases", "link-in.nii.gz", "notes.txt"}, "symlinks that lead out must not be listed"
    assert listing["parent"] is None
    assert names["link-in.nii.gz"]["openable"] and not names["notes.txt"]["openable"]
    cases = {e["name"]: e for e in browser.list("cases")["entries"]}
    assert cases["dicom"]["kind"] == "dicom-folder" and cases["ct.nii.gz"]["kind"] == "image"
    assert browser.list("cases")["parent"] == ""
    assert browser.files_to_open("cases/dicom") == [(root / "cases" / "dicom" / "IM0001").resolve()]
    assert browser.files_to_open("link-in.nii.gz") == [(root / "cases" / "ct.nii.gz").resolve()]
    with pytest.raises(FileAccessError, match="not an image file"):
        browser.files_to_open("notes.txt")
    with pytest.raises(FileAccessError, match="no DICOM files"):
        browser.files_to_open("")


def test_upload_checks():
    limit = 10 * 1024 * 1024
    assert check_upload("ct.nii.gz", 5_000_000, NIFTI_GZ, limit) == "ct.nii.gz"
    assert check_upload("scan.nrrd", 2048, NRRD, limit) == "scan.nrrd"
    assert check_upload("../../etc/evil name.nii.gz", 2048, NIFTI_GZ, limit) == "evil_name.nii.gz"
    with pytest.raises(UploadError, match=r"ct.nii.gz is 20.0 MB; the upload limit is 10 MB \(repux web --max-upload-mb\)"):
        check_upload("ct.nii.gz", 20_000_000, NIFTI_GZ, limit)
    with pytest.raises(UploadError, match="report.pdf is not a CT image RepUX Web can read"):
        check_upload("report.pdf", 2048, PDF, limit)
    with pytest.raises(UploadError, match="does not look like a .nii.gz image"):
        check_upload("renamed.nii.gz", 2048, PDF, limit)
    with pytest.raises(UploadError, match="empty"):
        check_upload("ct.nrrd", 0, b"", limit)
    assert safe_file_name("..\\..\\x.nrrd") == "x.nrrd" and safe_file_name(".hidden") == "hidden" and safe_file_name("") == "upload"


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_cli_defaults_to_loopback_and_validates_before_heavy_imports(tmp_path):
    from repux.cli.main import build_parser

    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.root, args.max_upload_mb) == ("127.0.0.1", 0, ".", 1024.0)
    code = (
        "import sys\nfrom repux.cli.main import main\n"
        "def rc(argv):\n    try:\n        return main(argv)\n    except SystemExit as e:\n        return e.code\n"
        f"rcs = [rc(['web', '--port', '70000']), rc(['web', '--root', {str(tmp_path / 'nope')!r}]), rc(['web', '--max-upload-mb', '0']),"
        " rc(['web', '--host', 'bad host'])]\n"
        "print(rcs, [m for m in ('trame', 'trame_slicer', 'slicer', 'vtk', 'torch') if m in sys.modules])"
    )
    result = _run(code)
    assert result.stdout.strip().splitlines()[-1] == "[2, 1, 2, 1] []", result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert errors == [
        "repux: error: argument --port: 70000 is not allowed: use a port in 1..65535, or 0 for a free one (see 'repux web --help')",
        f"repux: error: --root {str(tmp_path / 'nope')!r} is not a folder.",
        "repux: error: argument --max-upload-mb: 0 is not allowed: use a number > 0 (see 'repux web --help')",
        "repux: error: --host 'bad host' is not an IP address or host name (e.g. 127.0.0.1).",
    ]


def test_missing_web_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    import RepUXWeb.cli as commands_web
    from repux.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(commands_web.importlib.util, "find_spec", lambda name, *a: None if name == "trame_slicer" else real(name, *a))
    assert main(["web", "--root", str(REPO)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        'repux: error: RepUX Web needs the web extra: pip install -e ".[web]" (trame-slicer 2.0.0 with slicer-core 5.11); '
        "the 'trame_slicer' module is missing."
    ]


def test_import_repux_does_not_import_web():
    result = _run(
        "import sys, repux, repux.cli.main, RepUXWeb, RepUXWeb.files\n"
        "heavy = ('trame', 'trame_slicer', 'slicer', 'vtk', 'vtkmodules')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy), 'RepUXWeb.app' in sys.modules)"
    )
    assert result.stdout.strip() == "[] False", result.stdout + result.stderr
    result = _run("import sys, repux\nprint('RepUXWeb' in sys.modules)")
    assert result.stdout.strip() == "False"
