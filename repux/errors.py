"""Exception hierarchy of the RepUX core.

Every error raised for bad user input derives from :class:`RepuxError`, so the
command line can turn it into a one-line message and exit code 1, while a
genuine bug (any other exception) still shows a traceback.
"""

from __future__ import annotations

import difflib
import errno as _errno
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = [
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InputImageError",
    "ModelFileError",
    "OutputError",
    "RepuxError",
    "did_you_mean",
    "guard_io",
    "is_user_os_error",
]

_logger = logging.getLogger("repux.errors")
_F = TypeVar("_F", bound=Callable[..., Any])


#: operating-system errors caused by the user's files and disks (not by a bug)
USER_ERRNOS = {
    _errno.ENOENT,
    _errno.EACCES,
    _errno.EPERM,
    _errno.EROFS,
    _errno.ENOSPC,
    _errno.EFBIG,
    _errno.EISDIR,
    _errno.ENOTDIR,
    _errno.ENAMETOOLONG,
    _errno.EEXIST,
    _errno.ENOTEMPTY,
    _errno.EIO,
    getattr(_errno, "EDQUOT", _errno.ENOSPC),
    getattr(_errno, "ELOOP", _errno.ENOENT),
}


#: errors about the disk itself: the user's environment even when no file is named
DISK_ERRNOS = {_errno.ENOSPC, _errno.EFBIG, _errno.EROFS, getattr(_errno, "EDQUOT", _errno.ENOSPC)}


def is_user_os_error(err: BaseException) -> bool:
    """True for an ``OSError`` the user can act on: a named file that is missing, read-only..., or a full disk / size limit."""
    if not isinstance(err, OSError):
        return False
    return err.errno in DISK_ERRNOS or (err.errno in USER_ERRNOS and err.filename is not None)


class RepuxError(Exception):
    """Base class of all errors caused by user input, files or settings."""


class ConfigError(RepuxError, ValueError):
    """An argument, preset or configuration value is not allowed."""


class ModelFileError(RepuxError):
    """A model folder is missing, incomplete, corrupted or tampered with."""


class CheckpointError(RepuxError):
    """A checkpoint (official ``.pth`` or a training checkpoint) cannot be loaded."""


class InputImageError(RepuxError):
    """An input image cannot be used (wrong dimension, empty, NaN, too large...)."""


class DatasetError(RepuxError):
    """A training dataset is invalid."""


class OutputError(RepuxError):
    """A file or folder cannot be written (read-only place, full disk, file-size limit, truncated write)."""


class Cancelled(RepuxError):
    """The job was cancelled by the user (SIGINT/SIGTERM or a Cancel button)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.4)
    return f" Did you mean '{close[0]}'?" if close else ""


def guard_io(stage: str, error: type[RepuxError], path_argument: int | str = 0) -> Callable[[_F], _F]:
    """Decorator: an unexpected exception of a reader or writer becomes ``error`` naming the file and the stage.

    ``stage`` reads like "reading the input" / "writing the output"; ``path_argument`` is the position
    or name of the function's file argument.  RepUX's own errors, cancellation, ``MemoryError`` and the
    user's ``OSError`` (missing file, full disk: the command line explains those) pass unchanged.  The
    traceback goes to the log (DEBUG) and stays attached as ``__cause__`` (``repux -v`` prints it).
    """

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (RepuxError, MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except Exception as err:
                if is_user_os_error(err):
                    raise
                if isinstance(path_argument, int):
                    target = args[path_argument] if len(args) > path_argument else kwargs.get("path", "?")
                else:
                    target = kwargs.get(path_argument, args[0] if args else "?")
                text = str(err).strip().splitlines()[0] if str(err).strip() else ""
                _logger.debug("unexpected error while %s %s", stage, target, exc_info=True)
                wrapped = error(
                    f"unexpected error while {stage} {str(target)!r}: {type(err).__name__}{': ' + text if text else ''} "
                    "(nothing was written; rerun with -v for the traceback and report it)"
                )
                wrapped.unexpected = True  # type: ignore[attr-defined]
                raise wrapped from err

        return wrapper  # type: ignore[return-value]

    return decorate
