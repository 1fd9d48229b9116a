"""Model folders: ``model.safetensors`` + ``model.json``.

A RepUX model is a folder holding

* ``model.safetensors`` - the deploy-form (BFM folded) state dict, in the
  official ``REPUXNET`` key layout; no pickle anywhere;
* ``model.json`` - format version, architecture and constructor arguments,
  labels (value, name, colour, SNOMED CT codes), preprocessing, inference
  defaults (``roi_size``...), provenance and the sha256 of the weights.

:func:`save_model` writes into a temporary sibling folder and renames it into
place, so a crash never leaves half a model.  :func:`load_model` verifies the
size and sha256 of the weights before parsing them and refuses a tampered or
truncated file with a clear :class:`~repux.errors.ModelFileError`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from repux.config import Guidance, InferenceSettings, Preprocessing
from repux.errors import ConfigError, ModelFileError, OutputError
from repux.io.files import default_file_mode, os_error_message
from repux.labels import LabelSet

__all__ = [
    "CARD_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "ModelCard",
    "check_model_args",
    "check_safetensors_file",
    "deploy_state_dict",
    "inspect_model",
    "is_model_dir",
    "load_model",
    "read_model_card",
    "save_model",
    "sha256_file",
    "verify_model",
    "verify_weights",
]

logger = logging.getLogger(__name__)

FORMAT = "repux-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
ARCHITECTURE = "RepUXNet"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class ModelCard:
    """Everything ``model.json`` says about a model."""

    model_args: dict[str, Any]
    labels: LabelSet
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    id: str = "repux-model"
    version: str = "1.0.0"
    name: str = ""
    description: str = ""
    preset: str | None = None
    license: str = "Apache-2.0"
    intended_use: str = "Research use only. Not for diagnostic use."
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    size_bytes: int = 0
    deploy: bool = True
    path: Path | None = None
    guidance: Guidance | None = None  # click channels (``repux finetune --interactive``); None: an automatic model

    @property
    def image_channels(self) -> int:
        """Input channels of the image (the network's input channels minus the guidance channels)."""
        return int(self.model_args.get("in_channels", 1)) - (self.guidance.channels if self.guidance else 0)

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.inference.roi_size

    @property
    def num_classes(self) -> int:
        return int(self.model_args["out_channels"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "version": self.version,
            "name": self.name or self.id,
            "description": self.description,
            "architecture": ARCHITECTURE,
            "preset": self.preset,
            "model_args": self.model_args,
            "deploy": self.deploy,
            "labels": self.labels.to_list(),
            "preprocessing": self.preprocessing.to_dict(),
            "roi_size": list(self.inference.roi_size),
            "inference": self.inference.to_dict(),
            "license": self.license,
            "intended_use": self.intended_use,
            "provenance": self.provenance,
            "weights": {"file": WEIGHTS_FILE, "sha256": self.sha256, "size_bytes": self.size_bytes},
            "sha256": self.sha256,
            **({"guidance": self.guidance.to_dict()} if self.guidance else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> ModelCard:
        where = f" in {str(path)!r}" if path else ""
        if d.get("format") != FORMAT:
            raise ModelFileError(f"not a RepUX model card{where}: 'format' is {d.get('format')!r}, expected {FORMAT!r}.")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"model card{where} has format_version {version!r}; this RepUX understands up to {FORMAT_VERSION}. Upgrade RepUX to use this model."
            )
        if d.get("architecture") != ARCHITECTURE:
            raise ModelFileError(f"model card{where}: architecture {d.get('architecture')!r} is not supported (only {ARCHITECTURE!r}).")
        try:
            labels = LabelSet.from_list(d["labels"], name=str(d.get("id", "model")))
            inference = dict(d.get("inference", {}))
            if "roi_size" in d:
                inference["roi_size"] = d["roi_size"]
            card = cls(
                model_args=dict(d["model_args"]),
                labels=labels,
                preprocessing=Preprocessing.from_dict(d.get("preprocessing", {})),
                inference=InferenceSettings.from_dict(inference),
                id=str(d.get("id", "repux-model")),
                version=str(d.get("version", "1.0.0")),
                name=str(d.get("name", "")),
                description=str(d.get("description", "")),
                preset=d.get("preset"),
                license=str(d.get("license", "")),
                intended_use=str(d.get("intended_use", "")),
                provenance=dict(d.get("provenance", {})),
                sha256=str(d.get("sha256") or d.get("weights", {}).get("sha256", "")),
                size_bytes=int(d.get("weights", {}).get("size_bytes", 0)),
                deploy=bool(d.get("deploy", True)),
                path=path,
                guidance=Guidance.from_dict(d["guidance"]) if d.get("guidance") is not None else None,
            )
        except KeyError as err:
            raise ModelFileError(f"model card{where} lacks the required field {err.args[0]!r}.") from err
        except (ConfigError, TypeError, ValueError, AttributeError) as err:
            raise ModelFileError(f"model card{where} is invalid: {err}") from err
        check_model_args(card.model_args, where)
        if card.num_classes != labels.num_classes:
            raise ModelFileError(f"model card{where}: out_channels={card.num_classes} but {len(labels)} labels + background = {labels.num_classes} classes.")
        if card.guidance is not None:
            if list(card.guidance.labels) != ["background", *labels.names]:
                raise ModelFileError(
                    f"model card{where}: guidance.labels {list(card.guidance.labels)} must be 'background' and the model's labels in order ({labels.names})."
                )
            if card.model_args.get("guidance_channels", 0) != card.guidance.channels:
                raise ModelFileError(
                    f"model card{where}: model_args.guidance_channels={card.model_args.get('guidance_channels', 0)} but guidance names {card.guidance.channels} channels."
                )
            if card.image_channels < 1:
                raise ModelFileError(
                    f"model card{where}: model_args.in_channels={card.model_args.get('in_channels', 1)} leaves no image channel beside {card.guidance.channels} guidance channels."
                )
        return card


#: bounds of model.json's architecture values (the paper's base model is far inside them)
MODEL_ARG_BOUNDS = {
    "in_channels": (1, 1040),  # image channels + one click-guidance channel per class
    "guidance_channels": (0, 1024),
    "out_channels": (2, 1024),
    "feature_sizes": (1, 4096),
    "depths": (1, 64),
    "kernel_size": (1, 63),
    "hidden_size": (1, 16384),
}
#: refuse architectures with more parameters than this (4 GB of float32 weights)
MAX_PARAMETERS = 1_000_000_000


def check_model_args(args: Mapping[str, Any], where: str = "") -> None:
    """Refuse absurd or malformed architecture values before any network is built (no allocation).

    Raises:
        ModelFileError: naming the field, the value and the allowed range.
    """

    def ints(name: str, value: Any, n: int | None) -> list[int]:
        seq = value if isinstance(value, (list, tuple)) else [value]
        if (n is not None and len(seq) != n) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seq):
            shape = f"a list of {n} integers" if n else "an integer"
            raise ModelFileError(f"model card{where}: model_args.{name} must be {shape}; got {value!r}.")
        lo, hi = MODEL_ARG_BOUNDS[name]
        bad = [v for v in seq if not lo <= v <= hi]
        if bad:
            raise ModelFileError(f"model card{where}: model_args.{name} = {value!r} is out of range; each value must be from {lo} to {hi}.")
        return list(seq)

    if not isinstance(args, Mapping):
        raise ModelFileError(f"model card{where}: model_args must be an object; got {type(args).__name__}.")
    for key in ("in_channels", "out_channels", "guidance_channels"):
        if key in args:
            ints(key, args[key], None)
    feats = ints("feature_sizes", args["feature_sizes"], 4) if "feature_sizes" in args else [48, 96, 192, 384]
    depths = ints("depths", args["depths"], 4) if "depths" in args else [2, 2, 2, 2]
    k = ints("kernel_size", args["kernel_size"], None)[0] if "kernel_size" in args else 21
    hidden = ints("hidden_size", args["hidden_size"], None)[0] if "hidden_size" in args else 768
    if "bfm_alpha" in args:
        a = args["bfm_alpha"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
            raise ModelFileError(f"model card{where}: model_args.bfm_alpha must be a positive number; got {a!r}.")
    estimate = sum(d * f * k**3 for d, f in zip(depths, feats)) + sum(27 * 8 * f * f for f in feats) + 27 * 2 * hidden * hidden
    if estimate > MAX_PARAMETERS:
        raise ModelFileError(
            f"model card{where}: model_args describe a network of about {estimate:.2g} parameters (feature_sizes {feats}, hidden_size {hidden}, "
            f"kernel_size {k}); RepUX refuses more than {MAX_PARAMETERS:.0e} (it would need {estimate * 4 / 1e9:.0f} GB)."
        )


def inspect_model(path: str | Path) -> ModelCard:
    """Everything that can be checked about a model folder before it is installed or loaded.

    The card is parsed (absurd architecture values refused), the weights' size and
    sha256 verified, the safetensors layout checked, every tensor's name, shape and
    dtype compared with the network the card describes (built on the ``meta``
    device: no memory), and every value checked to be finite.

    Raises:
        ModelFileError: naming the file and what is wrong.
    """
    import torch

    card = verify_model(path)
    assert card.path is not None
    wpath = card.path / WEIGHTS_FILE
    header = check_safetensors_file(wpath)
    from repux.nn import RepUXNet

    try:
        with torch.device("meta"):
            net = RepUXNet(**card.model_args, deploy=card.deploy)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"model {card.id!r}: model_args in model.json are invalid: {err}") from err
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = sorted(k for k in set(own) & set(tensors) if tuple(tensors[k]["shape"]) != own[k])
    if missing or unexpected or shapes:
        parts = [
            f"{what} ({len(keys)}): {_abbrev(keys, 4)}" for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys
        ]
        raise ModelFileError(f"model {card.id!r}: {WEIGHTS_FILE} does not match the network in model.json: " + "; ".join(parts))
    floats = {"F32", "F16", "BF16"}
    wrong = sorted(k for k, t in tensors.items() if (t["dtype"] != "I64" if k.endswith("num_batches_tracked") else t["dtype"] not in floats))
    if wrong:
        raise ModelFileError(
            f"model {card.id!r}: {WEIGHTS_FILE} has tensors of the wrong dtype ({len(wrong)}), e.g. {wrong[0]} is {tensors[wrong[0]]['dtype']}; weights must be F32, F16 or BF16."
        )
    from safetensors import safe_open

    with safe_open(str(wpath), framework="pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelFileError(f"model {card.id!r}: {WEIGHTS_FILE} holds NaN or infinite values (tensor {k}); the model is broken. Re-export it.")
    return card


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / CARD_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def deploy_state_dict(model) -> dict[str, Any]:
    """The model's state dict with BFM folded into every large kernel (the model is not modified)."""
    from repux.nn.bfr import BFRDepthwiseConv3d

    sd = {k: v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, BFRDepthwiseConv3d) and not m.deploy:
            key = f"{name}.weight"
            sd[key] = (m.weight.detach() * m.bfm.to(m.weight.dtype)).contiguous().cpu()
    return sd


def _check_savable(model, out: Path, labels: LabelSet, overwrite: bool, weights_dtype: str) -> dict[str, Any]:
    """The model's constructor arguments, once the target, the dtype, the model's form and its labels are checked."""
    if out.exists() and not overwrite:
        raise ModelFileError(f"model folder {str(out)!r} already exists; choose another --output or pass overwrite.")
    if weights_dtype not in ("float32", "float16"):
        raise ModelFileError(f"weights_dtype must be float32 or float16; got {weights_dtype!r}.")
    if getattr(model, "batchnorm_folded", False):
        raise ModelFileError("a model whose BatchNorm was folded for inference cannot be saved; save it before reparameterize(fold_batchnorm=True).")
    args = model.config()
    if args["out_channels"] != labels.num_classes:
        raise ModelFileError(
            f"the model has out_channels={args['out_channels']} but the label set has {len(labels)} labels (+ background = {labels.num_classes})."
        )
    return args


def _save_provenance(provenance: Mapping[str, Any] | None, weights_dtype: str) -> dict[str, Any]:
    """The card's provenance: when and with what it was saved, then ``provenance``, then the weights' dtype."""
    import torch

    from repux._version import __version__

    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repux_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    prov.update(dict(provenance or {}))
    prov["weights_dtype"] = weights_dtype
    return prov


def _write_weights(model, wpath: Path, out: Path, weights_dtype: str) -> None:
    """Write the deploy-form state dict of ``model`` to ``wpath`` and read it back (``out``: the folder named in errors)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = deploy_state_dict(model)
    if weights_dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    try:
        save_file(state, str(wpath), metadata={"format": FORMAT, "architecture": ARCHITECTURE, "dtype": weights_dtype})
        check_safetensors_file(wpath)
    except (SafetensorError, ModelFileError) as err:
        raise OutputError(f"cannot write the model weights to {str(out)!r}: {str(err).splitlines()[0][:200]}; nothing was saved.") from err


def _write_card(card: ModelCard, tmp: Path, out: Path, mode: int) -> None:
    """Write ``model.json`` into ``tmp`` and check it is complete (``out``: the folder named in errors)."""
    text = json.dumps(card.to_dict(), indent=2) + "\n"
    (tmp / CARD_FILE).write_text(text)
    if (tmp / CARD_FILE).stat().st_size != len(text.encode()):
        raise OutputError(f"cannot write {str(out / CARD_FILE)!r}: the file is incomplete (is the disk full?); nothing was saved.")
    os.chmod(tmp / CARD_FILE, mode)


def _write_model_folder(model, card: ModelCard, out: Path, overwrite: bool, weights_dtype: str) -> None:
    """Write the weights and the card (its sha256 and size set) into a temporary sibling of ``out``, then rename it into place.

    On any error the temporary folder is removed and an existing ``out`` is unchanged.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise OutputError(os_error_message(out, err)) from err
    mode = default_file_mode()
    try:
        os.chmod(tmp, mode | ((mode & 0o444) >> 2))  # mkdtemp makes 0700; a model folder gets the usual permissions (x where r)
        wpath = tmp / WEIGHTS_FILE
        _write_weights(model, wpath, out, weights_dtype)
        os.chmod(wpath, mode)
        card.sha256 = sha256_file(wpath)
        card.size_bytes = wpath.stat().st_size
        _write_card(card, tmp, out, mode)
        _replace_dir(tmp, out, overwrite)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(os_error_message(out, err) + " Nothing was saved; an existing model there is unchanged.") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(
    model,
    out_dir: str | Path,
    *,
    labels: LabelSet,
    preprocessing: Preprocessing | None = None,
    inference: InferenceSettings | None = None,
    model_id: str | None = None,
    version: str = "1.0.0",
    name: str = "",
    description: str = "",
    preset: str | None = None,
    license: str = "Apache-2.0",
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    weights_dtype: str = "float32",
    guidance: Guidance | None = None,
) -> ModelCard:
    """Write ``model`` (training or deploy form) as a deploy-form model folder, atomically.

    Args:
        model: a :class:`~repux.nn.RepUXNet`.
        out_dir: target folder (created; its parent must be writable).
        labels: the label set; ``len(labels) + 1`` must equal ``out_channels``.
        preprocessing: defaults to the official AMOS recipe.
        inference: sliding-window defaults. Defaults to roi 96^3, overlap 0.5.
        overwrite: replace an existing folder. Defaults to False.
        weights_dtype: ``float32`` or ``float16`` (half the file size; loaded back as float32).
        guidance: the click channels of a guidance model (its last ``guidance.channels`` input channels).

    Raises:
        ModelFileError: if the folder exists (and not ``overwrite``) or labels do not fit.
    """
    out = Path(out_dir)
    args = _check_savable(model, out, labels, overwrite, weights_dtype)
    card = ModelCard(
        model_args=args,
        labels=labels,
        preprocessing=preprocessing or Preprocessing(),
        inference=inference or InferenceSettings(),
        id=model_id or out.name,
        version=version,
        name=name,
        description=description,
        preset=preset,
        license=license,
        provenance=_save_provenance(provenance, weights_dtype),
        deploy=True,
        guidance=guidance,
    )
    if guidance is not None and (list(guidance.labels) != ["background", *labels.names] or args["in_channels"] <= guidance.channels):
        raise ModelFileError(f"guidance {list(guidance.labels)} does not fit the model ({args['in_channels']} input channels, labels {labels.names}).")
    _write_model_folder(model, card, out, overwrite, weights_dtype)
    card.path = out
    logger.info("saved model %s (%s, sha256 %s) to %s", card.id, _human_size(card.size_bytes), card.sha256[:12], out)
    return card


#: dtypes RepUX model weights may have
SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1}
#: refuse a safetensors header larger than this (a real one is a few hundred KB)
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024


def check_safetensors_file(path: str | Path) -> dict[str, Any]:
    """Check a ``.safetensors`` file's structure without loading it; returns its header.

    The header must be JSON, every tensor's dtype one RepUX uses, its byte range
    consistent with its shape and inside the file, and the file exactly as long as
    the header says (a truncated or padded file is refused).

    Raises:
        ModelFileError: naming what is wrong.
    """
    import struct

    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{str(p)!r} is not a safetensors file: only {size} bytes.")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise ModelFileError(f"{str(p)!r} is truncated or not a safetensors file: header of {n} bytes in a file of {size} bytes.")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelFileError(f"{str(p)!r} has a corrupted safetensors header: {err}") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"{str(p)!r} has a corrupted safetensors header.")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= set(t):
            raise ModelFileError(f"{str(p)!r}: tensor {name!r} has a corrupted header entry.")
        if t["dtype"] not in SAFETENSORS_DTYPES:
            raise ModelFileError(f"{str(p)!r}: tensor {name!r} has dtype {t['dtype']}; RepUX weights use {', '.join(SAFETENSORS_DTYPES)}.")
        start, stop = (int(v) for v in t["data_offsets"])
        count = 1
        for d in t["shape"]:
            count *= int(d)
        if stop - start != count * SAFETENSORS_DTYPES[t["dtype"]] or start < 0:
            raise ModelFileError(f"{str(p)!r}: tensor {name!r} of shape {t['shape']} has an inconsistent byte range {start}..{stop}.")
        end = max(end, stop)
    if 8 + n + end != size:
        raise ModelFileError(f"{str(p)!r} is {size} bytes but its header describes {8 + n + end}; the file is truncated or corrupted.")
    return header


def _replace_dir(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists():
        if not overwrite:
            raise ModelFileError(f"model folder {str(dst)!r} already exists.")
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def read_model_card(path: str | Path) -> ModelCard:
    """Parse ``model.json`` of a model folder (no weights are read)."""
    p = Path(path)
    card_path = p / CARD_FILE if p.is_dir() else p
    if not card_path.is_file():
        raise ModelFileError(f"{str(p)!r} is not a RepUX model folder: {CARD_FILE} is missing.")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"cannot parse {str(card_path)!r}: {err}") from err
    return ModelCard.from_dict(data, path=card_path.parent)


def verify_model(path: str | Path) -> ModelCard:
    """Check that the weights exist and match the size and sha256 in ``model.json``."""
    return verify_weights(read_model_card(path))


def verify_weights(card: ModelCard) -> ModelCard:
    """Check that the weights of a card already read exist and match its size and sha256."""
    assert card.path is not None
    wpath = card.path / WEIGHTS_FILE
    if not wpath.is_file():
        raise ModelFileError(f"model {card.id!r}: weights file {str(wpath)!r} is missing.")
    size = wpath.stat().st_size
    if card.size_bytes and size != card.size_bytes:
        raise ModelFileError(
            f"model {card.id!r}: {WEIGHTS_FILE} is {size} bytes but model.json says {card.size_bytes}; the file is truncated or corrupted. Reinstall the model."
        )
    digest = sha256_file(wpath)
    if not card.sha256 or digest != card.sha256:
        raise ModelFileError(
            f"model {card.id!r}: sha256 of {WEIGHTS_FILE} is {digest[:16]}... but model.json expects {card.sha256[:16] or '(none)'}...; "
            "the weights were modified or corrupted. Reinstall the model."
        )
    return card


def load_model(path: str | Path | ModelCard, *, device: str = "cpu", verify: bool = True, algorithm: str = "auto"):
    """Load a model folder into a deploy-form :class:`~repux.nn.RepUXNet` in eval mode.

    Args:
        path: the model folder, or its :class:`ModelCard` already read (``model.json`` is then not read again; the
            weights are still checked against it).
        device: torch device. Defaults to "cpu".
        verify: check the sha256 first (a few ms per MB). Defaults to True.
        algorithm: large-kernel convolution algorithm. Defaults to "auto".

    Returns:
        ``(model, card)``.

    Raises:
        ModelFileError: missing, truncated, tampered or incompatible files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from repux.nn import RepUXNet

    if isinstance(path, ModelCard) and path.path is not None:
        try:
            card = verify_weights(path) if verify else path
        except ModelFileError:  # replaced by an install since it was read: read the folder again
            card = _read_consistently(path.path, verify)
    else:
        card = _read_consistently(path, verify)  # type: ignore[arg-type]
    assert card.path is not None
    try:
        state = load_file(str(card.path / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"model {card.id!r}: cannot read {WEIGHTS_FILE}: {err}") from err
    try:
        model = RepUXNet(**card.model_args, deploy=card.deploy, algorithm=algorithm)
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"model {card.id!r}: model_args in model.json are invalid: {err}") from err
    load_state_dict_strict(model, state, source=f"model {card.id!r}")
    model.eval()
    return model.to(device), card


def _read_consistently(path: str | Path, verify: bool) -> ModelCard:
    """The card (verified against the weights): retried once if the folder was replaced by an install meanwhile."""
    for attempt in (0, 1):
        try:
            before = os.stat(path).st_ino
        except OSError:
            before = None
        try:
            return verify_model(path) if verify else read_model_card(path)
        except ModelFileError:
            try:
                replaced = before is not None and os.stat(path).st_ino != before
            except OSError:
                replaced = True
            if attempt or not replaced:
                raise
            logger.info("model folder %s was replaced while it was read; reading it again", path)
    raise AssertionError("unreachable")


def load_state_dict_strict(model, state: Mapping[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` with one error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if shapes:
            parts.append(f"mis-shaped keys ({len(shapes)}): {_abbrev(shapes)}")
        from repux.errors import CheckpointError

        raise CheckpointError(f"{source} does not match the network: " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)


def _abbrev(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def with_updates(card: ModelCard, **changes: Any) -> ModelCard:
    return replace(card, **changes)
