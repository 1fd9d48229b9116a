"""``repux benchmark``: speed and memory of the fast paths against the paper's recipe, same machine, same run.

Three sections, each configuration measured in a fresh worker process (so
peak memory is its own; ``ru_maxrss`` on the CPU, ``max_memory_allocated`` on
CUDA), one warm-up call, then the median of ``repeats`` timed calls (CUDA
timings use events after a synchronize):

* **window**: one ``roi`` window forward pass per preset and path;
  ``reference`` = fp32, PyTorch's own large-kernel convolution, BatchNorm
  unfolded (the official test script); ``fast`` = fp32, the fastest exact
  large-kernel algorithm per stage (FFT/direct), BatchNorm folded; ``bf16`` =
  ``fast`` under bfloat16 autocast (only where the hardware runs bf16 natively:
  AMX/AVX-512-BF16 CPUs, GPUs). Outputs are compared with the reference
  (relative max error; argmax agreement and Dice for bf16).
* **train**: one training step (forward, DiceCE, backward, AdamW) at
  ``train_roi``: ``reference`` = PyTorch autograd through the native 21^3
  depthwise convolution, ``fast`` = the exact forward-convolution/FFT
  backward, ``fast+cl`` = the same in channels-last-3d memory format, ``fast+ckpt`` = with
  activation checkpointing.
* **volume**: segmentation of a whole CT with the reference recipe (fp32, native
  convolution, overlap 0.7, sw_batch_size 4, no body crop), with the project's
  engine at that overlap (``fast@0.7``: fast kernels, folded BatchNorm, body crop) and with the
  project's settings (``fast``: overlap 0.5, body crop); Dice of each with the
  reference output.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_benchmark", "worker_main", "format_report"]

logger = logging.getLogger(__name__)

WINDOW_PATHS = ("reference", "fast", "bf16")
TRAIN_PATHS = ("reference", "fast", "fast+cl", "fast+ckpt")
# "fast@0.7": the project's engine at the reference overlap (separates the overlap choice from the rest)
VOLUME_PATHS = ("reference", "fast@0.7", "fast")


# ----------------------------------------------------------------------------- worker side
def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def _timer(device):
    import torch

    if device.type == "cuda":

        def run(fn):
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
            return out, start.elapsed_time(end) / 1000.0

        return run

    def run_cpu(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    return run_cpu


def _window_job(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from .device import bf16_is_fast, resolve_device, set_threads
    from .nn import create_model

    device = resolve_device(spec["device"])
    if device.type == "cpu":
        set_threads(spec.get("threads"))
    path = spec["path"]
    if path == "bf16" and not bf16_is_fast(device):
        return {"skipped": "bf16 is not native on this device (needs AMX/AVX-512-BF16 on CPU, or a GPU)"}
    torch.manual_seed(0)
    net = create_model(spec["preset"], out_channels=5, algorithm="native" if path == "reference" else "auto")
    _realistic_batchnorm(net)
    net.eval().reparameterize(fold_batchnorm=path != "reference").to(device)
    roi = spec["roi"]
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(1, 1, roi, roi, roi, generator=g)] * spec.get("batch", 1)).to(device)
    timer = _timer(device)

    def call():
        with torch.inference_mode():
            if path == "bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return net(x).float()
            return net(x)

    y, _ = timer(call)  # warm-up
    batch = spec.get("batch", 1)
    times = [timer(call)[1] / batch for _ in range(spec["repeats"])]  # seconds per window
    np.save(spec["output"], y[0].float().cpu().numpy())
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_mb": _peak_memory_mb(device), "batch": batch}


def _realistic_batchnorm(net) -> None:
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def _train_job(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from monai.losses import DiceCELoss

    from .device import autocast_dtype, resolve_device, set_threads
    from .nn import create_model

    device = resolve_device(spec["device"])
    if device.type == "cpu":
        set_threads(spec.get("threads"))
    path = spec["path"]
    torch.manual_seed(0)
    net = create_model(spec["preset"], out_channels=5, algorithm="native" if path == "reference" else "auto").to(device).train()
    net.set_gradient_checkpointing(path == "fast+ckpt")
    memory_format = torch.channels_last_3d if path == "fast+cl" else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    roi = spec["roi"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec.get("batch", 2), 1, roi, roi, roi, generator=g).to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 5, (spec.get("batch", 2), 1, roi, roi, roi), generator=g).to(device)
    amp = autocast_dtype(device, "auto") if path != "reference" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    timer = _timer(device)

    def step():
        opt.zero_grad(set_to_none=True)
        if amp is not None:
            with torch.autocast(device.type, dtype=amp):
                loss = loss_fn(net(x).float(), y)
        else:
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss)

    timer(step)
    times = [timer(step)[1] for _ in range(spec["repeats"])]
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_mb": _peak_memory_mb(device), "batch": spec.get("batch", 2)}


def _volume_job(spec: dict[str, Any]) -> dict[str, Any]:
    import SimpleITK as sitk

    from .device import resolve_device
    from .inference import Segmenter

    device = resolve_device(spec["device"])
    if spec["path"] == "reference":
        seg = Segmenter(
            spec["model"],
            device=spec["device"],
            overlap=0.7,
            sw_batch_size=4,
            precision="fp32",
            algorithm="native",
            crop_foreground=False,
            fold_batchnorm=False,
            threads=spec.get("threads"),
        )
    else:
        extra = {"overlap": 0.7} if spec["path"] == "fast@0.7" else {}
        seg = Segmenter(spec["model"], device=spec["device"], threads=spec.get("threads"), precision=spec.get("precision", "auto"), **extra)
    seg.segment(spec["input"]) if spec.get("warmup") else None
    t = time.perf_counter()
    result = seg.segment(spec["input"])
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t
    sitk.WriteImage(result.labels, spec["output"])
    return {
        "seconds": seconds,
        "peak_mb": _peak_memory_mb(device),
        "windows": result.summary["windows"],
        "processed_size": result.summary["processed_size"],
        "settings": result.summary["settings"],
        "precision": result.summary["precision"],
    }


def worker_main(spec_json: str) -> int:
    """Entry of a benchmark worker process: run one job, print its JSON result."""
    spec = json.loads(spec_json)
    job = {"window": _window_job, "train": _train_job, "volume": _volume_job}[spec["kind"]]
    try:
        result = job(spec)
    except Exception as err:  # reported to the parent as a failed configuration
        result = {"error": f"{type(err).__name__}: {err}"}
    print("REPUX_BENCH " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side
def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "import sys; from repux.benchmark import worker_main; sys.exit(worker_main(sys.argv[1]))", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith("REPUX_BENCH "):
            return json.loads(line[len("REPUX_BENCH ") :])
    return {"error": (out.stderr.strip().splitlines() or ["worker failed"])[-1]}


def _compare_logits(ref_path: str, path: str) -> dict[str, float]:
    import numpy as np

    a = np.load(ref_path).astype(np.float64)
    b = np.load(path).astype(np.float64)
    rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
    la, lb = a.argmax(0), b.argmax(0)
    dices = []
    for c in range(a.shape[0]):
        x, y = la == c, lb == c
        if x.sum() + y.sum():
            dices.append(2 * float(np.logical_and(x, y).sum()) / float(x.sum() + y.sum()))
    return {"rel_max_error": rel, "argmax_agreement": float((la == lb).mean()), "min_class_dice": min(dices) if dices else 1.0}


def _label_dice(a_path: str, b_path: str) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path))
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path))
    per = {}
    for v in sorted(set(np.unique(a)) | set(np.unique(b))):
        if v == 0:
            continue
        x, y = a == v, b == v
        per[int(v)] = round(2 * float(np.logical_and(x, y).sum()) / float(x.sum() + y.sum()), 4)
    return {"per_label": per, "mean": round(float(np.mean(list(per.values()))), 4) if per else 1.0, "voxel_agreement": round(float((a == b).mean()), 5)}


def machine_description(device: str) -> dict[str, Any]:
    import torch

    from .device import cpu_features, describe_devices, resolve_device

    dev = resolve_device(device)
    d = {"device": str(dev), "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    devs = describe_devices()
    d["name"] = next((x["name"] for x in devs if x["device"] == str(dev) or (dev.type == "cpu" and x["device"] == "cpu")), dev.type)
    if dev.type == "cpu":
        d["cpu"] = cpu_features()
    return d


def run_benchmark(
    *,
    presets: list[str],
    device: str = "cpu",
    sections: tuple[str, ...] = ("window", "train", "volume"),
    window_paths: tuple[str, ...] = WINDOW_PATHS,
    train_paths: tuple[str, ...] = TRAIN_PATHS,
    roi: int = 96,
    train_roi: int = 64,
    repeats: int = 3,
    train_repeats: int = 2,
    input_path: str | None = None,
    model: str | None = None,
    threads: int | None = None,
    timeout: float = 3600.0,
    reference_batch: int = 4,
    progress=None,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serialisable report (see :func:`format_report`)."""
    from .progress import ProgressEvent

    report: dict[str, Any] = {
        "machine": machine_description(device),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "roi": roi,
        "train_roi": train_roi,
        "repeats": repeats,
        "reference_batch": reference_batch,
    }
    jobs: list[tuple[str, dict[str, Any]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="repux-bench-"))
    if "window" in sections:
        for p in presets:
            for path in window_paths:
                # the reference recipe runs windows 4 at a time (sw_batch_size 4); times are per window
                batch = reference_batch if path == "reference" else 1
                jobs.append(
                    (
                        "window",
                        {
                            "kind": "window",
                            "preset": p,
                            "path": path,
                            "roi": roi,
                            "repeats": repeats,
                            "device": device,
                            "threads": threads,
                            "batch": batch,
                            "output": str(tmp / f"w_{p}_{path}.npy"),
                        },
                    )
                )
    if "train" in sections:
        for p in presets:
            for path in train_paths:
                jobs.append(
                    ("train", {"kind": "train", "preset": p, "path": path, "roi": train_roi, "repeats": train_repeats, "device": device, "threads": threads})
                )
    if "volume" in sections and input_path:
        for path in VOLUME_PATHS:
            jobs.append(
                (
                    "volume",
                    {
                        "kind": "volume",
                        "path": path,
                        "input": input_path,
                        "model": model,
                        "device": device,
                        "threads": threads,
                        "output": str(tmp / f"v_{path}.nii.gz"),
                    },
                )
            )
    results: dict[str, list[dict[str, Any]]] = {"window": [], "train": [], "volume": []}
    for i, (kind, spec) in enumerate(jobs):
        label = f"{kind} {spec.get('preset', '')} {spec['path']}".replace("  ", " ")
        if progress:
            progress(ProgressEvent("benchmark", i / len(jobs), label, None))
        logger.info("benchmark %d/%d: %s", i + 1, len(jobs), label)
        res = _run_worker(spec, timeout)
        results[kind].append({**{k: spec[k] for k in ("preset", "path") if k in spec}, **res})
    # comparisons
    for p in presets:
        rows = [r for r in results["window"] if r["preset"] == p]
        ref = next((r for r in rows if r["path"] == "reference" and "seconds" in r), None)
        for r in rows:
            if ref and "seconds" in r:
                r["speedup"] = ref["seconds"] / r["seconds"]
                r.update(_compare_logits(str(tmp / f"w_{p}_reference.npy"), str(tmp / f"w_{p}_{r['path']}.npy")))
        rows = [r for r in results["train"] if r["preset"] == p]
        ref = next((r for r in rows if r["path"] == "reference" and "seconds" in r), None)
        for r in rows:
            if ref and "seconds" in r:
                r["speedup"] = ref["seconds"] / r["seconds"]
    vol = results["volume"]
    if vol and vol[0]["path"] == "reference" and "seconds" in vol[0]:
        for r in vol[1:]:
            if "seconds" in r:
                r["speedup"] = vol[0]["seconds"] / r["seconds"]
                r["dice_vs_reference"] = _label_dice(str(tmp / "v_reference.nii.gz"), str(tmp / f"v_{r['path']}.nii.gz"))
        report["volume_input"] = input_path
        report["volume_model"] = model
    report.update(results)
    if progress:
        progress(ProgressEvent("done", 1.0, "benchmark finished", 0.0))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return report


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"RepUX benchmark on {m['name']} ({m['device']}, {m['threads']} threads, torch {m['torch']}), {report['created']}"]
    if m.get("cpu"):
        c = m["cpu"]
        lines.append(f"CPU capability {c['capability']}, AMX {c['amx']}, AVX-512-BF16 {c['avx512_bf16']}")
    if report.get("window"):
        lines.append(
            f"\nInference, seconds per {report['roi']}^3 window (median of {report['repeats']}; the reference runs {report.get('reference_batch', 1)} windows per call, as sw_batch_size {report.get('reference_batch', 1)}):"
        )
        lines.append(f"  {'preset':<6} {'path':<10} {'seconds':>8} {'speed-up':>9} {'peak MB':>8}  {'rel.err':>8} {'argmax=':>8} {'min Dice':>8}")
        for r in report["window"]:
            lines.append(_row(r, with_err=True))
    if report.get("train"):
        lines.append(f"\nTraining step at {report['train_roi']}^3, batch 2 (median):")
        lines.append(f"  {'preset':<6} {'path':<10} {'seconds':>8} {'speed-up':>9} {'peak MB':>8}")
        for r in report["train"]:
            lines.append(_row(r))
    if report.get("volume"):
        lines.append(f"\nWhole volume: {report.get('volume_input')} with model {report.get('volume_model') or 'default'}:")
        for r in report["volume"]:
            if "seconds" not in r:
                lines.append(f"  {r['path']:<10} {r.get('error') or r.get('skipped')}")
                continue
            s = r.get("settings", {})
            lines.append(
                f"  {r['path']:<10} {r['seconds']:8.1f} s {r.get('speedup', 1.0):7.2f}x  {r['peak_mb']:8.0f} MB  {r['windows']:4d} windows, "
                f"overlap {s.get('overlap')}, sw_batch_size {s.get('sw_batch_size')}, {r.get('precision')}"
            )
            d = r.get("dice_vs_reference")
            if d:
                lines.append(
                    f"  {'':<10} Dice with the reference output: mean {d['mean']} (per label {d['per_label']}), voxel agreement {d['voxel_agreement']}"
                )
    return "\n".join(lines)


def _row(r: dict[str, Any], with_err: bool = False) -> str:
    head = f"  {r.get('preset', ''):<6} {r['path']:<10}"
    if "seconds" not in r:
        return f"{head} {r.get('skipped') or r.get('error')}"
    s = f"{head} {r['seconds']:8.2f} {r.get('speedup', 1.0):8.2f}x {r['peak_mb']:8.0f}"
    if with_err and "rel_max_error" in r:
        s += f"  {r['rel_max_error']:8.1e} {r['argmax_agreement']:8.4f} {r['min_class_dice']:8.4f}"
    return s


def default_threads() -> int:
    return os.cpu_count() or 1
