"""Untrusted model files and concurrent installs (issue 14): each attack refused before anything is installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
from hardening_helpers import REPO, restore_repux_logger

from repux.errors import ModelFileError
from repux.io.locks import FileLock, LockedError
from repux.models.folder import CARD_FILE, WEIGHTS_FILE, load_model, sha256_file, verify_model
from repux.models.store import ModelStore, safe_extract_zip

ATTACKS: list[str] = []  # names of the archive attacks tried (reported by test_attack_count)


def _store_is_empty(store: ModelStore) -> None:
    left = [p.name for p in store.models_dir.iterdir()] if store.models_dir.exists() else []
    assert left == [], left


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def _model_members(model_dir: Path, prefix: str = "m/") -> list[tuple[str, bytes]]:
    return [(prefix + f.name, f.read_bytes()) for f in sorted(model_dir.iterdir())]


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name)
    zi.external_attr = (mode & 0xFFFF) << 16
    zi.create_system = 3  # unix
    return zi


ZIP_ATTACKS = {
    "zip-slip": lambda md: [*_model_members(md), ("m/../../evil.txt", b"x")],
    "absolute path": lambda md: [*_model_members(md), ("/tmp/repux-evil.txt", b"x")],
    "drive letter": lambda md: [*_model_members(md), ("C:/evil.txt", b"x")],
    "backslash traversal": lambda md: [*_model_members(md), ("m\\..\\..\\evil.txt", b"x")],
    "symbolic link": lambda md: [*_model_members(md), (_info("m/link", stat.S_IFLNK | 0o777), b"/etc/passwd")],
    "hard link / special file (fifo)": lambda md: [*_model_members(md), (_info("m/fifo", stat.S_IFIFO | 0o644), b"")],
    "device file": lambda md: [*_model_members(md), (_info("m/dev", stat.S_IFCHR | 0o644), b"")],
    "duplicate member": lambda md: [*_model_members(md), ("m/" + CARD_FILE, b"{}")],
    "thousands of entries": lambda md: [*_model_members(md), *[(f"m/junk/{i}", b"") for i in range(1500)]],
    "zip bomb (ratio)": lambda md: [*_model_members(md), ("m/zeros.bin", b"\0" * (24 * 1024 * 1024))],
}


@pytest.mark.parametrize("attack", list(ZIP_ATTACKS))
def test_archive_attacks_are_refused_before_install(attack, tmp_path, tiny_model_dir):
    ATTACKS.append(attack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns when writing a duplicate name
        archive = _zip(tmp_path / "evil.zip", ZIP_ATTACKS[attack](tiny_model_dir))
    store = ModelStore()
    with pytest.raises(ModelFileError, match="refusing to extract"):
        store.import_model(archive)
    _store_is_empty(store)
    assert not Path("/tmp/repux-evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_total_size_limit_and_corrupted_archive(tmp_path, tiny_model_dir):
    ATTACKS.extend(["total size limit", "corrupted archive (CRC)"])
    archive = _zip(tmp_path / "m.zip", _model_members(tiny_model_dir), zipfile.ZIP_STORED)
    with pytest.raises(ModelFileError, match="unpacks to more than"):
        safe_extract_zip(archive, tmp_path / "x", max_bytes=1000)
    data = bytearray(archive.read_bytes())
    i = data.find(b'"format"')  # flip a byte inside model.json's stored data: CRC mismatch
    data[i + 2] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    store = ModelStore()
    with pytest.raises(ModelFileError, match="corrupted"):
        store.import_model(bad)
    _store_is_empty(store)


def _variant(src: Path, dst: Path, *, card=None, state=None) -> Path:
    """A copy of a model folder with the card or the weights changed (sha256 and size updated so only the deep checks catch it)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if state is not None:
        sd = load_file(str(dst / WEIGHTS_FILE))
        save_file(state(sd), str(dst / WEIGHTS_FILE))
    d = json.loads((dst / CARD_FILE).read_text())
    if card is not None:
        card(d)
    d["sha256"] = d["weights"]["sha256"] = sha256_file(dst / WEIGHTS_FILE)
    d["weights"]["size_bytes"] = (dst / WEIGHTS_FILE).stat().st_size
    (dst / CARD_FILE).write_text(json.dumps(d))
    return dst


def _first_float(sd):
    return next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)


MODEL_ATTACKS = {
    "absurd feature sizes (10^9)": (dict(card=lambda d: d["model_args"].update(feature_sizes=[10**9] * 4)), "out of range"),
    "absurd network size": (dict(card=lambda d: d["model_args"].update(feature_sizes=[4096] * 4, kernel_size=63)), "RepUX refuses more than"),
    "non-integer depths": (dict(card=lambda d: d["model_args"].update(depths=["1", 1, 1, 1])), "must be a list of 4 integers"),
    "wrong dtype (int32 weights)": (
        dict(state=lambda sd: {**sd, _first_float(sd): sd[_first_float(sd)].to(__import__("torch").int32)}),
        "wrong dtype",
    ),
    "NaN weights": (dict(state=lambda sd: {**sd, _first_float(sd): sd[_first_float(sd)] * float("nan")}), "NaN or infinite"),
    "mis-shaped tensor": (dict(state=lambda sd: {**sd, _first_float(sd): sd[_first_float(sd)].flatten()[:3].clone()}), "does not match the network"),
    "extra tensor": (dict(state=lambda sd: {**sd, "evil.payload": sd[_first_float(sd)].clone()}), "unexpected"),
}


