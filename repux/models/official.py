"""Import of the paper's official RepUX-Net checkpoints (``.pth``).

The official test script builds ``REPUXNET(..., deploy=True)`` and loads the
saved state dict: the ``...dwconv.weight`` tensors are the kernels that
convolve the input (deploy form).  Those state dicts map one to one onto
:class:`~repux.nn.RepUXNet` built with ``deploy=True``.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects.  The architecture
(channels, depths, kernel size, hidden size, classes) is read from the tensor
shapes and the keys are loaded strictly: any missing, unexpected or
mis-shaped key is reported, never skipped.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from repux.config import Preprocessing
from repux.errors import CheckpointError
from repux.labels import LabelSet
from repux.models.folder import ModelCard, load_state_dict_strict, save_model, sha256_file

__all__ = [
    "OFFICIAL_PREPROCESSING",
    "architecture_from_state_dict",
    "centre_only_kernels",
    "convert_official",
    "model_from_official_state_dict",
    "read_official_checkpoint",
    "unwrap_state_dict",
]

logger = logging.getLogger(__name__)

#: Official preprocessing per label set (spacing differs: FLARE 1.0x1.0x1.2, AMOS 1.5x1.5x2.0 mm).
OFFICIAL_PREPROCESSING: dict[str, Preprocessing] = {
    "flare": Preprocessing(spacing=(1.0, 1.0, 1.2)),
    "amos": Preprocessing(spacing=(1.5, 1.5, 2.0)),
}

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an official ``.pth`` safely and return its flat state dict."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist.")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{str(p)!r} contains Python objects other than tensors, which RepUX refuses to unpickle (weights_only=True) for safety: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {str(p)!r} (truncated or not a PyTorch file?): {err}") from err
    return unwrap_state_dict(obj, source=str(p))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``/``{"model": ...}`` and strip ``module.``/``_orig_mod.`` prefixes; idempotent."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} does not hold a state dict (got {type(obj).__name__}).")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source} holds no tensors; keys: {list(obj)[:8]}.")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def architecture_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read ``RepUXNet`` constructor arguments from the official key shapes."""

    def get(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"this is not an official RepUX-Net state dict: key {key!r} is missing (found e.g. {', '.join(list(sd)[:4])}).")
        return sd[key]

    stem = get("repuxnet_3d.downsample_layers.0.0.weight")
    feature_sizes, depths = [], []
    for s in range(4):
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"repuxnet_3d\.stages\.{s}\.(\d+)\.dwconv\.weight$", k))}
        if not blocks:
            raise CheckpointError(f"this is not an official RepUX-Net state dict: no blocks found for stage {s} (repuxnet_3d.stages.{s}.*.dwconv.weight).")
        depths.append(max(blocks) + 1)
        feature_sizes.append(int(get(f"repuxnet_3d.stages.{s}.0.dwconv.weight").shape[0]))
    ks = int(get("repuxnet_3d.stages.0.0.dwconv.weight").shape[-1])
    return {
        "in_channels": int(stem.shape[1]),
        "out_channels": int(get("out.conv.conv.weight").shape[0]),
        "feature_sizes": feature_sizes,
        "depths": depths,
        "kernel_size": ks,
        "hidden_size": int(get("encoder5.layer.conv1.conv.weight").shape[0]),
    }


def centre_only_kernels(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Count large kernels whose only non-zero tap is the centre (the official training bug's signature)."""
    total = centre = 0
    for k, v in sd.items():
        if k.endswith("dwconv.weight") and v.dim() == 5:
            total += 1
            c = v.shape[-1] // 2
            off = v.clone()
            off[..., c, c, c] = 0
            centre += int(not bool(off.abs().sum() > 0))
    return {"large_kernels": total, "centre_only": centre}


def model_from_official_state_dict(sd: Mapping[str, torch.Tensor], labels: LabelSet | None = None, source: str = "checkpoint"):
    """Build the deploy-form :class:`~repux.nn.RepUXNet` and load ``sd`` strictly."""
    from repux.nn import RepUXNet

    args = architecture_from_state_dict(sd)
    if labels is not None and args["out_channels"] != labels.num_classes:
        raise CheckpointError(
            f"{source} has {args['out_channels']} output channels ({args['out_channels'] - 1} organs + background) "
            f"but the label set {labels.name!r} has {len(labels)} organs ({labels.num_classes} classes); choose the matching --labels."
        )
    try:
        model = RepUXNet(**args, deploy=True)
    except ValueError as err:
        raise CheckpointError(f"{source}: unsupported architecture {args}: {err}") from err
    load_state_dict_strict(model, sd, source=source)
    return model.eval()


def convert_official(
    checkpoint: str | Path,
    labels: LabelSet,
    out_dir: str | Path,
    *,
    preprocessing: Preprocessing | None = None,
    model_id: str | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Convert an official ``.pth`` into a RepUX model folder.

    Args:
        checkpoint: the official ``best_metric_model.pth`` (or similar).
        labels: label set (``repux.labels.FLARE``, ``AMOS`` or custom).
        out_dir: the model folder to write.
        preprocessing: defaults to the official recipe for FLARE/AMOS.
        model_id: id stored in model.json. Defaults to the folder name.
    """
    path = Path(checkpoint)
    sd = read_official_checkpoint(path)
    model = model_from_official_state_dict(sd, labels, source=f"checkpoint {str(path)!r}")
    check = centre_only_kernels(sd)
    if check["large_kernels"] and check["centre_only"] == check["large_kernels"]:
        logger.warning(
            "all %d large kernels of %s are centre-only (1x1x1): this checkpoint was trained with the official BFR code, "
            "whose large kernels never train; it still runs as trained.",
            check["large_kernels"],
            path.name,
        )
    prep = preprocessing or OFFICIAL_PREPROCESSING.get(labels.name, Preprocessing())
    return save_model(
        model,
        out_dir,
        labels=labels,
        preprocessing=prep,
        model_id=model_id,
        name=f"RepUX-Net ({labels.name.upper()}, official weights)",
        description=f"Official RepUX-Net weights imported from {path.name}.",
        license="See the official RepUX-Net repository (MASILab/RepUX-Net) for the weights' licence.",
        provenance={
            "source": "official-checkpoint",
            "checkpoint_file": path.name,
            "checkpoint_sha256": sha256_file(path),
            "kernel_check": check,
            "paper": "Lee et al., MICCAI 2023, arXiv:2303.05785",
        },
        overwrite=overwrite,
    )
