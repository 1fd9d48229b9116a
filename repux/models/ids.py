"""The rule for model ids (light module: no heavy imports, usable by argument parsing).

A model id names a folder of the model store (``$REPUX_HOME/models/<id>``) and
appears in commands, so it must be a plain, portable file name: no separator,
no ``..``, no leading dot or dash, no Windows device name, at most 64 characters.
"""

from __future__ import annotations

import re

from repux.errors import ConfigError

__all__ = ["MODEL_ID_PATTERN", "MODEL_ID_RULE", "check_model_id", "is_model_id"]

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_ID_RULE = "1-64 characters from letters, digits, '.', '_' and '-', starting with a letter or digit (" + MODEL_ID_PATTERN + ")"

_ID = re.compile(MODEL_ID_PATTERN)
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def is_model_id(value: object) -> bool:
    """True when ``value`` is an allowed model id."""
    if not isinstance(value, str) or not _ID.match(value) or value.endswith("."):
        return False
    return value.split(".")[0].lower() not in _WINDOWS_DEVICES


def check_model_id(value: object, what: str = "model id") -> str:
    """Return ``value`` if it is an allowed model id, else raise :class:`ConfigError` with the rule."""
    if not is_model_id(value):
        raise ConfigError(f"{what} {value!r} is not allowed: use {MODEL_ID_RULE}, not ending with '.' and not a Windows device name.")
    return str(value)
