"""Training runs under stress (issue 14): full disks, read-only run folders, stops during validation, corrupted state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from hardening_helpers import REPO, leftovers, one_error_line, readonly_command, restore_repux_logger, run_python

from repux.config import Preprocessing
from repux.data.datasets import load_dataset
from repux.errors import Cancelled, CheckpointError, DatasetError
from repux.progress import CancelToken
from repux.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from repux.training.trainer import TrainConfig, train

SMALL = {"feature_sizes": (4, 8, 8, 16), "depths": (1, 1, 1, 1), "kernel_size": 7, "hidden_size": 16}


def _config(**kw):
    base = dict(preset="tiny", model_args=SMALL, roi_size=(32, 32, 32), batch_size=1, max_iterations=4, val_interval=2, checkpoint_interval=1,
                warmup_iterations=1, preprocessing=Preprocessing(spacing=(4.0, 4.0, 5.0)), seed=1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


_TRAIN = r"""
import sys
from repux.config import Preprocessing
from repux.data.datasets import load_dataset
from repux.errors import RepuxError
from repux.training.trainer import TrainConfig, train
cfg = TrainConfig(preset="tiny", model_args={small!r}, roi_size=(32, 32, 32), batch_size=1, max_iterations={iters}, val_interval=2,
                  checkpoint_interval=1, warmup_iterations=1, preprocessing=Preprocessing(spacing=(4.0, 4.0, 5.0)), seed=1)  # = _config()
try:
    r = train(load_dataset({ds!r}), {out!r}, cfg, run_dir={run!r}, device="cpu", threads=1, resume={resume})
    print("DONE", r.iterations)
except RepuxError as e:
    print("repux: error: " + str(e), file=sys.stderr)
    sys.exit(1)
