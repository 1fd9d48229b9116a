"""``repux web``: RepUX Web, the segment -> edit -> curate -> fine-tune loop in a browser (trame-slicer)."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from repux.cli.options import add_common, port_number, positive_float
from repux.errors import ConfigError, RepuxError

logger = logging.getLogger(__name__)

#: seconds Ctrl-C leaves the server to stop a fine-tuning with a checkpoint before the process exits
WEB_CANCEL_GRACE_S = 150.0  # > RepUXTrainerLib.logic.SHUTDOWN_STOP_SECONDS (120)

WEB_EXTRA_HINT = 'RepUX Web needs the web extra: pip install -e ".[web]" (trame-slicer 2.0.0 with slicer-core 5.11)'


def register(sub: Any) -> None:
    p = sub.add_parser(
        "web",
        help="serve RepUX Web: segment, edit, curate, fine-tune and rank in a browser",
        description="Serves the whole RepUX loop (segment, edit with Slicer's segment editor, curate a training set, fine-tune "
        "in the background, re-segment, rank the next case by uncertainty) on Kitware's trame-slicer. It listens on "
        "127.0.0.1 only unless --host says otherwise, and opens with the built-in demo phantom.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)"
    )
    p.add_argument("--port", type=port_number, default=0, metavar="N", help="port to listen on; 0 picks a free one (default: 0)")
    p.add_argument("--root", default=".", metavar="FOLDER", help="folder the file browser shows; nothing outside it is readable (default: the current folder)")
    p.add_argument("--max-upload-mb", type=positive_float, default=1024.0, metavar="MB", help="largest CT the browser may upload, in MB (default: 1024)")
    p.add_argument(
        "--dataset",
        "--training-set",
        dest="dataset",
        metavar="FOLDER",
        help="training-set folder for curated cases, as --dataset of repux train/finetune (default: <store>/web/training-set)",
    )
    p.add_argument(
        "--open", action=argparse.BooleanOptionalAction, default=None, help="open the page in the default browser (default: when a display is available)"
    )
    p.add_argument("--no-demo", dest="demo", action="store_false", help="do not open the built-in demo phantom at start")
    p.add_argument("-m", "--model", help="the model selected at start: installed id or model folder (default: the built-in default model)")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_web, cancel_grace=WEB_CANCEL_GRACE_S)


def _check_host(host: str) -> str:
    text = str(host).strip()
    if text == "localhost":
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not text or any(c.isspace() or c in "/:@" for c in text):
            raise ConfigError(f"--host {host!r} is not an IP address or host name (e.g. 127.0.0.1).") from None
    return text


def check_web_args(args: argparse.Namespace) -> None:
    """Check the arguments before anything heavy is imported.

    Raises:
        ConfigError: the message names the option, the value and what is allowed.
    """
    args.host = _check_host(args.host)
    if not 0 <= int(args.port) <= 65535:
        raise ConfigError(f"--port {args.port} is out of range; use 1..65535, or 0 for a free port.")
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--root {args.root!r} is not a folder.")
    if not (args.max_upload_mb > 0) or args.max_upload_mb > 16384:
        raise ConfigError(f"--max-upload-mb must be > 0 and <= 16384; got {args.max_upload_mb}.")
    if getattr(args, "model", None):
        from repux.models.store import resolve_model

        resolve_model(args.model)  # a clear error now rather than an empty model list in the page
    if args.dataset:
        folder = Path(args.dataset).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--dataset {args.dataset!r} exists and is not a folder.")


def check_web_extra() -> None:
    """Raise a one-line error when the [web] extra is not installed."""
    for module in ("trame", "trame_slicer", "slicer"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise RepuxError(f"{WEB_EXTRA_HINT}; the '{module}' module is missing.")


def _display_available() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_web(args: argparse.Namespace, ctx: Any) -> int:
    check_web_args(args)
    check_web_extra()
    try:
        from RepUXWeb.app import RepuxWebApp
        from RepUXWeb.controller import WebSettings
    except ImportError as err:
        raise RepuxError(f"{WEB_EXTRA_HINT} ({err}).") from err

    settings = WebSettings(
        root=Path(args.root).expanduser().resolve(),
        max_upload_mb=float(args.max_upload_mb),
        dataset=Path(args.dataset).expanduser().resolve() if args.dataset else None,
        python=sys.executable,
        model=args.model,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach this machine can use RepUX Web and read the files under %s", args.host, settings.root)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame parses sys.argv: keep repux's options away from it
    try:
        app = RepuxWebApp(settings, load_demo=args.demo)
        app.request_stop(lambda: ctx.cancel.cancelled)
        open_browser = _display_available() if args.open is None else bool(args.open)

        def ready(**_: Any) -> None:
            url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{app.server.port}/"
            print(f"RepUX Web: {url}  (root {settings.root}; Ctrl-C stops it)", flush=True)
            if open_browser:
                import webbrowser

                webbrowser.open(url)

        app.ctrl.on_server_ready.add(ready)
        app.server.start(host=args.host, port=int(args.port), open_browser=False, thread=True, show_connection_info=False, timeout=0)
    finally:
        sys.argv = argv
    return 0
