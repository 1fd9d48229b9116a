"""Run a command in a background process and stream its output, without Qt.

:class:`ProcessRunner` starts a child process (normally ``PythonSlicer -m repux ...``),
reads its stdout and stderr on two reader threads into one queue, and hands
the lines to callbacks when the owner calls :meth:`ProcessRunner.processEvents`.
That call happens in the owner's thread: a module widget drains the queue from
a ``qt.QTimer`` (so callbacks may touch the GUI and the MRML scene), scripts and
tests use the blocking :meth:`ProcessRunner.wait`.

The child follows the ``repux`` command-line conventions:

* stdout: one JSON progress line per event (:class:`repux.protocol.ProgressEvent`);
  other stdout lines are plain text;
* stderr: log lines and, on failure, one ``repux: error: message`` line
  (:func:`repux.protocol.parse_log_line` reads both into a :class:`~repux.protocol.LogLine`);
* exit codes: :mod:`repux.protocol` (``EXIT_*``).

Both ends of that wire are defined once, in :mod:`repux.protocol`.

**Stopping** does not rely on signals reaching the right process: inside Slicer the
child is ``PythonSlicer``, a launcher that starts ``python-real`` as *its* child and
does not forward SIGTERM, and on Windows a window-less child has no console for
CTRL_BREAK.  A runner started with ``control=True`` owns the child's stdin as a
control channel (the child runs ``repux ... --control stdin``; launchers forward
stdin): :meth:`ProcessRunner.cancel` writes ``{"command": "stop"}``, the engine stops
at its next progress point (a training run finishes its iteration and writes its
checkpoint), prints a ``stopped`` progress line and exits 0.  Closing stdin (the
parent died) stops it too.  Only when the child has not exited after the grace
period is the whole tree killed (SIGTERM to the process group, a wait for every
member of the group, then SIGKILL; ``taskkill /T /F`` on Windows).  Runners without
the channel get that fallback at once.

Nothing here imports Qt or Slicer, so the module can be reused by other modules
(e.g. RepUXTrainer) and tested with a plain Python interpreter.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from repux.protocol import CONTROL_ARGUMENTS, STOP_LINE, LogLine, ProgressEvent, parse_log_line  # noqa: F401  (CONTROL_ARGUMENTS: re-exported)

__all__ = [
    "ProcessRunner",
    "ProcessStartError",
    "childEnvironment",
    "findPythonExecutable",
    "killProcessTree",
    "repuxCommand",
    "repuxPackageParent",
    "waitForJob",
]

logger = logging.getLogger(__name__)

#: seconds a cancelled child may take to stop (control channel or SIGTERM) before it is killed
DEFAULT_GRACE_SECONDS = 3.0
#: seconds between SIGTERM and SIGKILL once the grace period of a control-channel stop is over
KILL_GRACE_SECONDS = 3.0
class ProcessStartError(RuntimeError):
    """The child process could not be started (interpreter missing, bad working folder...)."""


def _groupAlive(pgid: int) -> bool:
    """True while a live (not zombie) process is in the POSIX process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after the command: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def killProcessTree(process: subprocess.Popen, graceSeconds: float = DEFAULT_GRACE_SECONDS) -> None:
    """Stop ``process`` and all its descendants; blocks up to ``graceSeconds`` (+ 10 s for the kill).

    The process must have been started by :class:`ProcessRunner` (new session on POSIX,
    new process group on Windows) so that the whole tree shares one group.  POSIX: SIGTERM
    to the group, then a wait for *every* member (a launcher such as PythonSlicer dies at
    once while its child - the engine - is still writing its checkpoint), then SIGKILL.
    Windows: ``taskkill /T /F`` (a signal cannot reach a window-less child's console).
    """
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        pgid = process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + max(graceSeconds, 0.0)
        try:
            process.wait(timeout=max(graceSeconds, 0.0))
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline and _groupAlive(pgid):
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        logger.warning("process %d did not exit after being killed", process.pid)


def _stopThenKill(process: subprocess.Popen, graceSeconds: float) -> None:
    """After a control-channel stop request: wait ``graceSeconds`` for the exit, then kill the tree."""
    try:
        process.wait(timeout=max(graceSeconds, 0.0))
        return
    except subprocess.TimeoutExpired:
        pass
    logger.warning("process %d did not stop within %.0f s of the stop request; killing it", process.pid, graceSeconds)
    killProcessTree(process, KILL_GRACE_SECONDS)


