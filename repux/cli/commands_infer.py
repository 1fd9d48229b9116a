"""Inference sub-commands: ``segment``, ``models``, ``demo``, ``benchmark``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .options import add_common, add_device_options, add_output_option, add_overwrite_option, add_window_options, csv_floats, positive_int

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
DEFAULT_MAX_VOXELS = 600_000_000


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The sliding window (MONAI's names) and the hardware options of every inference command."""
    g = add_window_options(p)
    add_device_options(g)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment a CT volume (file or DICOM folder) into organs",
        description="Segments a CT and writes a label map in the input's exact voxel grid: .seg.nrrd (3D Slicer segmentation with names, "
        "colours and terminology), .nii.gz, .nrrd or .mha.",
    )
    p.add_argument("-i", "--input", required=True, help="CT image (.nii.gz, .nrrd, .mha, ...) or DICOM series folder")
    add_output_option(p, help="output label map: .seg.nrrd, .nii.gz, .nii, .nrrd or .mha")
    p.add_argument("-m", "--model", default=None, help="installed model id or model folder (default: the built-in demo model)")
    p.add_argument("--series-uid", help="DICOM Series Instance UID when the folder holds several series (default: the largest)")
    p.add_argument(
        "--organs",
        metavar="NAME,NAME",
        help="only these organs of the model (comma-separated names, case-insensitive; default: all); the others become background",
    )
    p.add_argument("--largest-component", action="store_true", help="keep each organ's largest connected component")
    p.add_argument("--uncertainty", metavar="PATH", help="also write the voxel-wise normalised entropy (0..1) to PATH")
    p.add_argument("--summary", metavar="PATH", help="write a JSON summary (organ volumes, timings, device, model)")
    p.add_argument(
        "--roi-ras",
        type=csv_floats(6, "r0,a0,s0,r1,a1,s1 (RAS mm)"),
        metavar="R0,A0,S0,R1,A1,S1",
        help="only process this box (RAS mm); write --roi-ras=... when R0 is negative",
    )
    p.add_argument("--max-voxels", type=positive_int, default=DEFAULT_MAX_VOXELS, help=f"refuse larger inputs (default: {DEFAULT_MAX_VOXELS:,})")
    add_inference_options(p)
    add_common(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("models", help="list, install, import, remove models; show the store folder")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True
    q = msub.add_parser("list", help="installed, built-in and downloadable models")
    q.add_argument("--json", action="store_true", help="print JSON")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_list)
    q = msub.add_parser("install", help="download a catalog model (resumable, sha256-verified)")
    q.add_argument("model_id")
    add_overwrite_option(q, help="replace an installed model with the same id")
    add_common(q)
    q.set_defaults(func=cmd_models_install)
    q = msub.add_parser("import", help="install a model folder or .zip")
    q.add_argument("source", help="model folder or zip")
    q.add_argument("--id", dest="model_id", help="install under this id")
    add_overwrite_option(q, help="replace an installed model with the same id")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_import)
    q = msub.add_parser("remove", help="delete an installed model")
    q.add_argument("model_id")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_remove)
    q = msub.add_parser("path", help="print the store folder, or a model's folder")
    q.add_argument("model_id", nargs="?")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_path)

    p = sub.add_parser(
        "demo",
        help="segment a synthetic abdominal CT phantom with the built-in model (no download) and write a PNG overlay",
    )
    add_output_option(p, help="output folder (default: ./repux-demo)", required=False, default="repux-demo", metavar="FOLDER")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default: 7)")
    p.add_argument("-m", "--model", default=None, help="model to use (default: the built-in demo model)")
    add_inference_options(p)
    add_common(p)
    p.set_defaults(func=cmd_demo)


