"""Safe file writes: temporary file, verify, rename; the umask's mode; one-line errors.

:func:`atomic_path` is the one way RepUX writes a file (label maps, segmentations,
uncertainty maps, model weights, checkpoints, datasets, JSON reports):

* the data go to a temporary file beside the target, so a crash or a kill never
  leaves half a file and the previous file stays intact until the rename;
* before the rename the file is checked: it must not be empty and, when a
  ``verify`` callback is given, must read back (ITK's writers do not always raise
  when the disk is full or a file-size limit is hit: they print an error and
  leave a truncated file);
* the file gets the mode of the file it replaces, or ``0o666 & ~umask`` for a
  new file (``mkstemp`` creates 0600);
* every operating-system failure (read-only folder, full disk, file too large,
  permission denied) becomes :class:`~repux.errors.OutputError`, a one-line
  message naming the file and the reason.

This module is light (standard library only) so command-line validation can use it.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from repux.errors import DISK_ERRNOS, USER_ERRNOS, OutputError, is_user_os_error  # noqa: F401  (re-exported)

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "check_output_location",
    "default_file_mode",
    "describe_os_error",
    "is_user_os_error",
    "os_error_message",
]

def describe_os_error(err: OSError) -> str:
    """One line for a user's OSError: ``cannot use '/x': Permission denied (EACCES); ...`` or the disk error alone."""
    if err.filename is not None:
        return os_error_message(err.filename, err, "use")
    return f"{_reason(err)}."


_UMASK_LOCK = threading.Lock()
_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


def _current_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_current_umask()


def os_error_message(path: str | Path, err: BaseException, verb: str = "write") -> str:
    """``cannot write '/x/y': No space left on device (ENOSPC)`` - one line."""
    return f"cannot {verb} {str(path)!r}: {_reason(err)}."


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno:
        reason = f"{err.strerror or os.strerror(err.errno)} ({_errno.errorcode.get(err.errno, err.errno)})"
    else:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = lines[-1] if lines else type(err).__name__
    hint = ""
    if isinstance(err, OSError) and err.errno in (_errno.ENOSPC, _errno.EFBIG, getattr(_errno, "EDQUOT", -1)):
        hint = "; free some space (or raise the file-size limit) and run the command again"
    elif isinstance(err, OSError) and err.errno in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
        hint = "; choose a folder you can write to"
    return f"{reason}{hint}"


def _suffix(target: Path) -> str:
    name = target.name.lower()
    for s in _SUFFIXES:
        if name.endswith(s):
            return s
    return target.suffix


@contextlib.contextmanager
def atomic_path(
    path: str | Path,
    *,
    verify: Callable[[Path], None] | None = None,
    mode: int | None = None,
    fsync: bool = False,
    allow_empty: bool = False,
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); check it and rename it to ``path`` on success.

    Args:
        path: the file to write.
        verify: called with the temporary path after the body; raises if the data are not
            what was meant to be written (any exception becomes :class:`OutputError`).
        mode: permission bits of the result (default: the replaced file's, else ``0o666 & ~umask``).
        fsync: flush the file and its folder to the disk (checkpoints).
        allow_empty: accept an empty result (default: an empty file is a failed write).

    On any exception - including cancellation - the temporary file is removed
    and ``path`` is left untouched.

    Raises:
        OutputError: the folder cannot be written, the disk is full, the written file is truncated.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{_suffix(target)}", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise OutputError(os_error_message(target, err)) from err
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as err:
            raise OutputError(os_error_message(target, err)) from err
        try:
            size = tmp.stat().st_size
        except OSError as err:
            raise OutputError(os_error_message(target, err)) from err
        if size == 0 and not allow_empty:
            raise OutputError(f"cannot write {str(target)!r}: nothing was written (the writer failed; is the disk full?); the previous file is unchanged.")
        if verify is not None:
            try:
                verify(tmp)
            except OutputError:
                raise
            except Exception as err:  # any failed check means a bad file
                raise OutputError(
                    f"cannot write {str(target)!r}: the written file does not read back ({_first_line(err)}); "
                    "is the disk full or a file-size limit reached? The previous file is unchanged."
                ) from err
        try:
            if mode is None:
                try:
                    mode = target.stat().st_mode & 0o7777
                except OSError:
                    mode = default_file_mode()
            os.chmod(tmp, mode)
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
            if fsync:
                _fsync_dir(target.parent)
        except OSError as err:
            raise OutputError(os_error_message(target, err)) from err
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically and check that all of it reached the file."""
    data = text.encode(encoding)

    def check(tmp: Path) -> None:
        n = tmp.stat().st_size
        if n != len(data):
            raise OutputError(f"cannot write {str(path)!r}: only {n} of {len(data)} bytes were written (is the disk full?); the previous file is unchanged.")

    with atomic_path(path, verify=check, allow_empty=not data) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def check_output_location(path: str | Path, *, what: str = "--output", folder: bool = False) -> Path:
    """Check before any work that ``path`` can be written (or created, when ``folder``).

    The nearest existing ancestor must be a folder in which a file can be created
    (a probe file is created and removed).  ``path`` itself must not be a folder
    when a file is expected, nor a file when a folder is expected.

    Raises:
        OutputError: with the option name, the path and the reason.
    """
    p = Path(path)
    if str(path).strip() == "":
        raise OutputError(f"{what} is empty; give a file or folder path.")
    if p.exists():
        if folder and not p.is_dir():
            raise OutputError(f"{what} {str(path)!r} is a file; a folder is expected.")
        if not folder and p.is_dir():
            raise OutputError(f"{what} {str(path)!r} is a folder; give a file name.")
    parent = p if folder else p.parent
    anc = parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"{what} {str(path)!r}: {str(anc)!r} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".repux-write-test-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {str(path)!r} cannot be written: {_reason(err)}.") from err
    return p
