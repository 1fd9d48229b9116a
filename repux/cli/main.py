"""The ``repux`` command line: one entry point, sub-commands, shared conventions.

* exit code 0 on success, 1 for a user error (one line on stderr), 2 for a
  usage error (argparse), 130/143 when cancelled by SIGINT/SIGTERM;
* ``--control stdin``: the stop channel of a parent program (the Slicer modules).
  The line ``{"command": "stop"}`` on stdin - or stdin closing: the parent is
  gone - stops the job at its next progress point (a training run finishes its
  iteration and writes its checkpoint); the job then prints one
  ``{"stage": "stopped", ...}`` progress line and exits 0.  No signal is
  needed, so this works through launchers that do not forward signals
  (Slicer's ``PythonSlicer``) and on Windows;
* ``--progress auto|bar|json|none``: a bar on a terminal, JSON lines on stdout
  for programs (the Slicer modules);
* heavy imports happen inside the command functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repux._version import __version__
from repux.cli.options import RepuxArgumentParser, add_common, warn_deprecated_spellings
from repux.cli.validate import validate_args
from repux.errors import Cancelled, RepuxError
from repux.io.files import describe_os_error, is_user_os_error
from repux.progress import BarProgressPrinter, CancelToken, JsonProgressPrinter, ProgressCallback
from repux.protocol import (
    DEBUG_LOG_FORMAT,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    EXIT_USER_ERROR,
    LOG_FORMAT,
    STOP_COMMANDS,
    ProgressEvent,
    error_line,
    read_command_lines,
)

__all__ = ["JobContext", "add_common", "build_parser", "main"]

logger = logging.getLogger("repux")

CITATION = "Lee H.H. et al., Scaling Up 3D Kernels with Bayesian Frequency Re-parameterization for Medical Image Segmentation, MICCAI 2023, arXiv:2303.05785"

#: seconds a cancelled job may take to stop cooperatively before the process exits hard
CANCEL_GRACE_S = 2.0


@dataclass
class JobContext:
    """What a command gets besides its arguments."""

    progress: ProgressCallback | None
    cancel: CancelToken
    temp_paths: set[Path] = field(default_factory=set)
    progress_mode: str = "none"

    def register_temp(self, path: str | Path) -> Path:
        """Remember a temporary path to delete if the job is stopped or killed (``repux session``'s work folder)."""
        p = Path(path)
        self.temp_paths.add(p)
        return p

    def release_temp(self, path: str | Path) -> None:
        self.temp_paths.discard(Path(path))

    def cleanup(self) -> None:
        import shutil

        for p in list(self.temp_paths):
            try:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            except OSError:
                pass
            self.temp_paths.discard(p)


def _commands() -> list[Callable[[Any], None]]:
    from repux.cli import (
        commands_bench,
        commands_core,
        commands_data,
        commands_dicom,
        commands_doctor,
        commands_infer,
        commands_session,
        commands_train,
    )

    return [
        commands_core.register,
        commands_infer.register,
        commands_session.register,
        commands_train.register,
        commands_data.register,
        commands_dicom.register,
        commands_bench.register,
        commands_doctor.register,
        *_front_end_commands(),
    ]


#: entry-point group through which a front end adds a command (RepUX Web adds ``repux web``; see pyproject.toml)
COMMAND_ENTRY_POINTS = "repux.commands"


def _front_end_commands() -> list[Callable[[Any], None]]:
    """The ``register`` functions front ends declare in the ``repux.commands`` entry-point group.

    The engine names no front end: a command appears when its package is installed (a wheel or ``pip install -e``).
    One that fails to load is left out with a warning instead of breaking every other command.
    """
    from importlib import metadata

    try:
        found = metadata.entry_points(group=COMMAND_ENTRY_POINTS)
    except TypeError:  # Python 3.9: entry_points() takes no arguments
        found = metadata.entry_points().get(COMMAND_ENTRY_POINTS, [])  # type: ignore[attr-defined]
    registers: dict[str, Callable[[Any], None]] = {}
    for ep in sorted(found, key=lambda e: e.name):
        if ep.name in registers:
            continue
        try:
            registers[ep.name] = ep.load()
        except Exception as e:  # a broken front end must not break the engine's CLI
            logging.getLogger("repux").warning("command %r from %s is not available: %s", ep.name, ep.value, e)
    return list(registers.values())


def build_parser() -> argparse.ArgumentParser:
    parser = RepuxArgumentParser(
        prog="repux",
        description="RepUX-Net CT organ segmentation: inference, training, fine-tuning and model management.",
        epilog=f"Cite: {CITATION}",
    )
    parser.add_argument("--version", action="version", version=f"repux {__version__}\nCite: {CITATION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _commands():
        register(sub)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    if getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(DEBUG_LOG_FORMAT if level == logging.DEBUG else LOG_FORMAT))
    root = logging.getLogger("repux")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _progress_callback(args: argparse.Namespace) -> tuple[ProgressCallback | None, str, Callable[[], None]]:
    mode = getattr(args, "progress", "none")
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "json":
        return JsonProgressPrinter(sys.stdout), mode, lambda: None
    if mode == "bar":
        bar = BarProgressPrinter(desc=f"repux {args.command}")
        return bar, mode, bar.close
    return None, mode, lambda: None


def _watch_control(fd: int, ctx: JobContext, requested: list[str]) -> None:
    """Read JSON command lines from the parent on ``fd``; stop on ``stop``/``cancel`` or end of input."""
    for cmd in read_command_lines(fd, 4096):
        if cmd.get("command") in STOP_COMMANDS:
            requested.append("stopped on request")
            ctx.cancel.cancel("stopped on request")
            return
        logger.warning("ignoring control line %r (expected {\"command\": \"stop\"})", cmd.get("raw", json.dumps(cmd))[:80])
    requested.append("stopped: the parent program closed the control channel")
    ctx.cancel.cancel("stopped: the parent program closed the control channel")


def _stopped_line(ctx: JobContext, printer: ProgressCallback | None, last: dict[str, ProgressEvent], reason: str, detail: str) -> None:
    """The ``stopped`` progress line (JSON mode) or one stderr line."""
    if printer is not None and ctx.progress_mode == "json":
        previous = last.get("event")
        extra: dict[str, Any] = {"reason": reason}
        if previous is not None:
            extra.update({k: previous.extra[k] for k in ("iteration", "max_iterations") if k in previous.extra})
        printer(ProgressEvent("stopped", previous.fraction if previous is not None else 0.0, detail or reason, None, extra))
    print(f"repux: {detail or reason}", file=sys.stderr, flush=True)


def _run_cancellable(func: Callable[[argparse.Namespace, JobContext], int | None], args: argparse.Namespace, ctx: JobContext) -> int:
    """Run the command in a worker thread so a stop request is handled at once.

    The main thread waits.  A signal (SIGINT/SIGTERM/SIGBREAK: a terminal user) or a
    stop request on the control channel (``--control stdin``: a parent program) sets
    the cancel token; the job stops at its next progress point and cleans up.  If it
    has not stopped after ``cancel_grace`` seconds, registered temporary paths are removed and the process exits hard
    (writers use temp files renamed only when complete, so nothing is left half-written).  Exit code: 128 + signal number after a signal, 0 after
    a control-channel stop (with a ``stopped`` progress line).
    """
    outcome: dict[str, Any] = {}
    last: dict[str, ProgressEvent] = {}
    printer = ctx.progress
    if printer is not None:

        def tracking(event: ProgressEvent) -> None:
            last["event"] = event
            printer(event)

        ctx.progress = tracking

    def target() -> None:
        try:
            outcome["rc"] = func(args, ctx) or 0
        except BaseException as err:  # handed to the main thread, re-raised there
            outcome["error"] = err

    received: list[int] = []
    requested: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        ctx.cancel.cancel(f"cancelled by {signal.Signals(signum).name}")

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        # SIGBREAK: Ctrl+Break in a Windows console
        for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
            if s is not None:
                previous[s] = signal.signal(s, handler)
    if getattr(args, "control", "none") == "stdin":
        threading.Thread(target=_watch_control, args=(sys.stdin.fileno(), ctx, requested), name="repux-control", daemon=True).start()
    worker = threading.Thread(target=target, name=f"repux-{args.command}", daemon=True)
    try:
        worker.start()
        deadline = None
        while worker.is_alive():
            worker.join(0.1)
            if (received or requested) and deadline is None:
                deadline = _monotonic() + float(getattr(args, "cancel_grace", CANCEL_GRACE_S))
            if deadline is not None and worker.is_alive() and _monotonic() > deadline:
                ctx.cleanup()
                print(f"repux: {ctx.cancel.reason}; the job did not stop within the grace period", file=sys.stderr, flush=True)
                sys.stderr.flush()
                os._exit(EXIT_SIGNAL_BASE + received[0] if received else EXIT_USER_ERROR)
    finally:
        if in_main:
            for s, h in previous.items():
                signal.signal(s, h)
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, Cancelled) or ((received or requested) and isinstance(err, KeyboardInterrupt)):
            ctx.cleanup()
            if requested and not received:
                _stopped_line(ctx, printer, last, requested[0], str(err))
                return EXIT_OK
            print(f"repux: {err or 'cancelled'}", file=sys.stderr)
            return EXIT_SIGNAL_BASE + (received[0] if received else signal.SIGINT)
        raise err
    if received:
        return EXIT_SIGNAL_BASE + received[0]
    return int(outcome.get("rc", 0))


def _monotonic() -> float:
    import time

    return time.monotonic()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    warn_deprecated_spellings(sys.argv[1:] if argv is None else argv)
    callback, mode, close = _progress_callback(args)
    ctx = JobContext(progress=callback, cancel=CancelToken(), progress_mode=mode)
    try:
        validate_args(args)  # paths, ids, output places: before heavy imports and long work
        return _run_cancellable(args.func, args, ctx)
    except RepuxError as err:
        ctx.cleanup()
        close()
        if getattr(err, "unexpected", False) and getattr(args, "verbose", 0) >= 1 and err.__cause__ is not None:
            import traceback

            traceback.print_exception(err.__cause__, file=sys.stderr)  # -v: the traceback of an unexpected reader/writer error
        print(error_line(err), file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        ctx.cleanup()
        close()
        print(error_line("out of memory; try a smaller --sw-batch-size, --device cpu, or a lower --max-voxels budget."), file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        if not is_user_os_error(err):
            raise  # not the user's environment: a bug, keep the traceback
        ctx.cleanup()
        close()
        print(error_line(describe_os_error(err)), file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())
