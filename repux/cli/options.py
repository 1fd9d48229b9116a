"""Options shared by the ``repux`` sub-commands: one name and one meaning per concept.

Every command registers its options through these helpers, so ``--device`` or
``--roi-size`` accept and validate the same values everywhere, and the
conventions hold across commands:

* ``-i/--input`` what is read, ``-o/--output`` what is written (a file, a folder
  or a report prefix, as each command's help says), ``--overwrite`` to replace
  what exists, ``--json`` prints JSON on stdout (a flag, never a path);
* MONAI's names for the sliding window: ``--roi-size``, ``--sw-batch-size``,
  ``--overlap``;
* values are checked by argparse ``type=`` functions, so a bad value is one
  ``repux: error: argument --x: ...`` line and exit code 2, never a traceback.

Spellings of earlier releases (``--out``, ``--replace``, ``--roi``, ...) stay
accepted for one release as hidden aliases; using one logs a warning.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from repux.config import QUALITIES

__all__ = [
    "DEPRECATED_ALIASES",
    "RepuxArgumentParser",
    "add_common",
    "add_device_options",
    "add_output_option",
    "add_overwrite_option",
    "add_window_options",
    "csv_floats",
    "device_name",
    "duration",
    "fraction",
    "model_id",
    "non_negative_float",
    "non_negative_int",
    "open_fraction",
    "port_number",
    "positive_float",
    "positive_int",
    "roi_size",
    "shard_spec",
    "thread_count",
    "warn_deprecated_spellings",
]

logger = logging.getLogger("repux")

#: hidden spellings of earlier releases -> the current option (kept for one release)
DEPRECATED_ALIASES: dict[str, str] = {
    "--out": "--output",
    "--replace": "--overwrite",
    "--roi": "--roi-size",
    "--train-roi": "--train-roi-size",
    "--reference-batch": "--sw-batch-size",
    "--training-set": "--dataset",
}


class _HelpFormatter(argparse.HelpFormatter):
    """Leaves the deprecated aliases out of ``--help``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if s not in DEPRECATED_ALIASES]
        if shown and len(shown) != len(action.option_strings):
            action = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar, help=action.help)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class RepuxArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``repux: error: <what> (see 'repux X --help')``, exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"repux: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


# ----------------------------------------------------------------------------------------------
# value types: each raises ArgumentTypeError with the value and what is allowed


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(str(text).strip())
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (finite)")
    return value


#: the largest integer any option takes (a C int): larger values are typos or attacks
MAX_INT = 2**31 - 1


def _int(text: str) -> int:
    value = _number(text, int, "an integer")
    if abs(value) > MAX_INT:
        raise argparse.ArgumentTypeError(f"{text!r} is too large: use an integer below {MAX_INT + 1:,}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use an integer >= 0")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use a number > 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use a number >= 0")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use a number in [0, 1]")
    return value


def open_fraction(text: str) -> float:
    """A number in [0, 1) (a sliding-window overlap)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: use a number in [0, 1)")
    return value


def roi_size(text: str) -> tuple[int, int, int]:
    """``96`` or ``96,96,64``: each a multiple of 16, at least 32."""
    from repux.config import parse_roi_size
    from repux.errors import ConfigError

    try:
        return parse_roi_size(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    except (TypeError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a window size: use one integer (96) or three (96,96,64), multiples of 16, at least 32") from None


#: most simulated clicks per organ (``--clicks``) or per training crop (``--max-clicks``)
MAX_CLICKS = 100


def click_limit(text: str) -> int:
    """An integer from 1 to :data:`MAX_CLICKS` (``--max-clicks``)."""
    value = _int(text)
    if not 1 <= value <= MAX_CLICKS:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use an integer from 1 to {MAX_CLICKS}")
    return value


def click_counts(text: str) -> tuple[int, ...]:
    """``0,1,3,5,10``: click counts at which Dice is reported (integers from 0 to :data:`MAX_CLICKS`), sorted, unique."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of click counts: use integers from 0 to {MAX_CLICKS}, e.g. 0,1,3,5,10")
    values = sorted({int(p) for p in parts})
    if values[-1] > MAX_CLICKS:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: click counts go from 0 to {MAX_CLICKS}")
    return tuple(values)


def csv_floats(count: int, what: str, positive: bool = False) -> Callable[[str], tuple[float, ...]]:
    """A type for ``count`` comma-separated finite numbers (``what`` names them in the message), each > 0 when ``positive``."""

    def parse(text: str) -> tuple[float, ...]:
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not {count} comma-separated numbers {what}")
        if positive and not all(v > 0 for v in values):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: {what} must all be > 0")
        return values

    parse.__name__ = what
    parse.csv_count = count  # type: ignore[attr-defined]  (read by the argument fuzz test)
    parse.positive = positive  # type: ignore[attr-defined]
    return parse


def duration(text: str) -> float:
    """``900``, ``90s``, ``15m`` or ``1.5h`` -> seconds (> 0)."""
    s = str(text).strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1:], None)
    try:
        value = float(s[:-1]) * unit if unit else float(s)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use a positive number of seconds or e.g. 90s, 15m, 1.5h")
    return value


