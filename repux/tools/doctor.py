"""``repux doctor``: is this installation able to run RepUX, and on what?

:func:`diagnose` collects one report a user can paste into a bug report: versions (RepUX, Python,
PyTorch with its CUDA build, MONAI, SimpleITK, safetensors), the devices PyTorch sees (CUDA GPUs with
their memory, Apple MPS), the device ``--device auto`` picks with its memory, a real forward pass of
the built-in model on that device (timed), and the model store with its free disk space.  Problems
found on the way are listed in ``problems`` instead of raised: the report is most useful when
something is broken.  :func:`format_report` renders it as text.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["diagnose", "format_report"]

logger = logging.getLogger(__name__)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gb(device: Any) -> dict[str, float | None]:
    """Total and free memory of ``device`` (GPU memory for CUDA, system RAM otherwise), in GB."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"total_gb": round(total / 2**30, 1), "free_gb": round(free / 2**30, 1)}
    total = free = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30
    except (AttributeError, OSError, ValueError):  # Windows: no sysconf
        pass
    return {"total_gb": None if total is None else round(total, 1), "free_gb": None if free is None else round(free, 1)}


def _forward_pass(device: Any, model: str, roi_size: tuple[int, int, int] | None) -> dict[str, Any]:
    """Load ``model`` and time one forward pass of one window (after a warm-up pass) on ``device``."""
    import torch

    from repux.models.folder import load_model
    from repux.models.store import resolve_model

    card = resolve_model(model)
    net, card = load_model(card.path, device=str(device))
    roi = tuple(roi_size or card.roi_size)
    x = torch.randn(1, int(card.model_args.get("in_channels", 1)), *roi, device=device)
    with torch.inference_mode():
        net(x)  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        y = net(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    if tuple(y.shape[2:]) != roi or not bool(torch.isfinite(y).all()):
        raise RuntimeError(f"the forward pass gave an output of shape {tuple(y.shape)} with non-finite values or a wrong size")
    return {"model": card.id, "roi_size": list(roi), "seconds": round(seconds, 4), "output_classes": int(y.shape[1])}


#: transfer syntaxes of CT from a PACS, and what decodes them in pydicom (multi-frame input; SimpleITK's GDCM decodes single-frame series)
DICOM_TRANSFER_SYNTAXES = {
    "JPEG 2000 (lossless/lossy)": "JPEG2000Lossless",
    "JPEG-LS lossless": "JPEGLSLossless",
    "RLE lossless": "RLELossless",
    "JPEG baseline (8-bit)": "JPEGBaseline8Bit",
    "JPEG lossless (process 14)": "JPEGLosslessSV1",
}


def dicom_decoders() -> dict[str, list[str]]:
    """The pydicom pixel decoder plugins available for each transfer syntax (an empty list: none)."""
    try:
        import pydicom.uid
        from pydicom.pixels import get_decoder
    except ImportError:
        return {}
    out = {}
    for name, keyword in DICOM_TRANSFER_SYNTAXES.items():
        try:
            out[name] = list(get_decoder(getattr(pydicom.uid, keyword)).available_plugins)
        except Exception:  # an old pydicom without the plugin interface
            out[name] = []
    return out


def diagnose(device: str = "auto", forward: bool = True, model: str | None = None, roi_size: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The installation report (see the module docstring); never raises for a broken installation."""
    from repux._version import __version__

    report: dict[str, Any] = {
        "repux": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("torch", "monai", "SimpleITK", "safetensors", "numpy", "slicer-core")},
        "dicom_packages": {name: _version(name) for name in ("pydicom", "highdicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls", "python-gdcm")},
        "dicom_decoders": dicom_decoders(),
        "problems": [],
    }
    problems: list[str] = report["problems"]
    for name in ("JPEG 2000 (lossless/lossy)", "JPEG-LS lossless", "RLE lossless"):
        if report["dicom_decoders"] and not report["dicom_decoders"].get(name):
            problems.append(f"no decoder for {name} multi-frame DICOM (pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls).")
    for required in ("torch", "monai", "SimpleITK", "safetensors"):
        if report["packages"][required] is None:
            problems.append(f"{required} is not installed (pip install {required}).")
    try:
        import torch
    except ImportError:
        return report
    report["torch_cuda_build"] = torch.version.cuda
    report["cuda_available"] = bool(torch.cuda.is_available())
    mps = getattr(torch.backends, "mps", None)
    report["mps_available"] = bool(mps is not None and mps.is_available())
    from repux.device import describe_devices, resolve_device

    report["devices"] = [{k: v for k, v in d.items() if k in ("device", "name", "memory_gb", "capability", "threads", "cores")} for d in describe_devices()]
    if torch.version.cuda is None and not report["mps_available"] and sys.platform != "darwin":
        report["hint"] = "this PyTorch is a CPU-only build; for an NVIDIA GPU install a CUDA build (https://pytorch.org/get-started/locally/)."
    try:
        chosen = resolve_device(device)
        name = next((d["name"] for d in report["devices"] if d["device"] == str(chosen) or (chosen.type == "cpu" and d["device"] == "cpu")), str(chosen))
        from repux.device import autocast_dtype, cpu_features, precision_name

        report["device"] = {"requested": device, "device": str(chosen), "name": name, **_memory_gb(chosen)}
        report["device"]["precision_auto"] = precision_name(autocast_dtype(chosen, "auto"))
        if chosen.type == "cpu":
            f = cpu_features()
            report["device"]["cpu_features"] = {k: f[k] for k in ("capability", "amx", "avx512_bf16", "avx512")}
    except Exception as err:
        problems.append(f"device {device!r}: {err}")
        chosen = None
    if forward and chosen is not None:
        from repux.models.store import DEFAULT_MODEL

        try:
            report["forward"] = {"ok": True, **_forward_pass(chosen, model or DEFAULT_MODEL, roi_size)}
        except Exception as err:
            report["forward"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            problems.append(f"the forward pass on {chosen} failed: {err}")
    from repux.models.store import ModelStore, list_models

    try:
        store = ModelStore()
        root = Path(store.root)
        existing = next((p for p in (root, *root.parents) if p.exists()), None)
        free = shutil.disk_usage(existing).free / 2**30 if existing is not None else None
        rows = list_models(store)
        report["store"] = {
            "path": str(root),
            "free_gb": None if free is None else round(free, 1),
            "models": [r["id"] for r in rows if r["status"] in ("built-in", "installed")],
        }
        if free is not None and free < 2.0:
            problems.append(f"only {free:.1f} GB free in {existing}: models and training checkpoints need a few GB.")
    except Exception as err:
        problems.append(f"model store: {err}")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text lines (what ``repux doctor`` prints)."""
    lines = [f"RepUX {report['repux']} on Python {report['python']} ({report['platform']})"]
    packages = report["packages"]
    lines.append("packages:    " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in packages.items() if v or k != "slicer-core"))
    dp = report.get("dicom_packages") or {}
    if dp:
        lines.append("DICOM:       " + ", ".join(f"{k} {v}" for k, v in dp.items() if v) + "; single-frame series decoded by SimpleITK (GDCM)")
    for name, plugins in (report.get("dicom_decoders") or {}).items():
        lines.append(f"  {name:<28} {', '.join(plugins) if plugins else 'no decoder (pip install python-gdcm, or single-frame series only)'}")
    if "cuda_available" in report:
        cuda = f"CUDA build {report['torch_cuda_build']}" if report["torch_cuda_build"] else "CPU-only PyTorch build"
        lines.append(f"accelerators: {cuda}; CUDA available: {'yes' if report['cuda_available'] else 'no'}; MPS available: {'yes' if report['mps_available'] else 'no'}")
        for d in report.get("devices", []):
            memory = f", {d['memory_gb']} GB" if d.get("memory_gb") else ""
            lines.append(f"  {d['device']:<8} {d.get('name', '')}{memory}")
    if "device" in report:
        d = report["device"]
        memory = f"{d['total_gb']} GB ({d['free_gb']} GB free)" if d.get("total_gb") is not None else "memory unknown"
        lines.append(f"--device {d['requested']}: {d['device']} ({d['name']}), {memory}; --precision auto runs {d.get('precision_auto', 'float32')}")
        cf = d.get("cpu_features")
        if cf:
            have = [k for k in ("amx", "avx512_bf16", "avx512") if cf.get(k)]
            lines.append(f"  CPU: {cf.get('capability')}; bf16 matrix hardware: {', '.join(have) if have else 'none (fp32 is the fast path here)'}")
    forward = report.get("forward")
    if forward:
        if forward["ok"]:
            roi = "x".join(str(v) for v in forward["roi_size"])
            lines.append(f"forward pass: {forward['model']}, one {roi} window in {forward['seconds'] * 1000:.0f} ms - OK")
        else:
            lines.append(f"forward pass: FAILED: {forward['error']}")
    store = report.get("store")
    if store:
        free = f"{store['free_gb']} GB free" if store["free_gb"] is not None else "free space unknown"
        lines.append(f"model store: {store['path']} ({free}); models: {', '.join(store['models']) or 'none'}")
    if report.get("hint"):
        lines.append(f"hint: {report['hint']}")
    lines.append("problems:    " + ("none" if not report["problems"] else ""))
    lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)
