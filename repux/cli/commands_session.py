"""``repux session``: a resident click-to-segment engine driven by JSON lines on stdin/stdout.

Protocol (one JSON object per line; see the README, "Click to segment"):

* commands on stdin: ``{"command": "open", "input": PATH}``, ``{"command": "click", "ras": [R, A, S],
  "positive": true, "organ": null}``, ``{"command": "undo"}``, ``{"command": "reset"}``,
  ``{"command": "close"}`` (end the session), ``{"command": "stop"}`` (the stop channel of every job:
  the running command is abandoned, a ``stopped`` line is printed, exit 0); closing stdin stops too.
  Any command may carry an ``"id"``, echoed in its reply.
* on stdout: progress lines (``{"stage": ..., "fraction": ...}``, as every job with ``--progress json``;
  stage ``background`` for the background pass) and one reply per command:
  ``{"reply": COMMAND, "id": ID, "ok": true, ...}`` or ``{"reply": COMMAND, "id": ID, "ok": false, "error": TEXT}``.
  The first line is ``{"reply": "ready", ...}`` once the model is loaded.
* a click reply carries the :class:`~repux.inference.session.ClickResult` fields and, when something changed,
  ``"labels"``: the path of an uncompressed ``.nrrd`` file holding the session's label map cropped
  to the changed box (input grid geometry, uint8 label values), with ``"offset"`` (its first voxel's
  index i, j, k on the input grid) and ``"size"``.  The files live in a temporary folder removed when
  the session ends; the reader may delete each file after reading it.
* a click received while another is computing cancels the earlier one (its reply has
  ``"status": "cancelled"``): the last click wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from repux.cli.options import add_common, add_device_options, add_window_options, fraction
from repux.errors import ConfigError, RepuxError
from repux.protocol import STOP_COMMANDS, read_command_lines

logger = logging.getLogger(__name__)

COMMANDS = ("open", "click", "undo", "reset", "close", "stop", "cancel", "status")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "session",
        help="resident click-to-segment engine: JSON-line commands (open, click, undo, reset, close) on stdin, replies on stdout",
        description="Keeps the model and one volume in memory and answers clicks with the organ under the point "
        "(equal to 'repux segment', organ component containing the point). Commands and replies are JSON lines; see the README.",
    )
    p.add_argument("-m", "--model", default=None, help="installed model id or model folder (default: the built-in demo model)")
    p.add_argument("--no-background", action="store_true", help="do not compute the whole volume in the background after open")
    p.add_argument("--grow-threshold", type=fraction, default=None, help="probability for positive clicks that grow a missing organ (default: 0.3)")
    g = add_window_options(p)
    add_device_options(g)
    add_common(p, progress=False)
    p.add_argument(
        "--progress", choices=("json", "none"), default="json", help="json: progress lines on stdout besides the replies (default); none: replies only"
    )
    p.set_defaults(func=cmd_session)


class _Channel:
    """Reads command lines from stdin (raw descriptor) into a queue; cancels a running click when a newer one arrives."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.running_click: Any = None  # CancelToken of the click being computed
        self.stop_reason: str | None = None
        self.stop_event = threading.Event()
        self.job_cancel: Any = None

    def run(self) -> None:
        for cmd in read_command_lines(self.fd):
            name = cmd.get("command")
            if name in STOP_COMMANDS:
                self._stop("stopped on request")
                return
            if name == "click":
                with self.lock:
                    if self.running_click is not None:
                        self.running_click.cancel("superseded by a newer click")
            self.queue.put(cmd)
        self._stop("stopped: the parent program closed the control channel")

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stop_event.set()
        with self.lock:
            if self.running_click is not None:
                self.running_click.cancel(reason)
        if self.job_cancel is not None:
            self.job_cancel.cancel(reason)
        self.queue.put(None)