def thread_count(text: str) -> int:
    """An integer from 1 to 1024 (CPU threads)."""
    value = _int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use an integer from 1 to 1024")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (availability is checked later, when the job starts)."""
    from repux.config import DEVICE_RULE, is_device_name

    value = str(text).strip().lower()
    if is_device_name(value):
        return value
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use {DEVICE_RULE}")


def model_id(text: str) -> str:
    """A model id of the store (see :mod:`repux.models.ids`)."""
    from repux.models.ids import MODEL_ID_RULE, is_model_id

    if not is_model_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed as a model id: use {MODEL_ID_RULE}")
    return text


# ----------------------------------------------------------------------------------------------
# option groups


def port_number(text: str) -> int:
    """A TCP port: 1..65535, or 0 for a free one."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: use a port in 1..65535, or 0 for a free one")
    return value


def shard_spec(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N: this process's share of a batch (SLURM: ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    from repux.errors import ConfigError
    from repux.inference.batch import parse_shard

    try:
        return parse_shard(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard: use I/N with 0 <= I < N, e.g. 0/4") from None


def add_common(p: argparse.ArgumentParser, progress: bool = True) -> None:
    """Options every command has: verbosity and (for long commands) the progress display and the stop channel."""
    g = p.add_argument_group("output and logging")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    if progress:
        g.add_argument(
            "--progress",
            choices=("auto", "bar", "json", "none"),
            default="auto",
            help="progress display: 'json' prints one JSON object per line on stdout (for programs); "
            "'auto' shows a bar on a terminal and nothing otherwise (default: auto)",
        )
        g.add_argument(
            "--control",
            choices=("none", "stdin"),
            default="none",
            help='\'stdin\': a parent program stops the job by writing the line {"command": "stop"} on stdin (or by closing '
            "stdin); the job stops at its next progress point (training: after the current iteration, with a checkpoint), "
            "prints a 'stopped' progress line and exits 0 (default: none; SIGINT/SIGTERM always work)",
        )


def add_device_options(
    p: argparse.ArgumentParser | Any, default_device: str = "auto", precision: bool = True, algorithm: bool = True, title: str = "hardware"
) -> Any:
    """``--device``, ``--threads`` and (optionally) ``--precision``, ``--algorithm``; returns the group."""
    g = p.add_argument_group(title) if isinstance(p, argparse.ArgumentParser) else p
    g.add_argument(
        "--device", type=device_name, default=default_device, help=f"auto, cpu, cuda, cuda:N or mps (default: {default_device}; auto = GPU when present)"
    )
    g.add_argument("--threads", type=thread_count, help="CPU threads, 1 to 1024 (default: all cores)")
    if precision:
        g.add_argument(
            "--precision",
            default="auto",
            choices=("auto", "fp32", "bf16", "fp16"),
            help="auto: bf16/fp16 autocast on GPU; bf16 on CPUs with bf16 matrix hardware (AMX, AVX-512 BF16), fp32 on other CPUs",
        )
    if algorithm:
        g.add_argument("--algorithm", default="auto", choices=("auto", "direct", "fft", "native"), help="large-kernel convolution algorithm (default: auto)")
    return g


def add_window_options(p: argparse.ArgumentParser) -> Any:
    """The quality preset and the sliding-window options of inference (MONAI's names); returns the group."""
    g = p.add_argument_group("inference")
    g.add_argument("--quality", choices=QUALITIES, help="fast: overlap 0.25; standard: overlap 0.5; best: overlap 0.5 + flip TTA (4x slower)")
    g.add_argument("--overlap", type=open_fraction, help="sliding-window overlap in [0, 1) (default: the model's, usually 0.5)")
    g.add_argument("--roi-size", type=roi_size, help="window size, e.g. 96 or 96,96,64 (default: the model's)")
    g.add_argument(
        "--sw-batch-size", type=positive_int, help="windows per forward pass (default: 1 on CPU, 4 on GPU; halved automatically on GPU out-of-memory)"
    )
    g.add_argument("--tta", action="store_true", default=None, help="average over axis flips")
    g.add_argument("--no-crop", action="store_true", help="do not crop to the body before the sliding window")
    return g


def add_output_option(p: Any, help: str, required: bool = True, default: str | None = None, metavar: str = "PATH") -> None:
    """``-o/--output`` (and the hidden ``--out`` of earlier releases)."""
    p.add_argument("-o", "--output", "--out", dest="output", required=required, default=default, metavar=metavar, help=help)


def add_overwrite_option(p: Any, help: str = "replace what already exists") -> None:
    """``--overwrite`` (and the hidden ``--replace`` of earlier releases)."""
    p.add_argument("--overwrite", "--replace", dest="overwrite", action="store_true", help=help)


def warn_deprecated_spellings(argv: Sequence[str]) -> None:
    """Log one warning per deprecated option spelling found in ``argv``."""
    seen = set()
    for a in argv:
        name = a.split("=", 1)[0]
        if name in DEPRECATED_ALIASES and name not in seen:
            seen.add(name)
            logger.warning("%s is deprecated and will be removed in the next release; use %s", name, DEPRECATED_ALIASES[name])