"""


def _train_code(ds, out, run, iters, resume):
    return _TRAIN.format(small=SMALL, ds=str(ds), out=None if out is None else str(out), run=str(run), iters=iters, resume=resume)


def test_checkpoint_under_a_file_size_limit_then_resume(blob_dataset, tmp_path):
    """A full disk while checkpointing: one-line error, previous checkpoint intact, and the run resumes once space is back."""
    run, out = tmp_path / "run", tmp_path / "model"
    train(load_dataset(blob_dataset), None, _config(max_iterations=2), run_dir=run, device="cpu", threads=1)
    before = (run / CHECKPOINT).read_bytes()
    size = len(before)
    proc = run_python(_train_code(blob_dataset, out, run, 4, True), limit_bytes=size // 2, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    assert "cannot write" in line and "checkpoint.pt" in line and "File too large (EFBIG)" in line
    assert (run / CHECKPOINT).read_bytes() == before and load_checkpoint(run / CHECKPOINT)["iteration"] == 2
    assert leftovers(run) == [] and not out.exists()
    res = train(load_dataset(blob_dataset), out, _config(max_iterations=4), run_dir=run, device="cpu", threads=1, resume=True)
    assert res.iterations == 4
    assert load_checkpoint(run / CHECKPOINT)["iteration"] == 4 and (out / "model.safetensors").is_file()


def test_read_only_run_folder_is_refused_before_training(blob_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time; t = time.perf_counter(); from repux.cli.main import main; "
        f"rc = main(['train', '--dataset', {str(blob_dataset)!r}, '-o', {str(tmp_path / 'm')!r}, '--run-dir', {str(run)!r}, '--max-iterations', '1']); "
        "print('TORCH', 'torch' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run(readonly_command([sys.executable, "-c", code], run), capture_output=True, text=True, cwd=str(REPO), timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    os.chmod(run, 0o755)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--run-dir" in line and "cannot be written" in line
    assert "TORCH False" in proc.stdout


def test_stop_during_validation_writes_the_checkpoint_at_once(blob_dataset, tmp_path, monkeypatch):
    """Measure the time from a stop request (while a validation pass runs) to the checkpoint being written."""
    import monai.inferers

    real = monai.inferers.sliding_window_inference
    validating = threading.Event()

    def slow_sliding_window(inputs, roi_size, sw_batch_size, predictor, *a, **kw):
        def slow(b):
            validating.set()
            time.sleep(0.05)  # a loaded machine: every window takes a while
            return predictor(b)

        return real(inputs, roi_size, sw_batch_size, slow, *a, **kw)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", slow_sliding_window)
    ds = load_dataset(blob_dataset)
    latencies = []
    for attempt, delay in enumerate((0.0, 0.05, 0.12)):
        token = CancelToken()
        validating.clear()
        stamp = {}

        def stopper(delay=delay, token=token, stamp=stamp):
            validating.wait(60)
            time.sleep(delay)
            stamp["t"] = time.monotonic()
            token.cancel("test stop")

        t = threading.Thread(target=stopper)
        t.start()
        run = tmp_path / f"run{attempt}"
        with pytest.raises(Cancelled, match="iteration 2"):
            train(ds, tmp_path / f"m{attempt}", _config(), run_dir=run, device="cpu", threads=1, cancel=token)
        latencies.append(time.monotonic() - stamp["t"])
        t.join()
        state = load_checkpoint(run / CHECKPOINT)
        assert state["iteration"] == 2
        assert state["validation_pending"] is True or attempt > 0  # a late stop may come just after the pass
    print(f"\nworst time to stop with validation running: {max(latencies):.3f} s (all: {[round(x, 3) for x in latencies]})")
    assert max(latencies) < 5.0
    # the resumed run validates first, then goes on to the end
    monkeypatch.setattr(monai.inferers, "sliding_window_inference", real)
    res = train(ds, tmp_path / "m0", _config(), run_dir=tmp_path / "run0", device="cpu", threads=1, resume=True)
    assert res.iterations == 4
    assert [h["iteration"] for h in res.history if h["stage"] == "validate"] == [2, 4]


# ------------------------------------------------------------------------------------------- corrupted state


def _manifest(blob_dataset):
    return blob_dataset / "repux-dataset.json"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t[: len(t) // 2], "is truncated or was edited by hand"),
        (lambda t: "[]", "must hold a JSON object"),
        (lambda t: json.dumps({**json.loads(t), "labels": "liver"}), "'labels' must be a non-empty list"),
        (lambda t: json.dumps({**json.loads(t), "cases": {"a": 1}}), "'cases' must be a list"),
        (lambda t: json.dumps({**json.loads(t), "cases": [{"id": "x", "image": "a.nii.gz"}]}), r"case 1 \('x'\) lacks label"),
        (lambda t: json.dumps({**json.loads(t), "cases": [json.loads(t)["cases"][0]] * 2}), "appears twice"),
        (lambda t: json.dumps({**json.loads(t), "cases": [{**json.loads(t)["cases"][0], "split": "validation"}]}), "has split 'validation'"),
        (lambda t: json.dumps({**json.loads(t), "format": "other"}), "is not a RepUX dataset manifest"),
    ],
    ids=["truncated", "not-an-object", "labels-string", "cases-dict", "case-without-label", "duplicate-case", "bad-split", "wrong-format"],
)
def test_corrupted_dataset_manifest_is_named(blob_dataset, edit, message, capsys):
    m = _manifest(blob_dataset)
    m.write_text(edit(m.read_text()))
    with pytest.raises(DatasetError, match=message):
        load_dataset(blob_dataset)
    from repux.cli.main import main

    assert main(["dataset", "check", str(blob_dataset)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repux: error: ") and str(m) in err[0]


def test_run_folder_with_missing_or_mismatched_checkpoint(blob_dataset, tmp_path):
    ds = load_dataset(blob_dataset)
    with pytest.raises(CheckpointError, match=r"no training checkpoint at '.*empty-run/checkpoint.pt'; start without --resume"):
        train(ds, None, _config(), run_dir=tmp_path / "empty-run", device="cpu", resume=True)
    train(ds, None, _config(max_iterations=1), run_dir=tmp_path / "run", device="cpu")
    other = dict(SMALL, feature_sizes=(8, 8, 8, 16))
    with pytest.raises(CheckpointError, match=r"written for another network \(differs in feature_sizes\)"):
        train(ds, None, _config(model_args=other), run_dir=tmp_path / "run", device="cpu", resume=True)
    ck = tmp_path / "run" / CHECKPOINT
    state = load_checkpoint(ck)
    state["labels"] = [{**d, "name": "kidney"} if i == 0 else d for i, d in enumerate(state["labels"])]
    save_checkpoint(state, ck)
    with pytest.raises(CheckpointError, match=r"written for the organs \[kidney, spleen\], not \[liver, spleen\]"):
        train(ds, None, _config(), run_dir=tmp_path / "run", device="cpu", resume=True)
    del state["optimizer"]
    torch.save(state, ck)
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        load_checkpoint(ck)
