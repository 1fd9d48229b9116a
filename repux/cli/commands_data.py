"""Data sub-commands: ``phantoms``, ``synth`` and ``dataset check``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from repux.cli.options import add_common, add_output_option, csv_floats, fraction, non_negative_int, positive_int

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

    p = sub.add_parser(
        "synth",
        help="render synthetic CTs from real organ label maps (the built-in model's training data)",
        description="Splits the label maps' background into synthetic tissues (body wall, fat, spine, ribs, lungs, pelvis, bowel "
        "with gas, random blobs) and renders CT intensities (CT priors for native/portal/arterial phases, or fully random), "
        "blur, bias, noise and slice thickness, after a random affine. Writes a RepUX dataset folder.",
    )
    p.add_argument("--labels", required=True, metavar="FOLDER", help="folder of label maps (.nii.gz, .nii, .nrrd, .mha)")
    add_output_option(p, help="dataset folder to create (existing examples are kept: resumable)", metavar="FOLDER")
    add_synth_options(p, n_flag="--n")
    add_common(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("dataset", help="dataset tools")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    dsub.required = True
    q = dsub.add_parser("check", help="validate a dataset before training: files, geometry, label values, empty labels")
    q.add_argument("path", help="dataset folder")
    q.add_argument("--fix", action="store_true", help="resample labels whose grid differs from the image onto the image grid")
    q.add_argument("--json", action="store_true", help="print JSON")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_dataset_check)


#: the intensity modes of repux.data.synth.MODES (listed here so that --help needs no heavy import)
SYNTH_MODES = ("mixed", "ct", "random")


def add_synth_options(p: Any, n_flag: str = "--synth-n") -> None:
    """Generator options shared by ``repux synth`` and ``repux train --synth``."""
    g = p.add_argument_group("synthesis")
    g.add_argument(n_flag, dest="synth_n", type=positive_int, default=5, metavar="N", help="examples per label map (default: 5)")
    g.add_argument(
        "--synth-labels", default="btcv", metavar="SET", help="organs of the label maps: btcv (13 BTCV organs, default), amos, or a label JSON file"
    )
    g.add_argument(
        "--synth-mode", choices=SYNTH_MODES, default="mixed", help="intensities: ct (CT priors, contrast phases), random (SynthSeg), mixed (ct, 10%% random; default)"
    )
    g.add_argument(
        "--synth-background", choices=("split", "flat"), default="split", help="split label 0 into synthetic tissues (default) or leave it flat (ablation)"
    )
    g.add_argument("--synth-spacing", type=csv_floats(3, "x,y,z (mm)", positive=True), help="voxel spacing of the examples (default: 3,3,3)")
    g.add_argument("--synth-val-maps", type=non_negative_int, default=2, metavar="K", help="label maps held out for validation (default: 2)")
    g.add_argument("--synth-workers", type=positive_int, default=1, metavar="N", help="rendering processes (default: 1)")
    g.add_argument("--synth-seed", type=non_negative_int, default=0, help="generator seed (default: 0)")


def synth_dataset(args: argparse.Namespace, folder: Any, progress: Any = None, cancel: Any = None) -> Any:
    """Render (or complete) the synthetic dataset the options describe into ``folder``; returns the manifest path."""
    from repux.data.synth import SynthConfig, write_synth_dataset
    from repux.labels import BTCV, get_label_set

    labels = BTCV if args.synth_labels.lower() == "btcv" else get_label_set(args.synth_labels)
    kw: dict[str, Any] = {"mode": args.synth_mode, "background": args.synth_background == "split"}
    if args.synth_spacing:
        kw["spacing"] = tuple(args.synth_spacing)
    return write_synth_dataset(
        args.synth_source,
        folder,
        args.synth_n,
        label_set=labels,
        config=SynthConfig(**kw),
        seed=args.synth_seed,
        val_maps=args.synth_val_maps,
        workers=args.synth_workers,
        progress=progress,
        cancel=cancel,
    )


def cmd_synth(args: argparse.Namespace, ctx: Any) -> int:
    args.synth_source = args.labels
    manifest = synth_dataset(args, args.output, ctx.progress, ctx.cancel)
    if ctx.progress_mode != "json":
        print(f"wrote {manifest}")
    return 0


def cmd_phantoms(args: argparse.Namespace, ctx: Any) -> int:
    from repux.config import spacing_from
    from repux.data.phantom import write_phantom_dataset
    from repux.labels import LabelSet

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
    from repux.data.check import check_dataset
    from repux.data.datasets import load_dataset

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
