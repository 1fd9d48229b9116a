"""``repux doctor``: check the installation (versions, devices, a timed forward pass, the model store)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from repux.cli.options import add_common, device_name, roi_size

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check the installation: versions, devices, a timed forward pass, the model store",
        description="One report to paste into a bug report: RepUX, Python, PyTorch (CUDA build), MONAI, SimpleITK versions; "
        "the devices PyTorch sees and the one --device picks, with its memory; one forward pass of the built-in model on that "
        "device, timed; the model store and its free disk space. Exit code 1 when a problem was found.",
    )
    p.add_argument("--device", type=device_name, default="auto", help="device to check (default: auto, what the other commands pick)")
    p.add_argument("--no-forward", dest="forward", action="store_false", help="skip the forward pass")
    p.add_argument("--model", help="model for the forward pass (default: the built-in model)")
    p.add_argument("--roi-size", type=roi_size, help="window size of the forward pass (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace, ctx: Any) -> int:
    from repux.tools.doctor import diagnose, format_report

    report = diagnose(device=args.device, forward=args.forward, model=args.model, roi_size=args.roi_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0
