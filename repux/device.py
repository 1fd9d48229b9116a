"""Device selection, CPU feature detection and precision choice."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from repux.errors import ConfigError

__all__ = ["autocast_dtype", "bf16_is_fast", "cpu_features", "describe_devices", "resolve_device", "set_threads"]

logger = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a usable :class:`torch.device`.

    ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises:
        ConfigError: for an unknown name or a device that is not available.
    """
    s = str(spec).strip().lower()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu or auto.")
        idx = 0 if s == "cuda" else _parse_index(spec, s[5:])
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA device(s) (0..{torch.cuda.device_count() - 1}).")
        return torch.device("cuda", idx)
    if s == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError(f"--device {spec}: Apple MPS is not available on this machine; use --device cpu or auto.")
        return torch.device("mps")
    raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {spec!r}.")


def _parse_index(spec: str, text: str) -> int:
    try:
        idx = int(text)
    except ValueError as err:
        raise ConfigError(f"--device {spec}: the CUDA index must be an integer, e.g. cuda:0.") from err
    if idx < 0:
        raise ConfigError(f"--device {spec}: the CUDA index must be >= 0.")
    return idx


def cpu_features() -> dict[str, Any]:
    """What the CPU offers for fast convolutions (oneDNN capability, AMX, AVX-512 BF16)."""
    feats: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(), "cores": os.cpu_count()}
    for name, fn in (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"), ("avx512", "_is_avx512_supported")):
        f = getattr(torch.cpu, fn, None)
        feats[name] = bool(f()) if callable(f) else False
    return feats


#: the --precision choices
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def bf16_is_fast(device: torch.device) -> bool:
    """True where bfloat16 convolutions run on matrix hardware (CUDA sm80+, CPU AMX or AVX-512 BF16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        f = cpu_features()
        return bool(f["amx"] or f["avx512_bf16"])
    return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` in ``auto|fp32|bf16|fp16`` on ``device`` (None = fp32).

    ``auto``: bf16 (else fp16) on CUDA; on the CPU bf16 where it runs on matrix hardware (AMX or AVX-512 BF16, see
    :func:`bf16_is_fast`), fp32 elsewhere, so no CPU gets slower.  ``REPUX_CPU_BF16=0`` keeps fp32 on every CPU.
    The built-in model's labels under bf16 match fp32 (Dice >= 0.99 per organ on the real dev CT,
    ``Testing/engine/inference/test_precision.py``).
    """
    p = precision.lower()
    if p not in PRECISIONS:
        raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16; got {precision!r}.")
    if p == "fp32":
        return None
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and os.environ.get("REPUX_CPU_BF16", "1") != "0" and bf16_is_fast(device):
            return torch.bfloat16
        return None
    if p == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is only supported on GPUs; use bf16 or fp32 on the CPU.")
    return torch.bfloat16 if p == "bf16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """What ran: ``float32``, ``bfloat16`` or ``float16`` (for summaries, logs and ``repux doctor``)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


#: the most CPU threads RepUX asks for
MAX_THREADS = 1024


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: all cores; 0 or a negative number is refused, not read as "all")."""
    if threads is None:
        n = os.cpu_count() or 1
    elif isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"--threads must be an integer from 1 to {MAX_THREADS} (or omitted for all cores); got {threads!r}.")
    else:
        n = threads
    torch.set_num_threads(n)
    return n


def describe_devices() -> list[dict[str, Any]]:
    out = [{"device": "cpu", "name": _cpu_name(), **cpu_features()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"device": f"cuda:{i}", "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append({"device": "mps", "name": "Apple GPU"})
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