class ProcessRunner:
    """A background process whose output is delivered to callbacks in the owner's thread.

    Args:
        command: program and arguments.
        env: environment of the child (default: this process's).
        cwd: working folder of the child.
        onProgress: called with :class:`ProgressEvent` for every JSON progress line.
        onLog: called with :class:`LogLine` for stderr lines and non-JSON stdout lines.
        onFinished: called once with this runner when the child has exited and all its
            output was delivered.
        control: own the child's stdin as its control channel (the command must include
            :data:`CONTROL_ARGUMENTS`): :meth:`cancel` then asks the child to stop instead of
            signalling it, and kills it only after the grace period.

    Example:
        >>> runner = ProcessRunner([sys.executable, "-c", "print('hi')"])  # doctest: +SKIP
        >>> runner.start(); runner.wait()  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        onProgress: Callable[[ProgressEvent], None] | None = None,
        onLog: Callable[[LogLine], None] | None = None,
        onFinished: Callable[[ProcessRunner], None] | None = None,
        control: bool = False,
    ) -> None:
        if not command:
            raise ValueError("ProcessRunner needs a command; got an empty list.")
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd is not None else None
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.control = bool(control)
        self.stopRequested = False
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.cancelled = False
        self.lastProgress: ProgressEvent | None = None
        self.stdoutLines: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.stderrTail: list[str] = []
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._finished = False
        self._startTime: float | None = None

    # ------------------------------------------------------------------ state
    @property
    def started(self) -> bool:
        return self.process is not None

    @property
    def finished(self) -> bool:
        """True once the exit was delivered by :meth:`processEvents`."""
        return self._finished

    @property
    def running(self) -> bool:
        return self.started and not self._finished

    @property
    def succeeded(self) -> bool:
        return self._finished and self.returncode == 0 and not self.cancelled

    @property
    def elapsedSeconds(self) -> float:
        return 0.0 if self._startTime is None else time.monotonic() - self._startTime

    @property
    def errorMessage(self) -> str:
        """The child's own error message (``repux: error: ...``), else its last ERROR or stderr line."""
        if self.errors:
            return self.errors[-1]
        if self.stderrTail:
            return self.stderrTail[-1]
        if self.returncode not in (None, 0):
            return f"the process exited with code {self.returncode}"
        return ""

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the child and its reader threads.

        Raises:
            ProcessStartError: when the program cannot be executed.
            RuntimeError: when called twice.
        """
        if self.process is not None:
            raise RuntimeError("this ProcessRunner was already started; create a new one.")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            # no console: the stop request goes through the control channel, never CTRL_BREAK
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        env = self.env if self.env is not None else dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE if self.control else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as err:
            raise ProcessStartError(f"cannot start {self.command[0]!r}: {err}") from err
        self._startTime = time.monotonic()
        readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), name="repux-stdout", daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), name="repux-stderr", daemon=True),
        ]
        for t in readers:
            t.start()
        waiter = threading.Thread(target=self._waitForExit, args=(readers,), name="repux-wait", daemon=True)
        waiter.start()

    def _read(self, stream: Any, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line))
        except (OSError, ValueError):  # stream closed under us
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _waitForExit(self, readers: list[threading.Thread]) -> None:
        assert self.process is not None
        rc = self.process.wait()
        for t in readers:
            t.join()
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        self._queue.put(("exit", rc))

    def requestStop(self) -> bool:
        """Write the stop line on the control channel; False when there is none (or it is closed)."""
        if self.process is None or self.process.stdin is None:
            return False
        try:
            self.process.stdin.write(STOP_LINE)
            self.process.stdin.flush()
        except (OSError, ValueError):  # the child is gone / the pipe is closed
            return False
        self.stopRequested = True
        return True

    def cancel(self, graceSeconds: float = DEFAULT_GRACE_SECONDS, block: bool = False) -> None:
        """Stop the child: the stop request on the control channel (else SIGTERM), the kill after ``graceSeconds``.

        Non-blocking by default: the wait and the kill run on a helper thread and the exit
        is delivered by :meth:`processEvents` as usual.
        """
        if self.process is None or self._finished:
            return
        self.cancelled = True
        if self.process.poll() is not None:
            return
        if self.control and graceSeconds > 0 and self.requestStop():
            target, args = _stopThenKill, (self.process, graceSeconds)
        else:
            target, args = killProcessTree, (self.process, graceSeconds)
        if block:
            target(*args)
        else:
            threading.Thread(target=target, args=args, name="repux-stop", daemon=True).start()

    # ------------------------------------------------------------------ delivery
    def processEvents(self, maxEvents: int | None = None) -> bool:
        """Deliver queued output to the callbacks; return True while the child is running."""
        if self.process is None:
            return False
        n = 0
        while not self._finished and (maxEvents is None or n < maxEvents):
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            n += 1
            if kind == "exit":
                self.returncode = int(payload)
                self._finished = True
                if self.onFinished is not None:
                    self.onFinished(self)
            else:
                self._deliverLine(kind, payload)
        return not self._finished

    def _deliverLine(self, stream: str, line: str) -> None:
        text = line.rstrip("\r\n")
        if not text.strip():
            return
        if stream == "stdout":
            update = ProgressEvent.from_line(text)
            if update is not None:
                self.lastProgress = update
                if self.onProgress is not None:
                    self.onProgress(update)
                return
            self.stdoutLines.append(text)
            message = LogLine("INFO", text, "stdout")
        else:
            message = parse_log_line(text, "stderr")
            self.stderrTail = (self.stderrTail + [text])[-50:]
            if message.level == "WARNING":
                self.warnings.append(message.text)
            elif message.level == "ERROR":
                self.errors.append(message.text)
        if self.onLog is not None:
            self.onLog(message)

    def wait(self, timeout: float | None = None, pollInterval: float = 0.05) -> int:
        """Block until the child exits (delivering its output); return its exit code.

        Raises:
            TimeoutError: after ``timeout`` seconds (the child keeps running; cancel it if needed).
        """
        if self.process is None:
            raise RuntimeError("the process was not started.")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.processEvents():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.command[0]} did not finish within {timeout} s.")
            time.sleep(pollInterval)
        assert self.returncode is not None
        return self.returncode


def waitForJob(processEvents: Callable[[], bool], stop: Callable[[], Any], timeout: float | None, pollInterval: float, timeoutMessage: str) -> None:
    """The blocking form of a polled job: call ``processEvents`` until it returns False.

    After ``timeout`` seconds, ``stop()`` is called, the job is drained until it has ended, and
    ``TimeoutError(timeoutMessage)`` is raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while processEvents():
        if deadline is not None and time.monotonic() > deadline:
            stop()
            while processEvents():
                time.sleep(pollInterval)
            raise TimeoutError(timeoutMessage)
        time.sleep(pollInterval)


