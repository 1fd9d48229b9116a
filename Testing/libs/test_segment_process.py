"""RepUXSegmentLib.process: background process, streamed JSON progress and log lines, tree-kill cancel.

Plain Python (no slicer-core needed): the runner is what RepUXSegment and RepUXTrainer share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from launcher import pidAlive
from RepUXSegmentLib.process import (
    ProcessRunner,
    ProcessStartError,
    childEnvironment,
    findPythonExecutable,
    repuxCommand,
    repuxPackageParent,
)

from repux.protocol import LogLine, ProgressEvent, parse_log_line


def pythonScript(tmp_path: Path, code: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return [sys.executable, str(script)]


def waitFor(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"stage": "infer", "fraction": 0.5, "message": "window 4/8", "eta_s": 3.2, "windows_done": 4}', ("infer", 0.5, "window 4/8", 3.2)),
        ('{"stage": "done", "fraction": 1.0, "message": "", "eta_s": null, "outputs": {"labels": "x.nrrd"}}', ("done", 1.0, "", None)),
        ('{"stage": "load", "fraction": 1.7}', ("load", 1.0, "", None)),
        ("wrote x.nrrd in 3 s", None),
        ('{"no": "stage"}', None),
        ("{broken json", None),
    ],
    ids=["infer", "done", "clamped", "plain-text", "other-json", "broken-json"],
)
def test_parse_progress_line(line, expected):
    update = ProgressEvent.from_line(line)
    if expected is None:
        assert update is None
    else:
        assert (update.stage, update.fraction, update.message, update.eta_s) == expected


def test_parse_progress_line_keeps_stage_specific_data():
    update = ProgressEvent.from_line('{"stage": "done", "fraction": 1.0, "volumes_ml": {"liver": 1500.2}}')
    assert update.extra["volumes_ml"] == {"liver": 1500.2}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("WARNING: input intensities do not look like CT", LogLine("WARNING", "input intensities do not look like CT")),
        ("INFO: read DICOM series 1.2.3", LogLine("INFO", "read DICOM series 1.2.3")),
        ("DEBUG repux.inference.segmenter: 8 windows", LogLine("DEBUG", "8 windows")),
        ("CRITICAL: out of memory", LogLine("ERROR", "out of memory")),
        ("repux: error: model 'x' is not installed", LogLine("ERROR", "model 'x' is not installed")),
        ("repux segment: error: argument --roi-ras: expected one argument", LogLine("ERROR", "argument --roi-ras: expected one argument")),
        ("Traceback (most recent call last):", LogLine("INFO", "Traceback (most recent call last):")),
    ],
    ids=["warning", "info", "debug-with-name", "critical", "cli-error", "usage-error", "other"],
)
def test_parse_log_line(line, expected):
    assert parse_log_line(line) == expected


def test_runner_streams_progress_logs_and_exit_code(tmp_path):
    cmd = pythonScript(
        tmp_path,
        """
        import json, sys, time
        for i in range(3):
            print(json.dumps({"stage": "infer", "fraction": i / 4, "message": f"window {i}", "eta_s": None}), flush=True)
            time.sleep(0.05)
        print("WARNING: intensities do not look like CT", file=sys.stderr, flush=True)
        print("plain stdout text", flush=True)
        print(json.dumps({"stage": "done", "fraction": 1.0, "message": "wrote", "eta_s": 0, "outputs": {"labels": "l.nrrd"}}), flush=True)
        print("repux: error: something broke", file=sys.stderr, flush=True)
        sys.exit(1)
        """,
    )
    progress, logs, finished = [], [], []
    runner = ProcessRunner(cmd, onProgress=progress.append, onLog=logs.append, onFinished=finished.append)
    runner.start()
    assert runner.running
    rc = runner.wait(timeout=30)

    assert rc == 1 and runner.returncode == 1 and runner.finished and not runner.succeeded
    assert finished == [runner]
    assert [p.fraction for p in progress] == [0.0, 0.25, 0.5, 1.0]
    assert progress[-1].stage == "done" and progress[-1].extra["outputs"] == {"labels": "l.nrrd"}
    assert runner.lastProgress is progress[-1]
    assert LogLine("WARNING", "intensities do not look like CT", "stderr") in logs
    assert LogLine("INFO", "plain stdout text", "stdout") in logs
    assert runner.warnings == ["intensities do not look like CT"]
    assert runner.errorMessage == "something broke"
    assert runner.stdoutLines == ["plain stdout text"]


def test_callbacks_run_in_the_thread_that_pumps(tmp_path):
    import threading

    cmd = pythonScript(tmp_path, 'import json; print(json.dumps({"stage": "x", "fraction": 0.5}))')
    threads = []
    runner = ProcessRunner(cmd, onProgress=lambda u: threads.append(threading.current_thread()))
    runner.start()
    time.sleep(0.5)
    assert threads == []  # nothing is delivered until the owner pumps
    runner.wait(timeout=30)
    assert threads == [threading.current_thread()]


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
@pytest.mark.parametrize("ignoreSigterm", [False, True], ids=["cooperative", "ignores-sigterm"])
def test_cancel_kills_the_whole_process_tree(tmp_path, ignoreSigterm):
    pidFile = tmp_path / "grandchild.pid"
    cmd = pythonScript(
        tmp_path,
        f"""
        import json, signal, subprocess, sys, time
        if {ignoreSigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        open({str(pidFile)!r}, "w").write(str(grandchild.pid))
        print(json.dumps({{"stage": "load", "fraction": 0.0}}), flush=True)
        time.sleep(120)
        """,
    )
    progress = []
    runner = ProcessRunner(cmd, onProgress=progress.append)
    runner.start()
    assert waitFor(lambda: (runner.processEvents() or True) and bool(progress) and pidFile.exists(), timeout=30)
    grandchild = int(pidFile.read_text())
    assert pidAlive(runner.process.pid) and pidAlive(grandchild)

    started = time.monotonic()
    runner.cancel(graceSeconds=0.5)
    rc = runner.wait(timeout=30)

    assert runner.cancelled and not runner.succeeded
    assert rc == -signal.SIGKILL if ignoreSigterm else rc in (-signal.SIGTERM, -signal.SIGKILL)
    assert time.monotonic() - started < 15
    assert waitFor(lambda: not pidAlive(grandchild), timeout=10), "the grandchild survived the cancel"


def test_start_errors_are_clear(tmp_path):
    runner = ProcessRunner([str(tmp_path / "no-such-python"), "-m", "repux"])
    with pytest.raises(ProcessStartError, match="no-such-python"):
        runner.start()
    with pytest.raises(ValueError, match="empty"):
        ProcessRunner([])


def test_child_environment_runs_the_engine_from_any_folder(tmp_path):
    env = childEnvironment(base={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/some/where", "REPUX_HOME": str(tmp_path)})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0] == str(repuxPackageParent()) and "/some/where" in parts
    assert (Path(parts[0]) / "repux" / "__main__.py").is_file()
    assert env["PYTHONUNBUFFERED"] == "1"
    # a neutral interpreter setup: isolated from the source checkout and the editable install
    proc = subprocess.run([sys.executable, "-S", "-m", "repux", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("repux ")


def test_find_python_prefers_pythonslicer(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert findPythonExecutable() == sys.executable  # outside Slicer, without PythonSlicer: this interpreter
    fake = tmp_path / "PythonSlicer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert findPythonExecutable() == str(fake)
    assert repuxCommand(["info", "--json"])[:3] == [str(fake), "-m", "repux"]
