"""``repux benchmark``: speed and memory of RepUX's fast paths against the paper's recipe."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError


def register(sub: Any) -> None:
    from .main import add_common

    p = sub.add_parser(
        "benchmark",
        help="time and peak memory: fast paths vs the paper's reference recipe (per window, per training step, whole volume)",
        description="Each configuration runs in a fresh process; the reference recipe is fp32, PyTorch's own 21^3 convolution, "
        "overlap 0.7, sw_batch_size 4, no body crop (the official test script). Ratios and output differences are printed.",
    )
    p.add_argument("--presets", default="base,small,tiny", help="comma-separated presets for the window and training sections (default: base,small,tiny)")
    p.add_argument("--sections", default="window,train,volume", help="any of window,train,volume (default: all)")
    p.add_argument("--input", help="CT for the whole-volume section (default: none, section skipped)")
    p.add_argument("-m", "--model", help="model for the whole-volume section (default: the built-in model)")
    p.add_argument("--roi", type=int, default=96, help="window size for inference (default: 96)")
    p.add_argument("--train-roi", type=int, default=64, help="crop size of the training step (default: 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration, after one warm-up (default: 3)")
    p.add_argument("--train-repeats", type=int, default=2, help="timed training steps (default: 2)")
    p.add_argument("--reference-batch", type=int, default=4, help="windows per call in the reference recipe (its sw_batch_size; default: 4)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON to this file")
    add_common(p)
    p.set_defaults(func=cmd_benchmark, cancel_grace=5.0)


def cmd_benchmark(args: argparse.Namespace, ctx: Any) -> int:
    from ..benchmark import format_report, run_benchmark
    from ..imageio import atomic_path
    from ..nn import PRESETS
    from ..store import DEFAULT_MODEL

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise ConfigError(f"--presets: unknown {bad}; choose from {', '.join(PRESETS)}.")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if set(sections) - {"window", "train", "volume"}:
        raise ConfigError(f"--sections must be a subset of window,train,volume; got {args.sections!r}.")
    report = run_benchmark(
        presets=presets,
        device=args.device,
        sections=sections,
        roi=args.roi,
        train_roi=args.train_roi,
        repeats=args.repeats,
        train_repeats=args.train_repeats,
        input_path=args.input,
        model=args.model or DEFAULT_MODEL,
        threads=args.threads,
        reference_batch=args.reference_batch,
        progress=ctx.progress,
    )
    report["command"] = "repux benchmark " + " ".join(__import__("shlex").quote(a) for a in __import__("sys").argv[2:])
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if ctx.progress_mode != "json":
        print(format_report(report))
    return 0
