"""Inference sub-commands: ``segment``, ``models``, ``demo``, ``benchmark``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from repux.cli.options import (
    add_common,
    add_device_options,
    add_output_option,
    add_overwrite_option,
    add_window_options,
    csv_floats,
    model_id,
    non_negative_int,
    positive_int,
    shard_spec,
)
from repux.errors import ConfigError

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")
#: --format values (same table as repux.inference.batch.FORMATS, kept here so --help needs no heavy import)
OUTPUT_FORMATS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom-seg": ".dcm"}
DEFAULT_MAX_VOXELS = 600_000_000


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The sliding window (MONAI's names) and the hardware options of every inference command."""
    g = add_window_options(p)
    add_device_options(g)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment CT volumes (files, DICOM folders, whole cohorts) into organs",
        description="Segments a CT and writes a label map in the input's exact voxel grid: .seg.nrrd (3D Slicer segmentation with names, "
        "colours and terminology), .nii.gz, .nrrd, .mha or a DICOM SEG (.dcm, DICOM inputs). With several inputs, a folder tree or "
        "@list.txt and an output folder, it segments a cohort with the model loaded once (resumable; see --shard for SLURM arrays and torchrun).",
    )
    p.add_argument(
        "-i",
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="CT image (.nii.gz, .nrrd, .mha, ...) or DICOM series folder; several paths, a folder tree (one case per image file "
        "and per DICOM series) or @list.txt (one path per line) for a batch",
    )
    add_output_option(
        p,
        help="output file (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha, .dcm), or a folder for a batch: each case writes FOLDER/<case>.<ext> "
        "and the report FOLDER/repux-batch.json/.csv",
    )
    p.add_argument(
        "--format",
        choices=tuple(OUTPUT_FORMATS),
        help="output format (default: from the output file name, else seg.nrrd); dicom-seg needs DICOM inputs",
    )
    p.add_argument("-m", "--model", default=None, help="installed model id or model folder (default: the built-in demo model)")
    p.add_argument("--series-uid", help="DICOM Series Instance UID when the folder holds several series (default: the largest)")
    p.add_argument(
        "--organs",
        metavar="NAME,NAME",
        help="only these organs of the model (comma-separated names, case-insensitive; default: all); the others become background",
    )
    p.add_argument("--statistics", action="store_true", help="per-organ volume and HU statistics: CSV + JSON beside each output (and a cohort CSV)")
    p.add_argument(
        "--shard",
        type=shard_spec,
        metavar="I/N",
        help="only the deterministic I-th of N parts of the cases (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; "
        "under torchrun each rank takes its part on its own GPU automatically",
    )
    add_overwrite_option(p, help="batch: redo cases whose output exists (default: skip them, so a rerun resumes)")
    p.add_argument("--largest-component", action="store_true", help="keep each organ's largest connected component")
    p.add_argument("--uncertainty", metavar="PATH", help="also write the voxel-wise normalised entropy (0..1) to PATH (single case)")
    p.add_argument("--summary", metavar="PATH", help="write a JSON summary (organ volumes, timings, device, model) (single case)")
    p.add_argument(
        "--roi-ras",
        type=csv_floats(6, "r0,a0,s0,r1,a1,s1 (RAS mm)"),
        metavar="R0,A0,S0,R1,A1,S1",
        help="only process this box (RAS mm); write --roi-ras=... when R0 is negative",
    )
    p.add_argument(
        "--point",
        action="append",
        type=csv_floats(3, "R,A,S (RAS mm)"),
        metavar="R,A,S",
        help="only the organ(s) under these points (RAS mm, repeatable): each point keeps the connected part of the organ "
        "containing it, as a click in the session (repux session); a point on background or outside the volume is an error "
        "and nothing is written; write --point=... when R is negative",
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
    q.add_argument("model_id", type=model_id)
    add_overwrite_option(q, help="replace an installed model with the same id")
    add_common(q)
    q.set_defaults(func=cmd_models_install)
    q = msub.add_parser("import", help="install a model folder or .zip")
    q.add_argument("source", help="model folder or zip")
    q.add_argument("--id", dest="model_id", type=model_id, help="install under this id")
    add_overwrite_option(q, help="replace an installed model with the same id")
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_import)
    q = msub.add_parser("remove", help="delete an installed model")
    q.add_argument("model_id", type=model_id)
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_remove)
    q = msub.add_parser("path", help="print the store folder, or a model's folder")
    q.add_argument("model_id", nargs="?", type=model_id)
    add_common(q, progress=False)
    q.set_defaults(func=cmd_models_path)

    p = sub.add_parser(
        "demo",
        help="segment a synthetic abdominal CT phantom with the built-in model (no download) and write a PNG overlay",
    )
    add_output_option(p, help="output folder (default: ./repux-demo)", required=False, default="repux-demo", metavar="FOLDER")
    p.add_argument("--seed", type=non_negative_int, default=7, help="phantom seed (default: 7)")
    p.add_argument("-m", "--model", default=None, help="model to use (default: the built-in demo model)")
    add_inference_options(p)
    add_common(p)
    p.set_defaults(func=cmd_demo)


