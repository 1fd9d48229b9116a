"""Data sub-commands: ``phantoms`` and ``dataset check``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .options import add_common, add_output_option, csv_floats, fraction, non_negative_int, positive_int

#: the grids of repux.data.phantom.ORIENTATIONS (listed here so that --help needs no heavy import)
ORIENTATION_CHOICES = ("random", "axial", "coronal", "sagittal", "left-handed", "oblique", "left-handed-oblique")


def register(sub: Any) -> None:
    p = sub.add_parser("phantoms", help="write a ready training dataset of synthetic abdominal CT phantoms")
    p.add_argument("--n", type=positive_int, default=40, help="number of phantoms (default: 40)")
    add_output_option(p, help="dataset folder to create", metavar="FOLDER")
    p.add_argument(
        "--organs", default="liver,kidney,spleen,pancreas", help="comma-separated organs to label (default: the FLARE set liver,kidney,spleen,pancreas)"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="phantom i uses seed + i (default: 0)")
    p.add_argument("--val-fraction", type=fraction, default=0.2, help="held-out fraction (default: 0.2)")
    p.add_argument("--spacing", type=csv_floats(3, "x,y,z (mm)", positive=True), help="voxel spacing x,y,z in mm (default: random anisotropic per phantom)")
    p.add_argument(
        "--orientation",
        default="random",
        choices=ORIENTATION_CHOICES,
        help="voxel axes: random (default), axial, coronal, sagittal, oblique, left-handed or left-handed-oblique",
    )
    add_common(p)
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("dataset", help="dataset tools")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser("check", help="validate a dataset before training: files, geometry, label values, empty labels")
    q.add_argument("path", help="dataset folder")
    q.add_argument("--fix", action="store_true", help="resample labels whose grid differs from the image onto the image grid")
    q.add_argument("--json", action="store_true", help="print JSON")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_dataset_check)


def cmd_phantoms(args: argparse.Namespace, ctx: Any) -> int:
    from ..config import spacing_from
    from ..data.phantom import write_phantom_dataset
    from ..labels import LabelSet

    labels = LabelSet.from_names([o.strip() for o in args.organs.split(",") if o.strip()], name="phantoms")
    spacing = spacing_from(list(args.spacing)) if args.spacing else None
    manifest = write_phantom_dataset(
        args.output,
        args.n,
        label_set=labels,
        seed=args.seed,
        val_fraction=args.val_fraction,
        spacing=spacing,
        orientation=args.orientation,
        progress=ctx.progress,
        cancel=ctx.cancel,
    )
    if ctx.progress_mode != "json":
        print(f"wrote {args.n} phantoms and {manifest}")
    return 0


def cmd_dataset_check(args: argparse.Namespace, ctx: Any) -> int:
    from ..data.check import check_dataset
    from ..data.datasets import load_dataset

    ds = load_dataset(args.path)
    reports = check_dataset(ds, fix=args.fix)
    n_err = sum(len(r.errors) for r in reports)
    if args.json:
        print(
            json.dumps(
                {"dataset": str(ds.root), "layout": ds.layout, "labels": ds.labels.names, "cases": [r.to_dict() for r in reports], "errors": n_err}, indent=2
            )
        )
    else:
        print(f"{ds.root} ({ds.layout} layout): {len(ds.cases)} cases, labels {', '.join(ds.labels.names)}")
        for r in reports:
            status = "ERROR" if r.errors else ("fixed" if r.fixed else ("warning" if r.warnings else "ok"))
            print(f"  {r.id:<24} {status}")
            for m in r.errors:
                print(f"      error: {m}")
            for m in r.fixed:
                print(f"      fixed: {m}")
            for m in r.warnings:
                print(f"      warning: {m}")
        print(f"{n_err} error(s)")
    return 1 if n_err else 0
