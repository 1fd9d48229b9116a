"""Resumable training checkpoints: atomic writes, safe loads.

A checkpoint holds tensors and plain Python values only (model, optimizer,
scheduler and grad-scaler state dicts, RNG states as tensors/lists, the
iteration, the best validation result and the training configuration) so
that it loads with ``torch.load(weights_only=True)``.

Writes go to a temporary file in the same folder, are flushed and fsynced,
then renamed over the previous checkpoint (``os.replace`` is atomic), so a
``kill -9`` at any moment leaves either the old or the new checkpoint, never
a torn one.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repux.errors import CheckpointError, OutputError
from repux.io.files import atomic_path

__all__ = ["CHECKPOINT", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

CHECKPOINT = "checkpoint.pt"
#: what a resumable checkpoint must hold
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "rng", "iteration", "best", "labels", "model_args")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _to_lists(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_to_lists(v) for v in x]
    return x


def _to_tuples(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuples(v) for v in x)
    return x


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _RecordingWriter:
    """A binary file that remembers the operating-system error behind a failed write.

    ``torch.save`` turns an ``OSError`` of ``write()`` into a ``RuntimeError``
    ("unexpected pos"); the recorded error gives the user the real reason.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, b: Any) -> int:
        try:
            return self._f.write(b)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _verify_checkpoint_file(path: Path) -> None:
    with zipfile.ZipFile(path) as z:  # a truncated file has no central directory
        if not any(n.endswith("data.pkl") for n in z.namelist()):
            raise CheckpointError(f"{str(path)!r} lacks data.pkl")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically to ``path`` (verified, fsynced; the previous checkpoint stays intact on failure).

    Raises:
        OutputError: the folder is read-only, the disk is full or a file-size limit is reached.
    """
    target = Path(path)
    with atomic_path(target, verify=_verify_checkpoint_file, fsync=True) as tmp, open(tmp, "wb") as f:
        w = _RecordingWriter(f)
        try:
            torch.save(state, w)
            f.flush()
        except RuntimeError as err:
            if w.error is not None:
                raise w.error from err
            raise OutputError(f"cannot write checkpoint {str(target)!r}: {str(err).splitlines()[0][:160]}; the previous checkpoint is unchanged.") from err
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a truncated or foreign file gives a clear error."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no training checkpoint at {str(p)!r}; start without --resume.")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"training checkpoint {str(p)!r} is truncated or corrupted ({str(err).splitlines()[0][:120]}); "
            "delete it to restart from scratch, or restore a copy."
        ) from err
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise CheckpointError(f"{str(p)!r} is not a RepUX training checkpoint.")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"training checkpoint {str(p)!r} lacks {', '.join(missing)} (written by another program or edited); start a new run folder.")
    if not isinstance(state["iteration"], int) or state["iteration"] < 0:
        raise CheckpointError(f"training checkpoint {str(p)!r} has an invalid iteration {state['iteration']!r}.")
    return state
