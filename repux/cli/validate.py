"""Checks of paths and ids made before any heavy import or long work.

:func:`validate_args` runs in :func:`repux.cli.main.main` right after argument
parsing: a mistyped input path, a missing dataset, an unknown model or an output
in a read-only place is reported in well under a second (no torch, MONAI or
SimpleITK import), with one ``repux: error: ...`` line.

Rules are declared per command (``COMMAND_RULES``); a command that is not
listed is not checked here (its own code still validates).  Only the standard
library, :mod:`repux.io.files`, :mod:`repux.models.ids` and (for model names)
:mod:`repux.models.store` are imported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from repux.errors import ConfigError, InputImageError, OutputError

__all__ = ["COMMAND_RULES", "check_input", "command_key", "validate_args"]

#: kinds of checks
IN_ANY, IN_FILE, IN_DIR, OUT_FILE, OUT_DIR, OUT_LOCATION, OUT_PREFIX, MODEL, MODEL_OUT = (
    "in-any",
    "in-file",
    "in-dir",
    "out-file",
    "out-dir",
    "out-location",
    "out-prefix",
    "model",
    "model-out",
)

#: "command[ subcommand]" -> {argument dest: (kind, option name shown in messages)}
COMMAND_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "segment": {
        "input": (IN_ANY, "--input"),
        "output": (OUT_LOCATION, "--output"),
        "uncertainty": (OUT_FILE, "--uncertainty"),
        "summary": (OUT_FILE, "--summary"),
        "model": (MODEL, "--model"),
    },
    "demo": {"output": (OUT_DIR, "--output"), "model": (MODEL, "--model")},
    "info": {"model": (MODEL, "MODEL")},
    "convert-official": {"checkpoint": (IN_FILE, "CHECKPOINT"), "output": (OUT_DIR, "--output")},
    "models import": {"source": (IN_ANY, "SOURCE")},
    "train": {"dataset": (IN_DIR, "--dataset"), "output": (MODEL_OUT, "--output"), "run_dir": (OUT_DIR, "--run-dir")},
    "finetune": {"dataset": (IN_DIR, "--dataset"), "output": (MODEL_OUT, "--output"), "run_dir": (OUT_DIR, "--run-dir"), "base": (MODEL, "--base")},
    "evaluate": {"dataset": (IN_DIR, "--dataset"), "output": (OUT_PREFIX, "--output"), "model": (MODEL, "--model")},
    "phantoms": {"output": (OUT_DIR, "--output")},
    "dataset check": {"path": (IN_DIR, "PATH")},
    "dicom-seg": {"input": (IN_FILE, "--input"), "labels": (IN_FILE, "--labels"), "output": (OUT_FILE, "--output")},
    "benchmark": {"input": (IN_ANY, "--input"), "output": (OUT_FILE, "--output"), "model": (MODEL, "--model")},
}

_GLOB = set("*?[")


def command_key(args: argparse.Namespace) -> str:
    """``"segment"``, ``"models import"``, ``"dataset check"``..."""
    cmd = str(getattr(args, "command", "") or "")
    for attr in ("models_command", "dataset_command"):
        sub = getattr(args, attr, None)
        if sub:
            return f"{cmd} {sub}"
    return cmd


def check_input(value: str, option: str, kind: str = IN_ANY) -> Path:
    """An input path that must exist (as a file, a folder, or either)."""
    text = str(value)
    if not text.strip():
        raise InputImageError(f"{option} is empty; give a path.")
    p = Path(text).expanduser()
    try:
        exists = p.exists()
    except OSError as err:
        raise InputImageError(f"{option} {text!r} cannot be read: {err.strerror}.") from err
    if not exists:
        hint = ""
        parent = p.parent
        if parent.is_dir():
            from repux.errors import did_you_mean

            try:
                hint = did_you_mean(p.name, [c.name for c in parent.iterdir()][:2000])
            except OSError:
                hint = ""
        raise InputImageError(f"{option} {text!r} does not exist.{hint}")
    if kind == IN_FILE and p.is_dir():
        raise InputImageError(f"{option} {text!r} is a folder; a file is expected.")
    if kind == IN_DIR and not p.is_dir():
        raise InputImageError(f"{option} {text!r} is a file; a folder is expected.")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise InputImageError(f"{option} {text!r} cannot be read: permission denied.")
    return p


def model_card(args: argparse.Namespace, spec: str):
    """The card of ``spec`` (an installed id or a folder), read once per command line and kept on ``args``."""
    from repux.models.store import resolve_model

    cache = args.__dict__.setdefault("resolved_models", {})
    if spec not in cache:
        cache[spec] = resolve_model(spec)
    return cache[spec]


def _check_model(spec: str, option: str, args: argparse.Namespace) -> None:
    from repux.errors import ModelFileError
    from repux.models.ids import is_model_id

    text = str(spec)
    if not text.strip():
        raise ConfigError(f"{option} is empty; give an installed model id or a model folder.")
    looks_like_path = os.sep in text or "/" in text or (os.altsep and os.altsep in text) or Path(text).expanduser().exists()
    if not looks_like_path and not is_model_id(text):
        from repux.models.ids import check_model_id

        check_model_id(text, option)
    try:
        model_card(args, text)
    except ModelFileError as err:
        raise ModelFileError(f"{option}: {err}") from err


def validate_args(args: argparse.Namespace) -> None:
    """Check the paths, ids and output locations of a parsed command line (no heavy import).

    Raises:
        RepuxError: one line naming the option, the value and the problem.
    """
    rules = COMMAND_RULES.get(command_key(args))
    if not rules:
        return
    for dest, (kind, option) in rules.items():
        value: Any = getattr(args, dest, None)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            _check_one(str(v), kind, option, args)
    if command_key(args) in ("train", "finetune"):
        _probe_run_lock(args)


def _probe_run_lock(args: argparse.Namespace) -> None:
    """Answer at once when another live process trains in the same run folder (the trainer takes the lock for real)."""
    from repux.io.locks import FileLock

    out = str(getattr(args, "output", "") or "")
    if getattr(args, "run_dir", None):
        run = Path(args.run_dir)
    else:
        from repux.models.store import store_root

        run = store_root() / "runs" / Path(out).name
    lock_file = run / "run.lock"  # repux.training.trainer.RUN_LOCK (not imported: torch)
    if lock_file.is_file():
        FileLock(lock_file, f"run folder {str(run)!r}").acquire().release()


def _check_one(v: str, kind: str, option: str, args: argparse.Namespace) -> None:
    from repux.io.files import check_output_location

    if kind in (IN_ANY, IN_FILE, IN_DIR):
        if v.startswith("@") and kind == IN_ANY and not Path(v).exists():
            check_input(v[1:], f"{option} list file", IN_FILE)  # @list.txt: one path per line, checked case by case
            return
        if _GLOB & set(v) and not Path(v).exists():
            return  # a pattern: expanded by the command
        check_input(v, option, kind)
    elif kind == MODEL:
        _check_model(v, option, args)
    elif kind == OUT_FILE:
        check_output_location(v, what=option)
    elif kind == OUT_DIR:
        _named_folder(v, option)
        check_output_location(v, what=option, folder=True)
    elif kind == OUT_LOCATION:
        if not v.strip():
            raise OutputError(f"{option} is empty; give a file or folder path.")
        p = Path(v)
        if p.exists() and p.is_dir():
            check_output_location(v, what=option, folder=True)
        else:
            check_output_location(v, what=option)
    elif kind == OUT_PREFIX:
        if not v.strip() or v.endswith(("/", os.sep)) or Path(v).is_dir():
            raise OutputError(f"{option} {v!r} must be a report prefix such as results/eval (it writes PREFIX.csv and PREFIX.json).")
        check_output_location(v + ".json", what=option)
    elif kind == MODEL_OUT:
        if not v.strip():
            raise ConfigError(f"{option} is empty; give a model id or a folder path.")
        if "/" in v or "\\" in v or v.startswith("."):
            _named_folder(v, option)
            check_output_location(v, what=option, folder=True)
            if Path(v).exists() and not getattr(args, "overwrite", False):
                raise ConfigError(f"{option} {v!r} already exists; choose another --output (models are never overwritten).")
        else:
            from repux.models.ids import check_model_id
            from repux.models.store import ModelStore

            check_model_id(v, option)
            store = ModelStore()
            if (store.models_dir / v).exists():
                raise ConfigError(f"{option} {v!r}: a model with this id is already installed; choose another id (models are never overwritten).")
            check_output_location(store.models_dir / v, what=option, folder=True)


def _named_folder(v: str, option: str) -> None:
    if v.strip() and Path(v).name in ("", ".", ".."):
        raise OutputError(f"{option} {v!r} must end with a folder name (not '.' or '..').")
