"""``repux benchmark``: speed and memory of RepUX's fast paths against the paper's recipe."""

from __future__ import annotations

import argparse
import json
from typing import Any

from repux.cli.options import add_common, add_device_options, add_output_option, positive_int, roi_size
from repux.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time and peak memory: fast paths vs the paper's reference recipe (per window, per training step, whole volume)",
        description="Each configuration runs in a fresh process; the reference recipe is fp32, PyTorch's own 21^3 convolution, "
        "overlap 0.7, sw_batch_size 4, no body crop (the official test script). Ratios and output differences are printed.",
    )
    p.add_argument("--presets", default="base,small,tiny", help="comma-separated presets for the window and training sections (default: base,small,tiny)")
    p.add_argument(
        "--sections",
        default="window,train,volume",
        help="any of window,train,volume,memory,batch,interactive (default: window,train,volume); memory: peak RSS of a whole large CT "
        "with the built-in model and a random-weights base model; batch: per-case wall vs network time of a cohort; interactive: "
        "click-to-segment session open, cold and warm click on a synthetic CT of --memory-size voxels (built-in model)",
    )
    p.add_argument(
        "--memory-size",
        default="512,512,1000",
        metavar="X,Y,Z",
        help="voxels of the synthetic CT of the memory section (0.75x0.75x1 mm; default: 512,512,1000)",
    )
    p.add_argument(
        "--network-windows",
        type=positive_int,
        default=2,
        help="memory section, base model: windows run through the network (the rest through a stand-in of the same output shape; default: 2)",
    )
    p.add_argument("--batch-cases", type=positive_int, default=6, help="cases of the batch section (default: 6)")
    p.add_argument("-i", "--input", help="CT for the whole-volume section (default: none, section skipped)")
    p.add_argument("-m", "--model", help="model for the whole-volume section (default: the built-in model)")
    p.add_argument("--roi-size", "--roi", dest="roi_size", type=roi_size, default="96", help="inference window size (default: 96)")
    p.add_argument("--train-roi-size", "--train-roi", dest="train_roi_size", type=roi_size, default="64", help="crop size of the training step (default: 64)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per configuration, after one warm-up (default: 3)")
    p.add_argument("--train-repeats", type=positive_int, default=2, help="timed training steps (default: 2)")
    p.add_argument(
        "--sw-batch-size",
        "--reference-batch",
        dest="sw_batch_size",
        type=positive_int,
        default=4,
        help="windows per call in the reference recipe (its sw_batch_size; default: 4)",
    )
    add_device_options(p, default_device="cpu", precision=False, algorithm=False)
    add_output_option(p, help="also write the report as JSON to this file", required=False, metavar="REPORT.json")
    p.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # the report path of earlier releases
    add_common(p)
    p.set_defaults(func=cmd_benchmark, cancel_grace=5.0)


def _cube(roi: tuple[int, int, int], option: str) -> int:
    if len(set(roi)) != 1:
        raise ConfigError(f"{option} {','.join(map(str, roi))}: the benchmark uses cubic windows; give one size such as 96.")
    return roi[0]


def cmd_benchmark(args: argparse.Namespace, ctx: Any) -> int:
    from repux.io.images import atomic_path
    from repux.models.store import DEFAULT_MODEL
    from repux.nn import PRESETS
    from repux.tools.benchmark import format_report, run_benchmark

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise ConfigError(f"--presets: unknown {bad}; choose from {', '.join(PRESETS)}.")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if not sections or set(sections) - {"window", "train", "volume", "memory", "batch", "interactive"}:
        raise ConfigError(f"--sections must be a subset of window,train,volume,memory,batch,interactive; got {args.sections!r}.")
    interactive = "interactive" in sections
    sections = tuple(s for s in sections if s != "interactive")
    try:
        memory_size = tuple(int(v) for v in args.memory_size.split(","))
    except ValueError:
        memory_size = ()
    if len(memory_size) != 3 or min(memory_size) < 8:
        raise ConfigError(f"--memory-size {args.memory_size!r}: give three voxel counts X,Y,Z, each at least 8, e.g. 512,512,1000.")
    if not sections:
        return _interactive_only(args, ctx)
    report = run_benchmark(
        presets=presets,
        device=args.device,
        sections=sections,
        roi=_cube(args.roi_size, "--roi-size"),
        train_roi=_cube(args.train_roi_size, "--train-roi-size"),
        repeats=args.repeats,
        train_repeats=args.train_repeats,
        input_path=args.input,
        model=args.model or DEFAULT_MODEL,
        threads=args.threads,
        reference_batch=args.sw_batch_size,
        progress=ctx.progress,
        memory_size=memory_size,  # type: ignore[arg-type]
        network_windows=args.network_windows,
        batch_cases=args.batch_cases,
    )
    if interactive:
        report["interactive"] = _interactive_section(args)
    report["command"] = "repux benchmark " + " ".join(__import__("shlex").quote(a) for a in __import__("sys").argv[2:])
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if ctx.progress_mode != "json":
        print(format_report(report))
    return 0


def _interactive_section(args: argparse.Namespace) -> dict[str, Any]:
    """Click-to-segment figures (:func:`repux.inference.session.measure_latencies`) with the model and device of the command."""
    import time

    from repux.inference.segmenter import Segmenter
    from repux.inference.session import measure_latencies
    from repux.models.store import DEFAULT_MODEL
    from repux.tools.benchmark import machine_description

    t = time.perf_counter()
    seg = Segmenter(args.model or DEFAULT_MODEL, device=args.device, threads=args.threads)
    out = {"model_load_s": round(time.perf_counter() - t, 3), "machine": machine_description(args.device)}
    size = tuple(int(v) for v in args.memory_size.split(","))
    out.update(measure_latencies(seg, size=size))
    return out


def _interactive_only(args: argparse.Namespace, ctx: Any) -> int:
    from repux.io.images import atomic_path

    res = _interactive_section(args)
    res["command"] = "repux benchmark " + " ".join(__import__("shlex").quote(a) for a in __import__("sys").argv[2:])
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps({"interactive": res}, indent=2) + "\n")
    if ctx.progress_mode != "json":
        cpu = res["machine"].get("cpu")
        print(f"interactive ({res['machine'].get('name')}, {res['torch_threads']} threads{', CPU flags ' + str(cpu) if cpu else ''}):")
        print(f"  input {res['input_size']}, model grid {res['model_grid_size']}, {res['windows']} windows")
        print(f"  model load {res['model_load_s']:.2f} s, session open {res['open_s']:.2f} s")
        print(f"  cold click ({res['cold_click_organ']}, {res['cold_click_windows']} windows) {res['cold_click_s']:.2f} s")
        print(f"  warm click ({res['warm_click_organ']}) {res['warm_click_s']:.3f} s, same organ again {res['warm_click_same_organ_s']:.3f} s")
    return 0