def _check_output(path: str) -> Path:
    p = Path(path)
    if not p.name.lower().endswith(OUTPUT_SUFFIXES):
        raise ConfigError(f"--output {path!r}: unsupported file type; use one of {', '.join(OUTPUT_SUFFIXES)}, or a folder for a batch.")
    if p.exists() and p.is_dir():
        raise ConfigError(f"--output {path!r} is a folder; give a file name such as {p / 'segmentation.seg.nrrd'}.")
    return p


def _is_batch(args: argparse.Namespace) -> bool:
    """Several inputs, an @list, or an output that is (or names) a folder."""
    if len(args.input) > 1 or any(str(i).startswith("@") for i in args.input):
        return True
    out = str(args.output)
    p = Path(out)
    return p.is_dir() or out.endswith(("/", "\\")) or not p.suffix


def segmenter_from_args(
    args: argparse.Namespace,
    model: str | None,
    uncertainty: bool = False,
    largest_component: bool = False,
    max_voxels: int | None = None,
    organs: str | None = None,
    device: str | None = None,
):
    from repux.cli.validate import model_card
    from repux.inference.segmenter import Segmenter
    from repux.models.store import DEFAULT_MODEL

    return Segmenter(
        model_card(args, model or DEFAULT_MODEL),  # model.json read once per command line
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


def _check_organs(args: argparse.Namespace) -> None:
    """--organs against the model card (light: no torch, no weights read)."""
    if not args.organs:
        return
    from repux.cli.validate import model_card
    from repux.labels import resolve_organs
    from repux.models.store import DEFAULT_MODEL

    resolve_organs(model_card(args, args.model or DEFAULT_MODEL).labels, args.organs)


def cmd_segment(args: argparse.Namespace, ctx: Any) -> int:
    # argument and path checks first: no heavy import, no model load for a bad command line
    _check_organs(args)
    shard = args.shard  # (I, N), parsed by options.shard_spec
    if _is_batch(args):
        if getattr(args, "point", None):
            raise ConfigError("--point is for a single case: give one input and an output file.")
        return _cmd_segment_batch(args, ctx, shard)
    if shard is not None:
        raise ConfigError("--shard splits a batch: give several inputs, a folder tree or @list.txt and an output folder.")
    if getattr(args, "point", None):
        return _cmd_segment_points(args, ctx)
    return _cmd_segment_one(args, ctx)


def _cmd_segment_points(args: argparse.Namespace, ctx: Any) -> int:
    """``--point``: the organ components under the points (as session clicks), written only when every point hits an organ."""
    from repux.inference.batch import format_for_output, write_result

    out = _check_output(args.output)
    fmt = format_for_output(out, args.format)
    for opt, why in (("uncertainty", "--uncertainty"), ("roi_ras", "--roi-ras"), ("organs", "--organs"), ("largest_component", "--largest-component")):
        if getattr(args, opt, None):
            raise ConfigError(f"{why} does not go with --point: the points choose the organs and their connected parts.")
    if fmt == "dicom-seg":
        raise ConfigError("--point writes .seg.nrrd, .nii.gz, .nrrd or .mha (not DICOM SEG).")
    from repux.inference.segmenter import SegmentationResult, label_counts
    from repux.inference.session import check_points_inside, segment_points
    from repux.io.images import read_image

    image = read_image(args.input[0], args.series_uid)
    check_points_inside(image, args.point)  # before the model is loaded
    seg = segmenter_from_args(args, args.model, max_voxels=args.max_voxels)
    labels, clicks = segment_points(seg, image, [list(p) for p in args.point], progress=ctx.progress, cancel=ctx.cancel)
    ctx.cancel.check()
    import SimpleITK as sitk

    spacing = labels.GetSpacing()
    counts = label_counts(sitk.GetArrayViewFromImage(labels), seg.model_labels.num_classes)
    voxel_ml = float(spacing[0] * spacing[1] * spacing[2]) / 1000.0
    organs = sorted({c.organ for c in clicks if c.organ}, key=seg.model_labels.names.index)
    summary = {
        "points": [{"ras": list(p), "organ": c.organ, "index": list(c.index or ())} for p, c in zip(args.point, clicks)],
        "volumes_ml": {name: round(float(counts[seg.model_labels.find(name).value]) * voxel_ml, 2) for name in organs},
        "device": str(seg.device),
    }
    result = SegmentationResult(labels, seg.model_labels, summary)
    write_result(result, out, "nii.gz" if fmt == "nii" else fmt)
    outputs = {"labels": str(out)}
    if args.summary:
        from repux.io.images import atomic_path

        with atomic_path(args.summary) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        outputs["summary"] = str(args.summary)
    if ctx.progress:
        from repux.progress import ProgressEvent

        ctx.progress(ProgressEvent("done", 1.0, f"wrote {out}", 0.0, {"outputs": outputs, "volumes_ml": summary["volumes_ml"], "summary": summary}))
    if ctx.progress_mode != "json":
        print(f"wrote {out} ({', '.join(f'{k} {v:.0f} mL' for k, v in summary['volumes_ml'].items())})")
    return 0


def _cmd_segment_one(args: argparse.Namespace, ctx: Any) -> int:
    from repux.inference.batch import format_for_output

    out = _check_output(args.output)
    fmt = format_for_output(out, args.format)
    source = args.input[0]
    unc_path = Path(args.uncertainty) if args.uncertainty else None
    if unc_path is not None and not unc_path.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        raise ConfigError(f"--uncertainty {args.uncertainty!r}: use a .nii.gz, .nii, .nrrd or .mha file name.")
    source_files = None
    if fmt == "dicom-seg":
        from repux.io.dicomseg import dicom_source_files

        if not Path(source).exists():
            from repux.errors import InputImageError

            raise InputImageError(f"input {source!r} does not exist.")
        source_files = dicom_source_files(source, args.series_uid)
    roi = list(args.roi_ras) if args.roi_ras else None
    seg = segmenter_from_args(
        args, args.model, uncertainty=unc_path is not None, largest_component=args.largest_component, max_voxels=args.max_voxels, organs=args.organs
    )
    result = seg.segment(source, series_uid=args.series_uid, roi_ras=roi, progress=ctx.progress, cancel=ctx.cancel)
    ctx.cancel.check()
    if ctx.progress:
        from repux.progress import ProgressEvent

        ctx.progress(ProgressEvent("write", 0.97, f"writing {out.name}", 0.0))
    from repux.inference.batch import write_result
    from repux.io.images import write_image

    write_result(result, out, "nii.gz" if fmt == "nii" else fmt, source_files=source_files)
    outputs = {"labels": str(out)}
    if unc_path is not None and result.uncertainty is not None:
        write_image(result.uncertainty, unc_path)
        outputs["uncertainty"] = str(unc_path)
    if args.statistics:
        from repux.inference.statistics import write_statistics

        csv_p, json_p = write_statistics(result.statistics(), out, {"input": str(source), "output": str(out)})
        outputs.update(statistics_csv=str(csv_p), statistics_json=str(json_p))
    result.summary["outputs"] = outputs
    result.summary["input"] = str(source)
    if args.summary:
        from repux.io.images import atomic_path

        with atomic_path(args.summary) as tmp:
            tmp.write_text(json.dumps(result.summary, indent=2) + "\n")
        outputs["summary"] = str(args.summary)
    if ctx.progress:
        from repux.progress import ProgressEvent

        ctx.progress(
            ProgressEvent("done", 1.0, f"wrote {out}", 0.0, {"outputs": outputs, "volumes_ml": result.summary["volumes_ml"], "summary": result.summary})
        )
    if ctx.progress_mode != "json":
        vols = ", ".join(f"{k} {v:.0f} mL" for k, v in result.summary["volumes_ml"].items())
        t = sum(result.summary["timings_s"].values())
        print(f"wrote {out} in {t:.1f} s on {result.summary['device']} ({vols})")
    return 0


def _cmd_segment_batch(args: argparse.Namespace, ctx: Any, shard: tuple[int, int] | None) -> int:
    import sys

    from repux.inference.batch import expand_inputs, report_paths, run_batch, shard_from_env, torchrun_device

    out = Path(args.output)
    fmt = args.format or "seg.nrrd"
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--output {args.output!r} is a file; with several cases --output is a folder (each case writes <folder>/<case>{OUTPUT_FORMATS[fmt]})."
        )
    for opt in ("uncertainty", "summary", "series_uid"):
        if getattr(args, opt):
            raise ConfigError(
                f"--{opt.replace('_', '-')} is for a single case; a batch writes one report (repux-batch.json) and, with --statistics, per-case statistics."
            )
    expand_inputs(args.input)  # a missing @list fails here, before the model is loaded
    device = args.device
    if shard is None:
        shard = shard_from_env()
        if shard is not None:
            device = torchrun_device(args.device)
            logger.info("torchrun rank %d of %d: shard %d/%d on %s", shard[0], shard[1], shard[0], shard[1], device)
    seg = segmenter_from_args(args, args.model, largest_component=args.largest_component, max_voxels=args.max_voxels, organs=args.organs, device=device)
    case_bar = None
    if ctx.progress_mode == "bar":
        from tqdm import tqdm

        case_bar = tqdm(total=100, desc="case", unit="%", position=1, leave=False, file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def progress(ev: Any) -> None:
        if ctx.progress is not None:
            ctx.progress(ev)
        if case_bar is not None and "case_fraction" in ev.extra:
            case_bar.n = int(ev.extra["case_fraction"] * 100)
            case_bar.set_description_str(f"case {ev.extra['case_index']}/{ev.extra['case_count']} {ev.extra['case']}"[:40])
            case_bar.refresh()

    counts: dict[str, int] = {}
    try:
        for r in run_batch(
            seg,
            args.input,
            out,
            format=fmt,
            overwrite=args.overwrite,
            shard=shard,
            statistics=args.statistics,
            roi_ras=list(args.roi_ras) if args.roi_ras else None,
            progress=progress,
            cancel=ctx.cancel,
        ):
            counts[r.status] = counts.get(r.status, 0) + 1
            if r.status != "failed" and ctx.progress_mode not in ("json", "bar"):  # failures: one ERROR line logged by the batch
                extra = f" in {r.seconds:.1f} s" if r.status == "done" else ""
                print(f"{r.status} {r.name}: {r.output}{extra}", flush=True)
    finally:
        if case_bar is not None:
            case_bar.close()
    report = report_paths(out, shard)[0]
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no cases"
    if ctx.progress:
        from repux.progress import ProgressEvent

        ctx.progress(ProgressEvent("done", 1.0, f"batch finished: {summary}", 0.0, {"report": str(report), "counts": counts}))
    if ctx.progress_mode != "json":
        print(f"batch finished: {summary}; report {report}")
    failed = counts.get("failed", 0)
    if failed:
        print(f"repux: error: {failed} of {sum(counts.values())} cases failed; see {report}", file=sys.stderr)
        return 1
    return 0


def cmd_models_list(args: argparse.Namespace, ctx: Any) -> int:
    from repux.models.store import ModelStore, list_models

    store = ModelStore()
    rows = list_models(store)
    if args.json:
        print(json.dumps({"store": str(store.root), "models": rows}, indent=2))
        return 0
    print(f"model store: {store.root}")
    for r in rows:
        if r["status"] != "official":
            print(f"  {r['id']:<32} {r['version']:<8} {r['status']:<13} {r['size_mb']:>7.1f} MB  {', '.join(r['labels'])}")
    if not any(r["status"] == "downloadable" for r in rows):
        print("No model can be downloaded from the catalog: import a model folder or .zip with 'repux models import', or an official checkpoint (below).")
    official = [r for r in rows if r["status"] == "official"]
    if official:
        print("official RepUX-Net checkpoints (not downloadable: get the .pth file from the official repository, then import it):")
        for r in official:
            print(f"  {r['id']:<32} {len(r['labels'])} organs: {', '.join(r['labels'])}")
            print(f"    get it from {r['source']}; import: {r['import_command']}")
    return 0


def _download_progress(ctx: Any, model_id: str):
    from repux.progress import ProgressEvent

    if ctx.progress is None:
        return None

    def cb(done: int, total: int) -> None:
        frac = done / total if total else 0.0
        ctx.progress(ProgressEvent("download", frac * 0.95, f"{model_id}: {done / 1e6:.1f}/{total / 1e6:.1f} MB", None, {"bytes": done, "total_bytes": total}))

    return cb


def cmd_models_install(args: argparse.Namespace, ctx: Any) -> int:
    from repux.models.store import ModelStore

    card = ModelStore().install(args.model_id, progress=_download_progress(ctx, args.model_id), cancel=ctx.cancel, replace=args.overwrite)
    print(f"installed {card.id} {card.version} in {card.path}")
    return 0


def cmd_models_import(args: argparse.Namespace, ctx: Any) -> int:
    from repux.models.store import ModelStore

    card = ModelStore().import_model(args.source, model_id=args.model_id, replace=args.overwrite)
    print(f"installed {card.id} {card.version} in {card.path}")
    return 0


def cmd_models_remove(args: argparse.Namespace, ctx: Any) -> int:
    from repux.models.store import ModelStore

    path = ModelStore().remove(args.model_id)
    print(f"removed {args.model_id} ({path})")
    return 0


def cmd_models_path(args: argparse.Namespace, ctx: Any) -> int:
    from repux.models.store import ModelStore

    store = ModelStore()
    print(store.path(args.model_id) if args.model_id else store.root)
    return 0


def cmd_demo(args: argparse.Namespace, ctx: Any) -> int:
    from repux.tools.demo import run_demo

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