def _check_output(path: str) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(OUTPUT_SUFFIXES):
        raise ConfigError(f"--output {path!r}: unsupported file type; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    if p.exists() and p.is_dir():
        raise ConfigError(f"--output {path!r} is a folder; give a file name such as {p / 'segmentation.seg.nrrd'}.")
    return p


def segmenter_from_args(
    args: argparse.Namespace,
    model: str | None,
    uncertainty: bool = False,
    largest_component: bool = False,
    max_voxels: int | None = None,
    organs: str | None = None,
    device: str | None = None,
):
    from ..inference import Segmenter
    from ..store import DEFAULT_MODEL

    return Segmenter(
        model or DEFAULT_MODEL,
        device=device or args.device,
        quality=args.quality,
        overlap=args.overlap,
        roi_size=args.roi_size,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        precision=args.precision,
        threads=args.threads,
        largest_component=largest_component,
        uncertainty=uncertainty,
        max_voxels=max_voxels,
        algorithm=args.algorithm,
        crop_foreground=False if args.no_crop else None,
        organs=organs,
    )


def cmd_segment(args: argparse.Namespace, ctx: Any) -> int:
    from ..imageio import write_image

    out = _check_output(args.output)
    unc_path = Path(args.uncertainty) if args.uncertainty else None
    if unc_path is not None and not unc_path.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        raise ConfigError(f"--uncertainty {args.uncertainty!r}: use a .nii.gz, .nii, .nrrd or .mha file name.")
    roi = list(args.roi_ras) if args.roi_ras else None
    seg = segmenter_from_args(args, args.model, uncertainty=unc_path is not None, largest_component=args.largest_component, max_voxels=args.max_voxels, organs=args.organs)
    result = seg.segment(args.input, series_uid=args.series_uid, roi_ras=roi, progress=ctx.progress, cancel=ctx.cancel)
    ctx.cancel.check()
    if ctx.progress:
        from ..progress import ProgressEvent

        ctx.progress(ProgressEvent("write", 0.97, f"writing {out.name}", 0.0))
    result.save(out)
    outputs = {"labels": str(out)}
    if unc_path is not None and result.uncertainty is not None:
        write_image(result.uncertainty, unc_path)
        outputs["uncertainty"] = str(unc_path)
    result.summary["outputs"] = outputs
    result.summary["input"] = str(args.input)
    if args.summary:
        from ..imageio import atomic_path

        with atomic_path(args.summary) as tmp:
            tmp.write_text(json.dumps(result.summary, indent=2) + "\n")
        outputs["summary"] = str(args.summary)
    if ctx.progress:
        from ..progress import ProgressEvent

        ctx.progress(
            ProgressEvent("done", 1.0, f"wrote {out}", 0.0, {"outputs": outputs, "volumes_ml": result.summary["volumes_ml"], "summary": result.summary})
        )
    if ctx.progress_mode != "json":
        vols = ", ".join(f"{k} {v:.0f} mL" for k, v in result.summary["volumes_ml"].items())
        t = sum(result.summary["timings_s"].values())
        print(f"wrote {out} in {t:.1f} s on {result.summary['device']} ({vols})")
    return 0


def cmd_models_list(args: argparse.Namespace, ctx: Any) -> int:
    from ..store import ModelStore, list_models

    store = ModelStore()
    rows = list_models(store)
    if args.json:
        print(json.dumps({"store": str(store.root), "models": rows}, indent=2))
        return 0
    print(f"model store: {store.root}")
    for r in rows:
        print(f"  {r['id']:<32} {r['version']:<8} {r['status']:<13} {r['size_mb']:>7.1f} MB  {', '.join(r['labels'])}")
    return 0


def _download_progress(ctx: Any, model_id: str):
    from ..progress import ProgressEvent

    if ctx.progress is None:
        return None

    def cb(done: int, total: int) -> None:
        frac = done / total if total else 0.0
        ctx.progress(ProgressEvent("download", frac * 0.95, f"{model_id}: {done / 1e6:.1f}/{total / 1e6:.1f} MB", None, {"bytes": done, "total_bytes": total}))

    return cb


def cmd_models_install(args: argparse.Namespace, ctx: Any) -> int:
    from ..store import ModelStore

    card = ModelStore().install(args.model_id, progress=_download_progress(ctx, args.model_id), cancel=ctx.cancel, replace=args.overwrite)
    print(f"installed {card.id} {card.version} in {card.path}")
    return 0


def cmd_models_import(args: argparse.Namespace, ctx: Any) -> int:
    from ..store import ModelStore

    card = ModelStore().import_model(args.source, model_id=args.model_id, replace=args.overwrite)
    print(f"installed {card.id} {card.version} in {card.path}")
    return 0


def cmd_models_remove(args: argparse.Namespace, ctx: Any) -> int:
    from ..store import ModelStore

    path = ModelStore().remove(args.model_id)
    print(f"removed {args.model_id} ({path})")
    return 0


def cmd_models_path(args: argparse.Namespace, ctx: Any) -> int:
    from ..store import ModelStore

    store = ModelStore()
    print(store.path(args.model_id) if args.model_id else store.root)
    return 0


def cmd_demo(args: argparse.Namespace, ctx: Any) -> int:
    from ..demo import run_demo

    report = run_demo(
        Path(args.output),
        seed=args.seed,
        segmenter_factory=lambda model: segmenter_from_args(args, model),
        model=args.model,
        progress=ctx.progress,
        cancel=ctx.cancel,
    )
    if ctx.progress_mode != "json":
        print(report["text"])
    return 0
