"""Training sub-commands: ``train``, ``finetune``, ``evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from repux.cli.options import (
    add_common,
    add_device_options,
    add_output_option,
    click_counts,
    click_limit,
    csv_floats,
    duration,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    roi_size,
)
from repux.errors import ConfigError

logger = logging.getLogger(__name__)

#: a cancelled training run finishes its iteration and writes a checkpoint before exiting
TRAIN_CANCEL_GRACE_S = 600.0


def _add_train_options(p: argparse.ArgumentParser, finetune: bool) -> None:
    src = p.add_mutually_exclusive_group(required=True) if not finetune else p
    src.add_argument("--dataset", required=finetune, help="dataset folder: repux-dataset.json, MSD dataset.json or nnU-Net v2 raw")
    if not finetune:
        src.add_argument(
            "--synth",
            metavar="LABELMAP_FOLDER",
            help="train on synthetic CTs rendered from these label maps (into <run-dir>/synth; see 'repux synth')",
        )
    add_output_option(p, help="new model: a folder path, or an id (no slashes) to create it in the model store", metavar="MODEL")
    p.add_argument("--name", default="", help="human-readable model name stored in model.json")
    p.add_argument("--description", default="", help="model description stored in model.json")
    p.add_argument("--run-dir", help="folder for the resumable checkpoint and logs (default: <store>/runs/<model id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument(
        "--weights-dtype", choices=("float32", "float16"), default="float32", help="dtype of the exported weights (float16 halves the file; default: float32)"
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--max-iterations", type=positive_int, default=300 if finetune else 1000, help="iterations (default: %(default)s)")
    g.add_argument("--time-budget", type=duration, help="stop after this long, e.g. 900, 15m, 1.5h (the best model so far is exported)")
    g.add_argument("--lr", type=positive_float, default=2e-4 if finetune else 1e-3, help="peak AdamW learning rate (default: %(default)g)")
    g.add_argument("--weight-decay", type=non_negative_float, default=1e-5, help="AdamW weight decay (default: %(default)g)")
    g.add_argument(
        "--warmup", type=non_negative_int, default=20 if finetune else 50, help="linear warm-up iterations before the cosine decay (default: %(default)s)"
    )
    g.add_argument("--batch-size", type=positive_int, default=2, help="random crops per iteration from one case (default: 2, the official recipe)")
    g.add_argument("--grad-accumulation", type=positive_int, default=1, help="iterations whose gradients are summed before a step (default: 1)")
    g.add_argument("--roi-size", type=roi_size, help="crop/window size, multiple of 16 (default: 96, or the base model's)")
    g.add_argument("--val-interval", type=positive_int, default=50 if finetune else 100, help="validate every N iterations (default: %(default)s)")
    g.add_argument("--val-fraction", type=open_fraction, default=0.2, help="fraction of cases held out when the dataset has no split (default: 0.2)")
    g.add_argument("--checkpoint-interval", type=positive_int, default=25, help="write the resumable checkpoint every N iterations (default: 25)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    g.add_argument("--augmentation", choices=("none", "standard", "strong"), default="strong" if finetune else "standard")
    g.add_argument(
        "--crop-sampling",
        choices=("posneg", "classes"),
        default="classes" if finetune else "posneg",
        help="posneg: half the crops on any organ (official); classes: every class equally often (helps small organs)",
    )
    if finetune:
        g.add_argument("--freeze-encoder", type=non_negative_int, default=0, metavar="K", help="freeze the large-kernel encoder for the first K iterations")
        g.add_argument(
            "--head-lr-scale",
            type=positive_float,
            default=10.0,
            help="learning-rate factor of the output head, where new organs start from scratch (default: 10)",
        )
    else:
        g.add_argument("--preset", default="tiny", help="network preset: base (the paper), small, tiny (default: tiny)")
        g.add_argument(
            "--spacing", type=csv_floats(3, "x,y,z (mm)", positive=True), help="model grid spacing x,y,z in mm (default: 1.5,1.5,2.0, the official AMOS recipe)"
        )
        g.add_argument(
            "--kernel-mode", choices=("bfr", "plain"), default="bfr", help="bfr: Bayesian frequency re-parameterized kernels (default); plain: ablation"
        )
        from repux.cli.commands_data import add_synth_options

        add_synth_options(p)
    c = p.add_argument_group("click guidance")
    c.add_argument(
        "--interactive",
        action="store_true",
        help="train click-guidance input channels with simulated clicks (one heatmap per class; new weights start at zero, so without "
        "clicks the network is the automatic one): clicks on about half of the iterations, drawn from the current prediction's errors; "
        "clicks recorded with curated cases (RepUX Trainer) are placed first",
    )
    c.add_argument("--max-clicks", type=click_limit, default=10, help="most simulated clicks per training crop with --interactive (default: 10)")
    h = add_device_options(p, algorithm=False)
    h.add_argument("--cache", choices=("memory", "disk", "none"), default="memory", help="cache preprocessed cases (default: memory)")
    h.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory, ~30%% slower)")
    h.add_argument("--channels-last", action="store_true", help="channels-last-3d memory format (faster convolution backward on many CPUs)")
    h.add_argument("--algorithm", default="auto", choices=("auto", "direct", "fft", "native"), help="large-kernel convolution algorithm (default: auto)")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a RepUX-Net from scratch on a dataset",
        description="Trains with BFR large kernels (W * BFM), DiceCE, AdamW + warm-up/cosine, sliding-window validation, "
        "resumable atomic checkpoints; exports the best model (deploy form) as a model folder. "
        "Multi-GPU/multi-node: torchrun --nproc_per_node N -m repux train ...",
    )
    _add_train_options(p, finetune=False)
    add_common(p)
    p.set_defaults(func=cmd_train, cancel_grace=TRAIN_CANCEL_GRACE_S)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on a (small) dataset; organs may be added or dropped",
        description="Starts from a model folder (deploy weights are un-folded exactly: W = W_eff / BFM); shared organs keep their "
        "output channels, new organs get new ones, dropped organs are removed. The result is a new model; the base is never overwritten.",
    )
    p.add_argument("--base", required=True, help="base model: installed id or model folder")
    _add_train_options(p, finetune=True)
    add_common(p)
    p.set_defaults(func=cmd_finetune, cancel_grace=TRAIN_CANCEL_GRACE_S)

    p = sub.add_parser("evaluate", help="per-case, per-organ Dice and HD95 of a model on a dataset (CSV + JSON + table)")
    p.add_argument("-m", "--model", required=True, help="installed model id or model folder")
    p.add_argument("--dataset", required=True, help="dataset folder")
    p.add_argument("--split", help="only cases of this split (train, val, test)")
    add_output_option(
        p, help="report prefix: writes PREFIX.csv and PREFIX.json (default: ./evaluation)", required=False, default="evaluation", metavar="PREFIX"
    )
    p.add_argument("--overlap", type=open_fraction, help="sliding-window overlap in [0, 1) (default: the model's)")
    p.add_argument(
        "--clicks",
        type=click_counts,
        metavar="N,N,...",
        help="also simulate clicks (a model with click guidance): per organ, each click at the deepest voxel of the largest error "
        "region; Dice after these numbers of clicks (e.g. 0,1,3,5,10) and NoC@85 / NoC@90, on the model grid",
    )
    add_device_options(p, precision=False, algorithm=False)
    add_common(p)
    p.set_defaults(func=cmd_evaluate)


def _resolve_out(out: str, overwrite_check: bool = True) -> tuple[Path, str, bool]:
    """(folder, model id, in_store)."""
    from repux.models.store import ModelStore

    if "/" in out or "\\" in out or out.startswith("."):
        p = Path(out)
        return p, p.name, False
    from repux.models.ids import check_model_id

    check_model_id(out, "--output")
    store = ModelStore()
    return store.models_dir / out, out, True


def _run_dir(args: argparse.Namespace, model_id: str) -> Path:
    from repux.models.store import store_root

    return Path(args.run_dir) if args.run_dir else store_root() / "runs" / model_id


def _config_from_args(args: argparse.Namespace, finetune: bool, base_roi=None):
    from repux.config import Preprocessing, spacing_from
    from repux.training.trainer import TrainConfig, parse_duration

    kw: dict[str, Any] = {
        "max_iterations": args.max_iterations,
        "time_budget_s": parse_duration(args.time_budget),
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_iterations": args.warmup,
        "batch_size": args.batch_size,
        "grad_accumulation": args.grad_accumulation,
        "val_interval": args.val_interval,
        "val_fraction": args.val_fraction,
        "checkpoint_interval": args.checkpoint_interval,
        "seed": args.seed,
        "augmentation": args.augmentation,
        "precision": args.precision,
        "cache": args.cache,
        "gradient_checkpointing": args.gradient_checkpointing,
        "channels_last": args.channels_last,
        "crop_sampling": args.crop_sampling,
        "algorithm": args.algorithm,
        "interactive": args.interactive,
        "max_clicks": args.max_clicks,
    }
    if args.roi_size:
        kw["roi_size"] = args.roi_size
    elif base_roi is not None:
        kw["roi_size"] = base_roi
    if finetune:
        kw["freeze_encoder_iterations"] = args.freeze_encoder
        kw["head_lr_scale"] = args.head_lr_scale
    else:
        kw["preset"] = args.preset
        kw["kernel_mode"] = args.kernel_mode
        if args.spacing:
            kw["preprocessing"] = Preprocessing(spacing=spacing_from(list(args.spacing)))
    return TrainConfig(**kw)


def _run_training(args: argparse.Namespace, ctx: Any, finetune: bool) -> int:
    from repux.data.datasets import load_dataset
    from repux.training.trainer import train

    out_dir, model_id, in_store = _resolve_out(args.output)
    dataset = load_dataset(args.dataset) if getattr(args, "dataset", None) else _synth_dataset(args, ctx, _run_dir(args, model_id))
    base_roi = None
    if finetune:
        from repux.models.store import resolve_model

        base_card = resolve_model(args.base)
        if base_card.path is not None and out_dir.resolve() == base_card.path.resolve():
            raise ConfigError(f"--output {args.output!r} is the base model itself; fine-tuning always writes a new model.")
        base_roi = base_card.roi_size
    if in_store:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    config = _config_from_args(args, finetune, base_roi)
    command = "repux " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and sys.argv[0] else None
    result = train(
        dataset,
        out_dir,
        config,
        run_dir=_run_dir(args, model_id),
        base_model=args.base if finetune else None,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        model_id=model_id,
        model_name=args.name,
        description=args.description,
        command=command,
        weights_dtype=args.weights_dtype,
        progress=ctx.progress,
        cancel=ctx.cancel,
    )
    if result.card is not None and ctx.progress_mode != "json":
        dice = ", ".join(f"{k} {v:.3f}" for k, v in result.best_dice.items() if v is not None)
        where = f"model store as '{model_id}'" if in_store else str(result.card.path)
        print(f"{result.iterations} iterations ({result.stopped_by}); best validation Dice: {dice or 'n/a'}; saved to {where}")
    return 0


def _synth_dataset(args: argparse.Namespace, ctx: Any, run_dir: Path) -> Any:
    """The synthetic dataset of ``--synth`` in ``<run-dir>/synth``: rendered by rank 0 (resumable), awaited by the other ranks."""
    import os
    import time

    from repux.cli.commands_data import synth_dataset
    from repux.data.datasets import load_dataset

    folder = run_dir / "synth"
    manifest = folder / "repux-dataset.json"
    args.synth_source = args.synth
    if int(os.environ.get("RANK", "0")) == 0:
        synth_dataset(args, folder, ctx.progress, ctx.cancel)
    else:
        while not manifest.exists():
            if ctx.cancel is not None and ctx.cancel.cancelled:
                raise ConfigError("stopped while waiting for rank 0 to render the synthetic dataset.")
            time.sleep(2.0)
    return load_dataset(folder)


def cmd_train(args: argparse.Namespace, ctx: Any) -> int:
    return _run_training(args, ctx, finetune=False)


def cmd_finetune(args: argparse.Namespace, ctx: Any) -> int:
    return _run_training(args, ctx, finetune=True)


def cmd_evaluate(args: argparse.Namespace, ctx: Any) -> int:
    from repux.data.datasets import load_dataset
    from repux.training.evaluate import evaluate, format_table, write_reports

    if args.clicks:
        from repux.models.store import resolve_model

        if resolve_model(args.model).guidance is None:
            raise ConfigError(f"--clicks needs a model with click guidance; {args.model} has none (train one with repux finetune --interactive).")
    report = evaluate(
        args.model,
        load_dataset(args.dataset),
        split=args.split,
        device=args.device,
        segmenter_kwargs={k: v for k, v in (("overlap", args.overlap), ("threads", args.threads)) if v is not None} or None,
        clicks=args.clicks,
        progress=ctx.progress,
        cancel=ctx.cancel,
    )
    csv_path, json_path = write_reports(report, args.output)
    if ctx.progress_mode == "json":
        print(
            json.dumps(
                {
                    "stage": "done",
                    "fraction": 1.0,
                    "message": "evaluation written",
                    "eta_s": 0.0,
                    "mean": report["mean"],
                    "csv": str(csv_path),
                    "json": str(json_path),
                }
            )
        )
    else:
        print(format_table(report))
        if "clicks" in report:
            from repux.training.evaluate import format_clicks

            print(format_clicks(report))
        print(f"wrote {csv_path} and {json_path}")
    return 0
