"""The wire between the engine and its hosts, both ends in one place.

A host (the Slicer modules, RepUX Web, a script) runs ``repux <command> --progress json --control stdin`` as a child
process and talks to it through four channels, all written and read with this module:

* **stdout, progress**: one JSON object per line, :class:`ProgressEvent` (``{"stage", "fraction", "message", "eta_s",
  ...stage-specific keys}``); the last one has ``"stage": "done"`` (or ``"stopped"`` after a stop request).  Other
  stdout lines are plain text.  :meth:`ProgressEvent.to_line` writes one, :meth:`ProgressEvent.from_line` reads one.
* **stdin, control** (:data:`CONTROL_ARGUMENTS`): one JSON command per line; :data:`STOP_LINE` stops the job at its
  next progress point, and so does stdin closing (the host is gone).  Works through launchers that do not forward
  signals (Slicer's ``PythonSlicer``) and on Windows.  :func:`read_command_lines` reads them.
* **stderr, log and error lines**: ``LEVEL: message`` (``LEVEL logger: message`` at ``-vv``, :data:`LOG_FORMAT` /
  :data:`DEBUG_LOG_FORMAT`) and, on failure, one ``repux: error: message`` (:func:`error_line`);
  :func:`parse_log_line` reads both into a :class:`LogLine`.
* **exit code**: :data:`EXIT_OK`, :data:`EXIT_USER_ERROR`, :data:`EXIT_USAGE`, ``EXIT_SIGNAL_BASE + signal`` after a
  signal; a stop through the control channel exits :data:`EXIT_OK` after its ``stopped`` line.

Plain Python (no torch, no Qt): the hosts import it in Slicer's and the browser server's processes.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTROL_ARGUMENTS",
    "DEBUG_LOG_FORMAT",
    "ERROR_PREFIX",
    "EXIT_OK",
    "EXIT_SIGNAL_BASE",
    "EXIT_USAGE",
    "EXIT_USER_ERROR",
    "LOG_FORMAT",
    "STOP_COMMANDS",
    "STOP_LINE",
    "LogLine",
    "ProgressEvent",
    "error_line",
    "parse_log_line",
    "read_command_lines",
]

#: the ``repux`` options that open the control channel on stdin
CONTROL_ARGUMENTS = ("--control", "stdin")
#: control-channel commands that stop the job (``{"command": "stop"}``)
STOP_COMMANDS = ("stop", "cancel")
#: the line a host writes to stop the job
STOP_LINE = '{"command": "stop"}\n'

#: stderr log line formats (``logging.Formatter``): normal, and with the logger name at ``-vv``
LOG_FORMAT = "%(levelname)s: %(message)s"
DEBUG_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: the one line a failed command prints on stderr: ``repux: error: <message>``
ERROR_PREFIX = "repux: error: "

EXIT_OK = 0
#: a user error (bad argument, unreadable input, full disk...): the error line says what to do
EXIT_USER_ERROR = 1
#: a usage error (argparse)
EXIT_USAGE = 2
#: stopped by a signal: ``EXIT_SIGNAL_BASE + signal number`` (130 for SIGINT, 143 for SIGTERM)
EXIT_SIGNAL_BASE = 128

_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)(?: [\w.-]+)?: (.*)$")
_ERROR_LINE = re.compile(r"^[\w.-]+(?: [\w.-]+)*: error: (.*)$")  # "repux: error:" and argparse's "repux segment: error:"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class ProgressEvent:
    """One progress update: what a long call reports, and one JSON line on the wire.

    Attributes:
        stage: short machine name of the current stage (``"load"``, ``"infer"``, ``"train"``, ``"done"``...).
        fraction: fraction of the whole job done, 0..1.
        message: human-readable text.
        eta_s: estimated seconds left, or None when unknown.
        extra: stage-specific values (``iteration``, ``loss``, ``val_dice``, ``outputs``, ``volumes_ml``...).
    """

    stage: str
    fraction: float
    message: str = ""
    eta_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object: the four fields, then the stage-specific keys."""
        d: dict[str, Any] = {"stage": self.stage, "fraction": round(float(self.fraction), 6), "message": self.message}
        d["eta_s"] = None if self.eta_s is None else round(float(self.eta_s), 1)
        d.update(self.extra)
        return d

    def to_line(self) -> str:
        """One JSON line (with its newline); NaN and infinity become null."""
        return json.dumps(_jsonable(self.to_dict()), allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressEvent | None:
        """The event of a parsed JSON object, None when it is not one (no ``stage`` or no numeric ``fraction``)."""
        if "stage" not in data or "fraction" not in data:
            return None
        try:
            fraction = min(max(float(data["fraction"]), 0.0), 1.0)
        except (TypeError, ValueError):
            return None
        try:
            eta = None if data.get("eta_s") is None else float(data["eta_s"])
        except (TypeError, ValueError):
            eta = None
        extra = {k: v for k, v in data.items() if k not in ("stage", "fraction", "message", "eta_s")}
        return cls(str(data["stage"]), fraction, str(data.get("message", "")), eta, extra)

    @classmethod
    def from_line(cls, line: str) -> ProgressEvent | None:
        """The event of a JSON progress line, None for any other line (plain text, other JSON)."""
        text = line.strip()
        if not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return cls.from_dict(data) if isinstance(data, dict) else None


@dataclass(frozen=True)
class LogLine:
    """One log line of the child.

    Attributes:
        level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"`` or ``"ERROR"`` (``CRITICAL`` reads as ``ERROR``).
        text: the message without the level prefix.
        stream: ``"stderr"`` or ``"stdout"``.
    """

    level: str
    text: str
    stream: str = "stderr"


def error_line(message: object) -> str:
    """The one stderr line of a failed command (without its newline)."""
    return f"{ERROR_PREFIX}{message}"


def parse_log_line(line: str, stream: str = "stderr") -> LogLine:
    """Split ``LEVEL: message`` / ``LEVEL logger: message`` / ``repux: error: message``; other text is INFO."""
    text = line.rstrip("\r\n")
    m = _LOG_LINE.match(text)
    if m:
        return LogLine("ERROR" if m.group(1) == "CRITICAL" else m.group(1), m.group(2), stream)
    m = _ERROR_LINE.match(text)
    if m:
        return LogLine("ERROR", m.group(1), stream)
    return LogLine("INFO", text, stream)


def read_command_lines(fd: int, chunk: int = 65536) -> Iterator[dict[str, Any]]:
    """Yield the JSON command objects a host writes, one per line, on the raw descriptor ``fd``, until end of input.

    A line that is not a JSON object comes as ``{"command": None, "raw": <its first 80 characters>}``; blank
    lines are skipped; a read error ends the stream like end of input.  Reads the raw descriptor (not
    ``sys.stdin``): a daemon thread blocked in a buffered read would hold the stream's lock when the
    interpreter shuts down.
    """
    pending = b""
    try:
        while True:
            data = os.read(fd, chunk)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                text = raw.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    cmd = json.loads(text)
                except ValueError:
                    cmd = None
                yield cmd if isinstance(cmd, dict) else {"command": None, "raw": text[:80]}
    except OSError:
        return