# ---------------------------------------------------------------------- environment


def _insideSlicerApplication() -> bool:
    slicerModule = sys.modules.get("slicer")
    return slicerModule is not None and getattr(slicerModule, "app", None) is not None


def findPythonExecutable() -> str:
    """The interpreter that runs ``-m repux``: ``PythonSlicer`` inside Slicer, else this interpreter.

    ``PythonSlicer`` is looked up on ``PATH`` (the Slicer launcher puts it there) and
    next to ``sys.executable``.

    Raises:
        ProcessStartError: inside Slicer when PythonSlicer cannot be found.
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    folder = Path(sys.executable).resolve().parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    if _insideSlicerApplication():
        raise ProcessStartError(f"PythonSlicer was not found on PATH or in {folder}; the Slicer installation looks incomplete.")
    return sys.executable


def repuxPackageParent() -> Path:
    """The folder that contains the ``repux`` package (what the child needs on ``PYTHONPATH``)."""
    spec = importlib.util.find_spec("repux")
    if spec is None or spec.origin is None:
        raise ProcessStartError("the 'repux' package is not importable; the RepUX extension is not installed completely.")
    return Path(spec.origin).resolve().parent.parent


def childEnvironment(extraPythonPath: Sequence[str | os.PathLike[str]] = (), base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child ``repux`` process: ``PYTHONPATH`` starts with the repux package folder."""
    env = dict(os.environ if base is None else base)
    parts = [str(repuxPackageParent()), *(str(p) for p in extraPythonPath)]
    old = env.get("PYTHONPATH", "")
    if old:
        parts.extend(p for p in old.split(os.pathsep) if p and p not in parts)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def repuxCommand(arguments: Sequence[str], python: str | None = None) -> list[str]:
    """``[python, "-m", "repux", *arguments]``."""
    return [python or findPythonExecutable(), "-m", "repux", *[str(a) for a in arguments]]
