"""Process locks on files: one writer per model id and per training run folder.

:class:`FileLock` takes an operating-system lock (``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows) on a small lock file and writes the holder's PID,
host and start time into it.  The operating system releases the lock when the
holder exits - even after ``kill -9`` - so a stale lock file left by a killed
process is detected (the lock is free, the PID in it is gone) and simply taken
over.  A second live process gets :class:`LockedError` naming the holder's PID.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from repux.errors import RepuxError

__all__ = ["FileLock", "LockedError", "pid_alive"]

logger = logging.getLogger(__name__)

_WIN_LOCK_OFFSET = 1 << 20  # Windows: lock a byte far from the PID text so others can still read it


class LockedError(RepuxError):
    """Another live process holds the lock."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists (on this machine)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """A non-blocking, process-wide lock on ``path`` (use as a context manager).

    Args:
        path: the lock file (created).
        what: what is locked, for messages, e.g. "run folder '/x'".
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def read_holder(self) -> dict[str, Any]:
        """What the lock file says about its (last) holder: pid, host, since."""
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return {}
        out: dict[str, Any] = {}
        for part in text.split():
            k, _, v = part.partition("=")
            if k == "pid" and v.isdigit():
                out["pid"] = int(v)
            elif k in ("host", "since"):
                out[k] = v
        return out

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`LockedError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            holder = self.read_holder()
            who = f"process {holder['pid']}" if "pid" in holder else "another process"
            if holder.get("host") and holder["host"] != socket.gethostname():
                who += f" on {holder['host']}"
            since = f" since {holder['since']}" if holder.get("since") else ""
            raise LockedError(f"{self.what} is in use by {who}{since}; wait for it to finish or stop it first.", holder) from None
        previous = self.read_holder()
        if previous.get("pid") and previous["pid"] != os.getpid():
            self.took_over = previous
            logger.info("%s: taking over the stale lock of process %s (it is no longer running)", self.what, previous["pid"])
        stamp = f"pid={os.getpid()} host={socket.gethostname()} since={_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}\n"
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, stamp.encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)  # an empty lock file: nobody holds it
            _unlock(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


if sys.platform == "win32":  # pragma: no cover - exercised on Windows CI

    def _lock(fd: int) -> None:
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