def cmd_session(args: argparse.Namespace, ctx: Any) -> int:
    if args.grow_threshold is not None and not 0.0 < args.grow_threshold < 1.0:
        raise ConfigError(f"--grow-threshold {args.grow_threshold!r}: use a probability strictly between 0 and 1.")
    from repux.errors import Cancelled
    from repux.inference.session import GROW_THRESHOLD, InteractiveSession
    from repux.io.images import read_image
    from repux.models.store import DEFAULT_MODEL
    from repux.progress import CancelToken, ProgressEvent

    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        line = json.dumps(obj, allow_nan=False, default=str)
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def progress(ev: ProgressEvent) -> None:
        if args.progress == "json":
            emit(ev.to_dict())

    channel = _Channel(sys.stdin.fileno())
    channel.job_cancel = ctx.cancel
    threading.Thread(target=channel.run, name="repux-session-commands", daemon=True).start()

    from repux.cli.commands_infer import segmenter_from_args

    args.largest_component = False
    seg = segmenter_from_args(args, args.model or DEFAULT_MODEL)
    session = InteractiveSession(segmenter=seg, background=not args.no_background, grow_threshold=args.grow_threshold or GROW_THRESHOLD, progress=progress)
    workdir = Path(tempfile.mkdtemp(prefix="repux-session-"))
    ctx.register_temp(workdir)
    emit(
        {
            "reply": "ready",
            "ok": True,
            "model": seg.card.id if seg.card else None,
            "labels": seg.model_labels.to_list(),
            "device": str(seg.device),
            "guided": seg.guidance is not None,  # corrections (negative clicks, positive clicks naming an organ) go to the network
        }
    )
    counter = [0]

    def reply(cmd: dict[str, Any], ok: bool = True, **fields: Any) -> None:
        d = {"reply": cmd.get("command"), "id": cmd.get("id"), "ok": ok}
        d.update(fields)
        emit(d)

    def result_reply(cmd: dict[str, Any], r: Any) -> None:
        fields = r.to_dict()
        if r.labels is not None:
            import SimpleITK as sitk

            counter[0] += 1
            path = workdir / f"labels-{counter[0]:05d}.nrrd"
            tmp = path.with_name(path.stem + ".part.nrrd")
            sitk.WriteImage(r.labels, str(tmp), False)
            os.replace(tmp, path)
            fields["labels"] = str(path)
        reply(cmd, True, **fields)

    try:
        while True:
            cmd = channel.queue.get()
            if cmd is None:
                break
            name = cmd.get("command")
            try:
                if name == "close":
                    reply(cmd, True)
                    break
                if name == "open":
                    src = cmd.get("input")
                    if not isinstance(src, str) or not src:
                        raise ConfigError(f'open needs "input": a CT file or DICOM folder; got {src!r}.')
                    if not Path(src).exists():
                        raise ConfigError(f"open: input {src!r} does not exist.")
                    token = CancelToken()
                    channel.job_cancel = token
                    info = session.open(read_image(src, cmd.get("series_uid")), progress=progress, cancel=token)
                    channel.job_cancel = ctx.cancel
                    reply(cmd, True, **info)
                elif name == "click":
                    ras = cmd.get("ras")
                    if not isinstance(ras, list) or len(ras) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ras):
                        raise ConfigError(f'click needs "ras": 3 numbers R, A, S (mm); got {ras!r}.')
                    if not channel.queue.empty() and any(c and c.get("command") == "click" for c in list(channel.queue.queue)):
                        reply(cmd, True, status="cancelled", message="superseded by a newer click")
                        continue
                    token = CancelToken()
                    with channel.lock:
                        channel.running_click = token
                    try:
                        r = session.click([float(v) for v in ras], bool(cmd.get("positive", True)), organ=cmd.get("organ"), cancel=token)
                    finally:
                        with channel.lock:
                            channel.running_click = None
                    result_reply(cmd, r)
                elif name == "undo":
                    result_reply(cmd, session.undo())
                elif name == "reset":
                    result_reply(cmd, session.reset())
                elif name == "status":
                    reply(cmd, True, open=session.is_open, windows_done=session.windows_done, windows_total=session.windows_total)
                else:
                    raise ConfigError(f"unknown command {name!r}; use one of {', '.join(COMMANDS)}.")
            except Cancelled as err:
                if channel.stop_event.is_set():
                    break
                reply(cmd, False, error=str(err))
            except RepuxError as err:
                reply(cmd, False, error=str(err))
            except OSError as err:
                reply(cmd, False, error=f"{type(err).__name__}: {err}")
    finally:
        session.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        ctx.release_temp(workdir)
    if channel.stop_event.is_set():
        emit(ProgressEvent("stopped", 0.0, channel.stop_reason or "stopped", None, {"reason": channel.stop_reason}).to_dict())
        print(f"repux: {channel.stop_reason}", file=sys.stderr, flush=True)
    return 0