@pytest.mark.parametrize("attack", list(MODEL_ATTACKS))
def test_malicious_model_contents_refused_before_install(attack, tmp_path, tiny_model_dir):
    ATTACKS.append(attack)
    kwargs, message = MODEL_ATTACKS[attack]
    folder = _variant(tiny_model_dir, tmp_path / "m", **kwargs)
    store = ModelStore()
    with pytest.raises(ModelFileError, match=message):
        store.import_model(folder)
    archive = _zip(tmp_path / "m.zip", _model_members(folder))
    with pytest.raises(ModelFileError, match=message):
        store.import_model(archive)
    _store_is_empty(store)


def test_folder_with_symlink_and_missing_weights(tmp_path, tiny_model_dir):
    ATTACKS.extend(["symbolic link in a model folder", "model.json without weights"])
    linked = tmp_path / "linked"
    shutil.copytree(tiny_model_dir, linked)
    (linked / WEIGHTS_FILE).unlink()
    (linked / WEIGHTS_FILE).symlink_to(tiny_model_dir / WEIGHTS_FILE)
    store = ModelStore()
    with pytest.raises(ModelFileError, match="is a symbolic link"):
        store.import_model(linked)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_model_dir / CARD_FILE, bare / CARD_FILE)
    with pytest.raises(ModelFileError, match=rf"weights file '.*{WEIGHTS_FILE}' is missing"):
        store.import_model(bare)
    with pytest.raises(ModelFileError, match=rf"weights file '.*bare/{WEIGHTS_FILE}' is missing"):
        load_model(bare)
    _store_is_empty(store)


def test_attack_count(capsys):
    """Reports the attacks tried in this session (all of them when the whole file runs)."""
    with capsys.disabled():
        print(f"\narchive and model-file attacks tried: {len(ATTACKS)} ({', '.join(ATTACKS)})")
    assert len(ZIP_ATTACKS) + len(MODEL_ATTACKS) + 4 >= 21


# ------------------------------------------------------------------------------------------- concurrency


def test_import_while_the_id_is_locked_names_the_holder(tiny_model_dir):
    store = ModelStore()
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with store.lock("tiny-test"), pytest.raises(LockedError, match=rf"model id 'tiny-test' is in use by process {os.getpid()}"):
        store.import_model(tiny_model_dir)
    assert store.import_model(tiny_model_dir).id == "tiny-test"  # free again


def test_two_imports_of_the_same_id_at_once(tmp_path, tiny_model_dir, _isolated_store):
    """Two processes import the same id at the same moment: exactly one wins, the other gets a clear error, the store is consistent."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        "from repux.cli.main import main\n"
        f"sys.exit(main(['models', 'import', {str(tiny_model_dir)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "REPUX_HOME": str(_isolated_store)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)  # both processes wait at the gate
    go.write_text("go")
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    assert "Traceback" not in loser[2]
    err = [ln for ln in loser[2].splitlines() if ln.startswith("repux: error:")]
    assert len(err) == 1 and ("already installed" in err[0] or "is in use by process" in err[0]), loser[2]
    store = ModelStore()
    assert verify_model(store.path("tiny-test")).id == "tiny-test"
    assert sorted(p.name for p in store.models_dir.iterdir() if not p.name.endswith(".lock")) == ["tiny-test"]


def test_loading_a_model_while_it_is_replaced(tmp_path, tiny_model_dir):
    """A reader gets the old or the new model (or, at worst, a clear ModelFileError), never a crash or a half folder."""
    store = ModelStore()
    store.import_model(tiny_model_dir)
    path = store.path("tiny-test")
    stop = threading.Event()
    errors: list[BaseException] = []
    replaced = [0]

    def replacer():
        while not stop.is_set():
            try:
                store.import_model(tiny_model_dir, replace=True)
                replaced[0] += 1
            except LockedError:
                pass
            except BaseException as err:
                errors.append(err)

    t = threading.Thread(target=replacer)
    t.start()
    outcomes = {"ok": 0, "clear error": 0}
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            try:
                load_model(path)
                outcomes["ok"] += 1
            except ModelFileError:
                outcomes["clear error"] += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert replaced[0] >= 2 and outcomes["ok"] >= 2, (replaced, outcomes)
    verify_model(path)
    print(f"\nreads during {replaced[0]} replacements: {outcomes}")


# ------------------------------------------------------------------------------------------- run-folder lock


def test_run_folder_lock_names_the_pid_and_stale_locks_are_taken_over(tmp_path):
    run = tmp_path / "run"
    code = f"import sys, time; from repux.training.trainer import lock_run_dir; lock_run_dir({str(run)!r}); print('LOCKED', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "LOCKED"
        with pytest.raises(LockedError, match=rf"run folder '.*run' is in use by process {p.pid} since"):
            FileLock(run / "run.lock", f"run folder {str(run)!r}").acquire()
        # the CLI answers at once, before any training starts
        from repux.cli.main import main

        ds = tmp_path / "ds"
        ds.mkdir()
        t = time.perf_counter()
        rc = main(["finetune", "--base", "repux-tiny-phantom", "--dataset", str(ds), "-o", "new-model", "--run-dir", str(run)])
        assert rc == 1 and time.perf_counter() - t < 1.0
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    lock = FileLock(run / "run.lock", "run").acquire()  # the killed process's lock is stale: taken over
    assert lock.took_over and lock.took_over["pid"] == p.pid
    lock.release()


def test_cli_run_lock_error_is_one_line(tmp_path, capsys):
    from repux.cli.main import main

    run = tmp_path / "run"
    ds = tmp_path / "ds"
    ds.mkdir()
    with FileLock(run / "run.lock", f"run folder {str(run)!r}"):
        rc = main(["train", "--dataset", str(ds), "-o", "m2", "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("repux: error: run folder") and f"process {os.getpid()}" in err[0]
