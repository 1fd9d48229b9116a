"""Exception hierarchy of the RepUX core.

Every error raised for bad user input derives from :class:`RepuxError`, so the
command line can turn it into a one-line message and exit code 1, while a
genuine bug (any other exception) still shows a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

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
]


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
