"""One base for the background jobs of both modules: state, log, finish, pump, blocking wait (no Qt).

:class:`SegmentationJob` (RepUXSegmentLib.segmentation), :class:`FinetuneJob` and
:class:`UncertaintyRanking` (RepUXTrainerLib) derive from :class:`BackgroundJob`: the same
:class:`JobState` values, the same ``processEvents()`` plumbing (a failing callback stops the engine
through the control channel and fails the job), the same ``_finish`` (outcome, state, log line,
``onFinished``) and the same blocking ``wait()``.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from .process import DEFAULT_GRACE_SECONDS, ProcessRunner, childEnvironment, findPythonExecutable, repuxCommand, waitForJob

__all__ = ["BackgroundJob", "JobState"]

logger = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """States of a background job (compares equal to its string value: ``JobState.RUNNING == "running"``)."""

    IDLE = "idle"
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    CANCELLING = "cancelling"
    STOPPED = "stopped"
    SUCCEEDED = "succeeded"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: states in which the engine process is alive
ACTIVE_STATES = (JobState.RUNNING, JobState.STOPPING, JobState.CANCELLING)


class BackgroundJob:
    """Plumbing shared by the jobs; subclasses start ``self.runner`` and implement :meth:`_onProcessExit`.

    Args:
        onLog: ``(level, text)`` for engine log lines and job messages.
        onFinished: called with the outcome when the job ends.
    """

    #: seconds the engine may take to stop when a callback failed
    callbackStopGraceSeconds = DEFAULT_GRACE_SECONDS
    #: what :meth:`wait` says after its timeout
    timeoutMessage = "the job did not finish within {timeout} s and was stopped."
    #: the log line per outcome status (``{outcome.*}`` fields available)
    outcomeMessages: dict[str, tuple[str, str]] = {}

    #: interpreter for ``-m repux`` (None: PythonSlicer) and the child's environment (None: :func:`childEnvironment`)
    pythonExecutable: str | None = None
    environment: Any = None

    def __init__(self, onLog: Callable[[str, str], None] | None = None, onFinished: Callable[[Any], None] | None = None) -> None:
        self.onLog = onLog
        self.onFinished = onFinished
        self.state = JobState.IDLE
        self.runner: Any = None
        self.outcome: Any = None
        self._startTime = 0.0

    @property
    def running(self) -> bool:
        return self.state in ACTIVE_STATES

    def _log(self, level: str, text: str) -> None:
        logger.log(getattr(logging, level, logging.INFO), "%s", text)
        if self.onLog is not None:
            self.onLog(level, text)

    def _onRunnerLog(self, message: Any) -> None:
        if self.onLog is not None:
            self.onLog(message.level, message.text)

    def _startEngine(
        self, arguments: list[str], *, cwd: Any = None, onProgress: Callable[[Any], None] | None = None, logPrefix: str | None = "running: "
    ) -> Any:
        """Start ``<python> -m repux <arguments>`` as ``self.runner``, with the stop channel on its stdin (``control=True``:
        Cancel/Stop work through PythonSlicer's launcher and on Windows); log the command line after ``logPrefix``."""
        command = repuxCommand(arguments, self.pythonExecutable or findPythonExecutable())
        if logPrefix is not None:
            self._log("INFO", logPrefix + " ".join(command))
        env = self.environment if self.environment is not None else childEnvironment()
        self.runner = ProcessRunner(command, env=env, cwd=cwd, onProgress=onProgress, onLog=self._onRunnerLog, control=True)
        self.runner.start()
        return self.runner

    def processEvents(self) -> bool:
        """Deliver the engine's output; handle its exit. True while running."""
        if self.runner is None or not self.running:
            return False
        try:
            stillRunning = self.runner.processEvents()
        except Exception as err:
            self.runner.cancel(graceSeconds=self.callbackStopGraceSeconds, block=True)
            self._finish(self._failedOutcome(f"{type(err).__name__}: {err}"))
            return False
        if stillRunning:
            return True
        self._onProcessExit()
        return False

    def _failedOutcome(self, message: str) -> Any:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _onProcessExit(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _finish(self, outcome: Any) -> None:
        """Record the outcome, log one line, call ``onFinished``."""
        outcome.seconds = time.monotonic() - self._startTime if self._startTime else 0.0
        self.outcome = outcome
        self.state = JobState(outcome.status)
        messages = {str(k): v for k, v in self.outcomeMessages.items()}
        level, text = messages.get(str(outcome.status), ("ERROR", "failed: {outcome.errorMessage}"))
        self._log(level, text.format(outcome=outcome))
        if self.onFinished is not None:
            self.onFinished(outcome)

    def _stopForTimeout(self) -> None:
        self.cancel()

    def cancel(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def wait(self, timeout: float | None = None, pollInterval: float = 0.05) -> Any:
        """Block until the job ends (starting it if needed); return the outcome.

        Raises:
            TimeoutError: after ``timeout`` seconds; the job is stopped first.
        """
        if self.state == JobState.IDLE:
            self.start()
        waitForJob(self.processEvents, self._stopForTimeout, timeout, pollInterval, self.timeoutMessage.format(timeout=timeout))
        return self.outcome

    def start(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError
