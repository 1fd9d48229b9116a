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

__all__ = ["format_report", "run_benchmark", "worker_main"]

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

    from repux.device import bf16_is_fast, resolve_device, set_threads
    from repux.nn import create_model

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

    from repux.device import autocast_dtype, resolve_device, set_threads
    from repux.nn import create_model

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

    from repux.device import resolve_device
    from repux.inference.segmenter import Segmenter

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


# ----------------------------------------------------------------------------- memory and batch sections
#: the large CT of the memory section: 512x512x1000 at 0.75x0.75x1 mm (a whole-body scan)
MEMORY_SIZE = (512, 512, 1000)
MEMORY_SPACING = (0.75, 0.75, 1.0)


def make_large_ct(path: str, size: tuple[int, int, int] = MEMORY_SIZE, spacing: tuple[float, float, float] = MEMORY_SPACING) -> str:
    """Write a synthetic int16 CT (air, an elliptic body of soft tissue with brighter organs) slab by slab, uncompressed."""
    import numpy as np
    import SimpleITK as sitk

    nx, ny, nz = size
    y, x = np.mgrid[0:ny, 0:nx]
    body = ((x - nx / 2) / (nx * 0.42)) ** 2 + ((y - ny / 2) / (ny * 0.33)) ** 2 <= 1
    organ = ((x - nx * 0.35) / (nx * 0.12)) ** 2 + ((y - ny * 0.45) / (ny * 0.1)) ** 2 <= 1
    img = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    img.SetSpacing([float(s) for s in spacing])
    rng = np.random.default_rng(0)
    writer_arr = np.empty((nz, ny, nx), np.int16)  # filled below, one slice at a time
    for k in range(nz):
        sl = np.full((ny, nx), -1000, np.int16)
        sl[body] = 40
        if nz * 0.3 < k < nz * 0.6:
            sl[organ] = 120
        sl += rng.integers(-10, 11, sl.shape, dtype=np.int16)
        writer_arr[k] = sl
    out = sitk.GetImageFromArray(writer_arr)
    del writer_arr
    out.CopyInformation(img)
    sitk.WriteImage(out, path, False)
    return path


def _memory_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Segment a large CT file end to end (read, preprocess, network, stitching, resample, write) and report the peak."""
    import torch

    from repux.config import InferenceSettings, Preprocessing
    from repux.device import resolve_device, set_threads
    from repux.inference.segmenter import Segmenter
    from repux.labels import AMOS
    from repux.nn import create_model

    device = resolve_device(spec["device"])
    if device.type == "cpu":
        set_threads(spec.get("threads"))
    real = int(spec.get("real_windows", 0))
    calls = {"real": 0, "standin": 0}
    if spec["model"] == "base":
        torch.manual_seed(0)
        net = create_model("base", out_channels=AMOS.num_classes).eval()
        net.reparameterize(fold_batchnorm=True)
        net = net.to(device)

        def predictor(x: torch.Tensor) -> torch.Tensor:
            if real <= 0 or calls["real"] < real:
                calls["real"] += x.shape[0]
                return net(x)
            # past the measured windows: a stand-in with the network's output shape (random weights say nothing
            # about accuracy; the stitching buffers, the argmax and the resampling run unchanged)
            calls["standin"] += x.shape[0]
            return torch.zeros((x.shape[0], AMOS.num_classes, *x.shape[2:]), device=x.device)

        seg = Segmenter(
            None,
            device=spec["device"],
            predictor=predictor,
            labels=AMOS,
            preprocessing=Preprocessing(spacing=(1.5, 1.5, 2.0)),
            settings=InferenceSettings(roi_size=(96, 96, 96), overlap=0.5, sw_batch_size=spec.get("sw_batch_size", 1)),
            threads=spec.get("threads"),
            max_voxels=10**10,
        )
    else:
        seg = Segmenter(spec["model"], device=spec["device"], threads=spec.get("threads"), max_voxels=10**10)
    t = time.perf_counter()
    result = seg.segment(spec["input"])
    result.save(spec["output"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "peak_mb": _peak_memory_mb(device),
        "peak_rss_mb": _peak_memory_mb(torch.device("cpu")),
        "windows": result.summary["windows"],
        "network_windows": calls["real"] if spec["model"] == "base" else result.summary["windows"],
        "standin_windows": calls["standin"],
        "model_grid_size": result.summary["model_grid_size"],
        "processed_size": result.summary["processed_size"],
        "input_size": result.summary["input_size"],
        "timings_s": result.summary["timings_s"],
    }


def _batch_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-case wall time of a batch (prefetch + writer thread) vs its network time, and the same cases one after another."""
    import SimpleITK as sitk

    from repux.data.phantom import generate_phantom
    from repux.inference.batch import run_batch
    from repux.inference.segmenter import Segmenter

    tmp = Path(spec["folder"])
    inputs = []
    for i in range(spec["cases"]):
        p = tmp / "in" / f"case{i:02d}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(generate_phantom(i, spacing=tuple(spec["spacing"]), orientation="axial").image, str(p))
        inputs.append(str(p))
    seg = Segmenter(spec["model"], device=spec["device"], threads=spec.get("threads"))
    seg.segment(inputs[0])  # warm-up
    t = time.perf_counter()
    rows = list(run_batch(seg, inputs, tmp / "batch", format="seg.nrrd", report=False))
    batch_total = time.perf_counter() - t
    t = time.perf_counter()
    single = []
    for p in inputs:
        t1 = time.perf_counter()
        r = seg.segment(p)
        r.save(tmp / "single" / (Path(p).name.replace(".nii.gz", ".seg.nrrd")))
        single.append(time.perf_counter() - t1)
    single_total = time.perf_counter() - t
    steady = rows[1:] or rows  # the first case has nothing to overlap with
    wall = statistics.median(r.seconds for r in steady)
    net = statistics.median(r.timings.get("infer", 0.0) for r in steady)
    return {
        "cases": len(rows),
        "failed": sum(r.status != "done" for r in rows),
        "batch_total_s": batch_total,
        "batch_case_wall_s": wall,
        "batch_case_wall_all_s": [round(r.seconds, 3) for r in rows],
        "batch_case_network_all_s": [round(r.timings.get("infer", 0.0), 3) for r in rows],
        "sequential_case_all_s": [round(x, 3) for x in single],
        "batch_case_network_s": net,
        "wall_over_network": wall / net if net else None,
        "sequential_total_s": single_total,
        "sequential_case_s": statistics.median(single),
        "input_size": list(sitk.ReadImage(inputs[0]).GetSize()),
        "peak_mb": _peak_memory_mb(seg.device),
    }


def worker_main(spec_json: str) -> int:
    """Entry of a benchmark worker process: run one job, print its JSON result."""
    spec = json.loads(spec_json)
    if spec["kind"] == "make_ct":
        print("REPUX_BENCH " + json.dumps({"path": make_large_ct(spec["output"], tuple(spec["size"]), tuple(spec["spacing"]))}), flush=True)
        return 0
    job = {"window": _window_job, "train": _train_job, "volume": _volume_job, "memory": _memory_job, "batch": _batch_job}[spec["kind"]]
    try:
        result = job(spec)
    except Exception as err:  # reported to the parent as a failed configuration
        result = {"error": f"{type(err).__name__}: {err}"}
    print("REPUX_BENCH " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side
def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "import sys; from repux.tools.benchmark import worker_main; sys.exit(worker_main(sys.argv[1]))", json.dumps(spec)]
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

    from repux.device import cpu_features, describe_devices, resolve_device

    dev = resolve_device(device)
    d = {"device": str(dev), "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    devs = describe_devices()
    d["name"] = next((x["name"] for x in devs if x["device"] == str(dev) or (dev.type == "cpu" and x["device"] == "cpu")), dev.type)
    if dev.type == "cpu":
        d["cpu"] = cpu_features()
    return d


def _window_jobs(
    presets: list[str], window_paths: tuple[str, ...], *, roi: int, repeats: int, device: str, threads: int | None, reference_batch: int, tmp: Path
) -> list[tuple[str, dict[str, Any]]]:
    """The jobs of the window section: one window forward pass per preset and path."""
    jobs: list[tuple[str, dict[str, Any]]] = []
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
    return jobs


def _train_jobs(
    presets: list[str], train_paths: tuple[str, ...], *, train_roi: int, train_repeats: int, device: str, threads: int | None
) -> list[tuple[str, dict[str, Any]]]:
    """The jobs of the train section: one training step per preset and path."""
    return [
        ("train", {"kind": "train", "preset": p, "path": path, "roi": train_roi, "repeats": train_repeats, "device": device, "threads": threads})
        for p in presets
        for path in train_paths
    ]


def _volume_jobs(input_path: str, *, model: str | None, device: str, threads: int | None, tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    """The jobs of the volume section: ``input_path`` segmented along each of :data:`VOLUME_PATHS`."""
    return [
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
        for path in VOLUME_PATHS
    ]


def _memory_jobs(
    memory_models: tuple[str, ...],
    *,
    model: str | None,
    device: str,
    threads: int | None,
    network_windows: int,
    memory_size: tuple[int, int, int],
    memory_spacing: tuple[float, float, float],
    timeout: float,
    tmp: Path,
) -> list[tuple[str, dict[str, Any]]]:
    """The jobs of the memory section; the large CT they segment is written now (by a worker)."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    ct = str(tmp / "large_ct.mha")
    made = _run_worker({"kind": "make_ct", "output": ct, "size": list(memory_size), "spacing": list(memory_spacing)}, timeout)
    if "error" in made:
        jobs.append(("memory", {"kind": "memory", "path": "make_ct", "model": "-", "skipped": made["error"]}))
    for m in memory_models:
        jobs.append(
            (
                "memory",
                {
                    "kind": "memory",
                    "path": m,
                    "model": (model or "repux-tiny-phantom") if m == "builtin" else m,
                    "input": ct,
                    "device": device,
                    "threads": threads,
                    "real_windows": network_windows,
                    "output": str(tmp / f"m_{m}.seg.nrrd"),
                },
            )
        )
    return jobs


def _batch_jobs(*, model: str | None, batch_cases: int, device: str, threads: int | None, tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    """The job of the batch section: ``batch_cases`` phantoms as a batch and one by one."""
    return [
        (
            "batch",
            {
                "kind": "batch",
                "path": "batch",
                "model": model or "repux-tiny-phantom",
                "cases": batch_cases,
                "spacing": [1.5, 1.5, 2.5],
                "device": device,
                "threads": threads,
                "folder": str(tmp / "batch"),
            },
        )
    ]


def _run_jobs(jobs: list[tuple[str, dict[str, Any]]], timeout: float, progress: Any) -> dict[str, list[dict[str, Any]]]:
    """Run each job in its own worker process; the results by section."""
    from repux.progress import ProgressEvent

    results: dict[str, list[dict[str, Any]]] = {"window": [], "train": [], "volume": [], "memory": [], "batch": []}
    for i, (kind, spec) in enumerate(jobs):
        if "skipped" in spec:
            results[kind].append({"path": spec["path"], "error": spec["skipped"]})
            continue
        label = f"{kind} {spec.get('preset', '')} {spec['path']}".replace("  ", " ")
        if progress:
            progress(ProgressEvent("benchmark", i / len(jobs), label, None))
        logger.info("benchmark %d/%d: %s", i + 1, len(jobs), label)
        res = _run_worker(spec, timeout)
        results[kind].append({**{k: spec[k] for k in ("preset", "path") if k in spec}, **res})
    return results


def _compare_presets(results: dict[str, list[dict[str, Any]]], presets: list[str], tmp: Path) -> None:
    """Speed-ups over the reference of the window and train rows (and the window outputs' errors), in place."""
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


def _compare_volumes(vol: list[dict[str, Any]], tmp: Path) -> bool:
    """Speed-ups and Dice of the volume rows against the reference row, in place; False without a reference."""
    if not (vol and vol[0]["path"] == "reference" and "seconds" in vol[0]):
        return False
    for r in vol[1:]:
        if "seconds" in r:
            r["speedup"] = vol[0]["seconds"] / r["seconds"]
            r["dice_vs_reference"] = _label_dice(str(tmp / "v_reference.nii.gz"), str(tmp / f"v_{r['path']}.nii.gz"))
    return True


def run_benchmark(
    *,
    presets: list[str],
    device: str = "cpu",
    sections: tuple[str, ...] = ("window", "train", "volume"),  # also "memory" and "batch"
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
    memory_size: tuple[int, int, int] = MEMORY_SIZE,
    memory_spacing: tuple[float, float, float] = MEMORY_SPACING,
    memory_models: tuple[str, ...] = ("builtin", "base"),
    network_windows: int = 2,
    batch_cases: int = 6,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serialisable report (see :func:`format_report`)."""
    from repux.progress import ProgressEvent

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
        jobs += _window_jobs(presets, window_paths, roi=roi, repeats=repeats, device=device, threads=threads, reference_batch=reference_batch, tmp=tmp)
    if "train" in sections:
        jobs += _train_jobs(presets, train_paths, train_roi=train_roi, train_repeats=train_repeats, device=device, threads=threads)
    if "volume" in sections and input_path:
        jobs += _volume_jobs(input_path, model=model, device=device, threads=threads, tmp=tmp)
    if "memory" in sections:
        jobs += _memory_jobs(
            memory_models,
            model=model,
            device=device,
            threads=threads,
            network_windows=network_windows,
            memory_size=memory_size,
            memory_spacing=memory_spacing,
            timeout=timeout,
            tmp=tmp,
        )
        report["memory_input"] = {"size": list(memory_size), "spacing": list(memory_spacing), "dtype": "int16", "network_windows": network_windows}
    if "batch" in sections:
        jobs += _batch_jobs(model=model, batch_cases=batch_cases, device=device, threads=threads, tmp=tmp)
    results = _run_jobs(jobs, timeout, progress)
    _compare_presets(results, presets, tmp)
    if _compare_volumes(results["volume"], tmp):
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
    if report.get("memory"):
        mi = report.get("memory_input", {})
        lines.append(
            f"\nMemory: synthetic int16 CT {'x'.join(map(str, mi.get('size', [])))} at {mi.get('spacing')} mm, read from an .mha file, segmented end to end "
            f"(read, preprocess, sliding window, argmax per slab, resample, .seg.nrrd written); peak resident memory of the whole process:"
        )
        for r in report["memory"]:
            if "seconds" not in r:
                lines.append(f"  {r['path']:<8} {r.get('error') or r.get('skipped')}")
                continue
            note = ""
            if r.get("standin_windows"):
                note = f"; network on the first {r['network_windows']} of {r['windows']} windows, the others a zero-logit stand-in of the same shape"
            lines.append(
                f"  {r['path']:<8} peak RSS {r['peak_rss_mb']:7.0f} MB  {r['seconds']:7.1f} s  model grid {r['model_grid_size']}, {r['windows']} windows{note}"
            )
    if report.get("batch"):
        for r in report["batch"]:
            if "cases" not in r:
                lines.append(f"\nBatch: {r.get('error')}")
                continue
            lines.append(
                f"\nBatch of {r['cases']} phantom CTs {'x'.join(map(str, r['input_size']))}: per case {r['batch_case_wall_s']:.2f} s wall vs "
                f"{r['batch_case_network_s']:.2f} s network (ratio {r['wall_over_network']:.2f}); one after another without prefetch "
                f"{r['sequential_case_s']:.2f} s per case; totals {r['batch_total_s']:.1f} s vs {r['sequential_total_s']:.1f} s"
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
