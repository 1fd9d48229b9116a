"""Progress reporting and cancellation shared by every long-running call.

Library functions take ``progress: ProgressCallback | None`` and call it with
:class:`ProgressEvent` objects whose ``fraction`` is the fraction of the
*whole* job (0..1, never decreasing).  :class:`ProgressTracker` turns
per-stage fractions into that overall fraction from stage weights and
estimates the remaining time.  The CLI renders events as a tqdm bar on a
terminal or as JSON lines (``--progress json``) for the Slicer modules.

The event and its JSON line are defined in :mod:`repux.protocol` (both ends of the wire).

Cancellation is cooperative: a :class:`CancelToken` is checked at every
progress point and raises :class:`~repux.errors.Cancelled`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from repux.errors import Cancelled
from repux.protocol import STOP_COMMANDS, ProgressEvent, read_command_lines  # noqa: F401  (the wire; re-exported)

__all__ = [
    "STOP_COMMANDS",
    "BarProgressPrinter",
    "CancelToken",
    "JsonProgressPrinter",
    "ProgressCallback",
    "ProgressEvent",
    "ProgressTracker",
    "read_command_lines",
]

ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """A thread-safe cancel flag; :meth:`check` raises :class:`Cancelled` once set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)


class ProgressTracker:
    """Map stage-local progress onto a monotone job fraction with an ETA.

    Args:
        callback: receives :class:`ProgressEvent` (or None to only track).
        stages: ordered ``{stage: relative weight}``.
        cancel: optional token checked at every update.
    """

    def __init__(self, callback: ProgressCallback | None, stages: Mapping[str, float], cancel: CancelToken | None = None) -> None:
        total = float(sum(stages.values())) or 1.0
        self.callback = callback
        self.cancel = cancel
        self.weights = {k: float(v) / total for k, v in stages.items()}
        self.order = list(stages)
        self.start = time.monotonic()
        self.fraction = 0.0

    def _base(self, stage: str) -> float:
        if stage not in self.weights:
            return self.fraction
        i = self.order.index(stage)
        return sum(self.weights[s] for s in self.order[:i])

    def update(self, stage: str, local_fraction: float = 0.0, message: str = "", **extra: Any) -> None:
        """Report ``local_fraction`` (0..1) of ``stage`` done, then stop if cancelled.

        The event is delivered before the cancellation check so that the last
        completed step (e.g. the iteration a checkpoint will hold) is reported.
        """
        local = min(max(float(local_fraction), 0.0), 1.0)
        frac = self._base(stage) + self.weights.get(stage, 0.0) * local
        self.fraction = max(self.fraction, min(frac, 1.0))
        elapsed = time.monotonic() - self.start
        eta = None
        if self.fraction > 0.02 and elapsed > 0.5:
            eta = elapsed * (1.0 - self.fraction) / self.fraction
        if self.callback is not None:
            self.callback(ProgressEvent(stage, self.fraction, message, eta, dict(extra)))
        if self.cancel is not None:
            self.cancel.check()

    def done(self, message: str = "done", **extra: Any) -> None:
        self.fraction = 1.0
        if self.callback is not None:
            self.callback(ProgressEvent("done", 1.0, message, 0.0, dict(extra)))


class JsonProgressPrinter:
    """Print one JSON object per event on ``stream`` (stdout), flushed at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        line = event.to_line()
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


class BarProgressPrinter:
    """A tqdm progress bar on stderr (percent of the whole job and the current stage)."""

    def __init__(self, desc: str = "repux") -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=1000, desc=desc, unit="‰", leave=True, file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}"
        )
        self.last = 0

    def __call__(self, event: ProgressEvent) -> None:
        n = int(round(event.fraction * 1000))
        if n > self.last:
            self.bar.update(n - self.last)
            self.last = n
        post = event.message or event.stage
        if "loss" in event.extra and event.extra["loss"] is not None:
            post = f"{post} loss={event.extra['loss']:.4f}"
        self.bar.set_postfix_str(post[:60], refresh=True)

    def close(self) -> None:
        self.bar.close()
