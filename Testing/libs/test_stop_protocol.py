"""One stop protocol for every background job, also through a launcher that does not forward signals.

Inside Slicer the engine runs under ``PythonSlicer`` (a CTKAppLauncher that starts ``python-real`` as its
child and dies on SIGTERM without forwarding it; see ``launcher.py``).  Each job test runs through the
plain interpreter and through that launcher shape: Stop of a fine-tune leaves a checkpoint from which
``--resume`` continues exactly (same weights as an uninterrupted run); Cancel of a segmentation leaves no
node, file or process.  The stop measurements are printed (``pytest -s``) for the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import trainer_fixtures
from launcher import launchedPids, makeLauncher, pidAlive

pytestmark = [pytest.mark.slicer, pytest.mark.skipif(os.name == "nt", reason="the launcher script is POSIX-shaped")]

INTERPRETERS = ["plain", "launcher"]


@pytest.fixture(params=INTERPRETERS)
def interpreter(request, tmp_path):
    return sys.executable if request.param == "plain" else makeLauncher(tmp_path)


def waitFor(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ----------------------------------------------------------------------------- runner level


def test_launcher_shape_dies_on_sigterm_and_keeps_its_child(tmp_path):
    """The test launcher behaves like CTKAppLauncher: SIGTERM kills it, its child keeps running (then sees EOF)."""
    launcher = makeLauncher(tmp_path)
    marker = tmp_path / "eof"
    code = f"import sys, time; sys.stdin.read(); open({str(marker)!r}, 'w').write('eof'); time.sleep(0.2)"
    proc = subprocess.Popen([launcher, "-c", code], stdin=subprocess.PIPE, start_new_session=True)
    assert waitFor(lambda: launchedPids(launcher), 10)
    child = launchedPids(launcher)[0]
    proc.terminate()
    assert proc.wait(10) == -15
    assert waitFor(lambda: marker.exists(), 10), "the child did not see end-of-input when the launcher died"
    assert waitFor(lambda: not pidAlive(child), 10)
    proc.stdin.close()


def test_control_channel_stop_and_fallback_kill(tmp_path):
    """``cancel()`` writes the stop line; a child that ignores it is killed after the grace period."""
    from RepUXSegmentLib.process import ProcessRunner

    launcher = makeLauncher(tmp_path)
    obedient = textwrap.dedent(
        """
        import json, sys
        print(json.dumps({"stage": "load", "fraction": 0.1}), flush=True)
        line = sys.stdin.readline()
        print(json.dumps({"stage": "stopped", "fraction": 0.1, "request": json.loads(line)}), flush=True)
        """
    )
    progress = []
    runner = ProcessRunner([launcher, "-c", obedient], control=True, onProgress=progress.append)
    runner.start()
    assert waitFor(lambda: (runner.processEvents() or True) and progress, 30)
    runner.cancel(graceSeconds=30)
    assert runner.wait(timeout=30) == 0 and runner.stopRequested
    assert progress[-1].stage == "stopped" and progress[-1].extra["request"] == {"command": "stop"}

    stubborn = "import time, sys; print('{\"stage\": \"load\", \"fraction\": 0}', flush=True); time.sleep(120)"
    progress.clear()
    runner = ProcessRunner([launcher, "-c", stubborn], control=True, onProgress=progress.append)
    runner.start()
    assert waitFor(lambda: (runner.processEvents() or True) and progress, 30)
    started = time.monotonic()
    runner.cancel(graceSeconds=0.5)
    runner.wait(timeout=30)
    assert runner.cancelled and time.monotonic() - started < 15
    assert waitFor(lambda: not any(pidAlive(p) for p in launchedPids(launcher)), 10), "the launcher's child survived"


def test_fallback_signal_waits_for_the_launchers_child(tmp_path):
    """Without the channel, SIGTERM goes to the group and the kill waits for every member, not only the launcher."""
    from RepUXSegmentLib.process import ProcessRunner

    launcher = makeLauncher(tmp_path)
    done = tmp_path / "cleaned-up"
    code = textwrap.dedent(
        f"""
        import signal, sys, time
        def handler(*args):
            time.sleep(1.0)  # e.g. finishing an iteration and writing a checkpoint
            open({str(done)!r}, "w").write("ok")
            sys.exit(143)
        signal.signal(signal.SIGTERM, handler)
        print('{{"stage": "load", "fraction": 0}}', flush=True)
        time.sleep(120)
        """
    )
    progress = []
    runner = ProcessRunner([launcher, "-c", code], onProgress=progress.append)
    runner.start()
    assert waitFor(lambda: (runner.processEvents() or True) and progress, 30)
    runner.cancel(graceSeconds=20, block=True)
    runner.wait(timeout=30)
    assert done.read_text() == "ok", "the engine under the launcher was killed before it had cleaned up"


def test_engine_stops_on_the_stop_line_and_on_end_of_input(tmp_path, tiny_model_dir):
    """``repux ... --control stdin``: the stop line -> one 'stopped' progress line, exit 0, no output written."""
    import SimpleITK as sitk
    from RepUXSegmentLib.process import childEnvironment
    from RepUXSegmentLib.testing import syntheticCTArray

    image = sitk.GetImageFromArray(syntheticCTArray((64, 96, 96)))
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    for how in ("stop-line", "end-of-input"):
        out = tmp_path / f"labels-{how}.nrrd"
        command = [sys.executable, "-m", "repux", "segment", "-i", str(tmp_path / "ct.nrrd"), "-m", str(tiny_model_dir), "-o", str(out)]
        command += ["--device", "cpu", "--quality", "best", "--progress", "json", "--control", "stdin"]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=childEnvironment())
        first = proc.stdout.readline()
        assert json.loads(first)["stage"], first
        if how == "stop-line":
            proc.stdin.write('{"command": "stop"}\n')
            proc.stdin.flush()
            assert waitFor(lambda: proc.poll() is not None, 120)  # stops on the line alone
        proc.stdin.close()  # the stop line or, alone, end-of-input (the parent is gone)
        proc.stdin = None
        rest, err = proc.communicate(timeout=120)
        lines = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
        assert proc.returncode == 0, err
        assert lines[-1]["stage"] == "stopped" and not any(line["stage"] == "done" for line in lines), lines[-3:]
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("labels")) == []


# ----------------------------------------------------------------------------- segmentation


def test_cancel_segmentation_leaves_no_node_file_or_process(mrml, tiny_model_dir, interpreter):
    from RepUXSegmentLib.segmentation import SegmentationJob, SegmentationOptions
    from RepUXSegmentLib.testing import syntheticCTArray, syntheticIJKToRAS

    volume = mrml.addVolumeFromArray(syntheticCTArray((64, 96, 96)), syntheticIJKToRAS(spacing=(2.0, 2.0, 2.0)), "big")
    nodesBefore = mrml.nodeIDs()
    stages = []
    job = SegmentationJob(
        volume,
        SegmentationOptions(model=str(tiny_model_dir), device="cpu", quality="best"),
        context=mrml.context(),
        pythonExecutable=interpreter,
        onProgress=lambda fraction, stage, message, eta: stages.append(stage),
    )
    job.start()
    temporary = job.tempDirectory
    assert waitFor(lambda: (job.processEvents() or True) and stages, 120), "no progress line within 120 s"
    started = time.monotonic()
    job.cancel()
    outcome = job.wait(timeout=60)
    seconds = time.monotonic() - started

    print(f"\n[stop-measurement] segmentation cancel via {'launcher' if interpreter != sys.executable else 'plain'}: {seconds:.2f} s, rc={outcome.returncode}")
    assert outcome.status == "cancelled" and outcome.segmentationNode is None
    assert outcome.returncode == 0 and stages[-1] == "stopped", (outcome.returncode, stages[-3:])  # stopped on request, not killed
    assert seconds < 30
    assert job.runner.process.poll() is not None and not any(pidAlive(p) for p in launchedPids(interpreter))
    assert mrml.nodeIDs() == nodesBefore
    assert not temporary.exists() and os.listdir(mrml.tempDirectory) == []


# ----------------------------------------------------------------------------- fine-tuning



@pytest.fixture(scope="module")
def finetuneReference(tmp_path_factory, tiny_model_dir):
    """A tiny dataset and the weights of an uninterrupted 4-iteration fine-tune on it."""
    from helpers import make_blob_dataset
    from RepUXTrainerLib.finetune import FinetuneJob, FinetuneOptions

    root = tmp_path_factory.mktemp("stop-protocol")
    dataset = make_blob_dataset(root / "blobs", n=3, size=(32, 32, 24), spacing=(4.0, 4.0, 5.0))
    options = FinetuneOptions(
        str(tiny_model_dir),
        str(dataset),
        str(root / "straight"),
        maxIterations=4,
        valInterval=100,
        checkpointInterval=100,
        device="cpu",
        roiSize=32,
        threads=1,
        learningRate=1e-3,
        runDirectory=str(root / "run-straight"),
        extraArguments=("--augmentation", "none", "--warmup", "1"),
    )
    outcome = FinetuneJob(options, pythonExecutable=sys.executable).wait(timeout=300)
    assert outcome.succeeded, outcome.errorMessage
    return dataset, options, _weights(root / "straight")


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_stop_finetune_checkpoints_and_resume_is_exact(finetuneReference, interpreter, tmp_path):
    from RepUXTrainerLib.finetune import FinetuneJob, FinetuneOptions

    from repux.training.checkpoint import load_checkpoint

    dataset, reference, referenceWeights = finetuneReference
    options = FinetuneOptions.fromDict({**reference.toDict(), "outModel": str(tmp_path / "resumed"), "runDirectory": str(tmp_path / "run")})
    updates = []
    job = FinetuneJob(options, pythonExecutable=interpreter, onProgress=updates.append)
    job.start()
    assert waitFor(lambda: (job.processEvents() or True) and any("loss" in u.extra for u in updates), 180), "no iteration line"
    started = time.monotonic()
    job.stop()
    outcome = job.wait(timeout=300)
    seconds = time.monotonic() - started

    checkpointPresent = job.checkpointPath.is_file()
    assert outcome.status == "stopped" and outcome.returncode == 0 and checkpointPresent, (outcome, [u.stage for u in updates][-3:])
    assert updates[-1].stage == "stopped" and "checkpoint" in updates[-1].message
    stoppedAt = int(load_checkpoint(job.checkpointPath)["iteration"])
    assert 1 <= stoppedAt < 4 and not (tmp_path / "resumed").exists()
    assert not any(pidAlive(p) for p in launchedPids(interpreter))

    job.resume()
    outcome = job.wait(timeout=300)
    assert outcome.succeeded and outcome.iterations == 4, outcome.errorMessage
    iterations = [u.extra["iteration"] for u in updates if "loss" in u.extra]
    weights = _weights(tmp_path / "resumed")
    exact = set(weights) == set(referenceWeights) and all(np.array_equal(weights[k], referenceWeights[k]) for k in weights)
    via = "launcher" if interpreter != sys.executable else "plain"
    print(f"\n[stop-measurement] fine-tune stop via {via}: {seconds:.2f} s, checkpoint at iteration {stoppedAt}: {checkpointPresent}, resume exact: {exact}")
    assert iterations[-1] == 4 and stoppedAt + 1 in iterations
    assert exact, "stop + resume did not reproduce the uninterrupted run's weights"
