"""Core sub-commands: ``info``, ``presets``, ``convert-official``."""

from __future__ import annotations

import argparse
import json
import logging
import platform
from typing import Any

from repux.cli.options import add_common, add_output_option, add_overwrite_option, csv_floats, model_id, positive_int, roi_size

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="versions, devices and CPU features; or describe a model folder")
    p.add_argument("model", nargs="?", help="a model folder or installed model id to describe")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list the network presets with parameters and MACs per window")
    p.add_argument("--out-channels", type=positive_int, default=5, help="output classes incl. background (default: 5)")
    p.add_argument("--roi-size", type=roi_size, default="96", help="window size for the MAC count (default: 96)")
    p.add_argument("--forward", metavar="PRESET", help="also run one forward pass of PRESET on a synthetic volume and time it")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "convert-official",
        help="convert an official RepUX-Net .pth checkpoint into a RepUX model folder",
        description="Reads the paper's REPUXNET state dict with torch.load(weights_only=True) (no pickled code is ever run), "
        "maps it strictly onto the deploy-form network and writes model.safetensors + model.json.",
    )
    p.add_argument("checkpoint", help="official .pth file (e.g. best_metric_model.pth)")
    p.add_argument("--labels", required=True, help="'flare' (4 organs), 'amos' (15 organs) or a label JSON file")
    add_output_option(p, help="model folder to write", metavar="FOLDER")
    p.add_argument("--id", dest="model_id", type=model_id, help="model id (default: the folder name)")
    p.add_argument("--spacing", type=csv_floats(3, "x,y,z (mm)", positive=True), help="target spacing x,y,z in mm (default: the official recipe of the label set)")
    p.add_argument("--install", action="store_true", help="also install the result into the model store")
    add_overwrite_option(p, help="replace an existing output folder")
    add_common(p, progress=False)
    p.set_defaults(func=cmd_convert_official)


def cmd_info(args: argparse.Namespace, ctx: Any) -> int:
    from repux._version import __version__

    if args.model:
        from repux.models.store import resolve_model

        card = resolve_model(args.model)
        d = card.to_dict()
        d["path"] = str(card.path)
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print(f"{card.id} {card.version}: {card.name}")
            print(f"  path: {card.path}")
            print(f"  architecture: RepUXNet {card.model_args}")
            print(f"  labels: {', '.join(f'{lab.value}={lab.name}' for lab in card.labels)}")
            print(
                f"  preprocessing: {card.preprocessing.orientation}, spacing {card.preprocessing.spacing} mm, HU {card.preprocessing.intensity.a_min:g}..{card.preprocessing.intensity.a_max:g}"
            )
            print(f"  roi_size: {card.roi_size}, sha256: {card.sha256}")
            if card.provenance:
                print(f"  provenance: {json.dumps(card.provenance)}")
        return 0
    import torch

    from repux.device import cpu_features, describe_devices

    info = {
        "repux": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "devices": describe_devices(),
        "cpu": cpu_features(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        info["monai"] = None
    try:
        import SimpleITK as sitk

        info["simpleitk"] = sitk.Version_VersionString()
    except ImportError:
        info["simpleitk"] = None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def count_macs(model: Any, roi_size: tuple[int, int, int]) -> int:
    """Nominal multiply-accumulates of all convolutions for one window (meta-device forward)."""
    import copy
    import math

    import torch
    from torch import nn

    total = [0]

    def hook(m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        k = math.prod(m.kernel_size)
        if isinstance(m, nn.ConvTranspose3d):
            x = inputs[0]
            total[0] += x.numel() // x.shape[0] * m.out_channels // m.groups * k
        else:
            total[0] += output.numel() // output.shape[0] * m.in_channels // m.groups * k

    meta = copy.deepcopy(model).to("meta")
    for mod in meta.modules():
        if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d)):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, meta.in_channels, *roi_size, device="meta"))
    return total[0]


def cmd_presets(args: argparse.Namespace, ctx: Any) -> int:
    import time

    import torch

    from repux.nn import PRESETS, create_model

    roi = args.roi_size
    rows = []
    for name, cfg in PRESETS.items():
        m = create_model(name, out_channels=args.out_channels)
        params = sum(p.numel() for p in m.parameters())
        rows.append(
            {
                "preset": name,
                "feature_sizes": list(cfg["feature_sizes"]),
                "depths": list(cfg["depths"]),
                "kernel_size": cfg["kernel_size"],
                "hidden_size": cfg["hidden_size"],
                "parameters": params,
                "gmac_per_window": round(count_macs(m, roi) / 1e9, 2),
                "roi_size": list(roi),
            }
        )
    result: dict[str, Any] = {"out_channels": args.out_channels, "presets": rows}
    if args.forward:
        net = create_model(args.forward, out_channels=args.out_channels).eval().reparameterize()
        x = torch.randn(1, 1, *roi, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            t = time.perf_counter()
            y = net(x)
            dt = time.perf_counter() - t
        result["forward"] = {
            "preset": args.forward,
            "input": list(x.shape),
            "output": list(y.shape),
            "seconds": round(dt, 3),
            "threads": torch.get_num_threads(),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'preset':<7} {'features':<20} {'depths':<12} {'k':>3} {'hidden':>6} {'parameters':>12} {'GMAC/window':>12}")
    for r in rows:
        print(
            f"{r['preset']:<7} {tuple(r['feature_sizes'])!s:<20} {tuple(r['depths'])!s:<12} {r['kernel_size']:>3} {r['hidden_size']:>6} "
            f"{r['parameters']:>12,} {r['gmac_per_window']:>12.1f}"
        )
    print(f"(out_channels={args.out_channels}, window {roi[0]}x{roi[1]}x{roi[2]})")
    if "forward" in result:
        f = result["forward"]
        print(
            f"forward pass of '{f['preset']}': input {tuple(f['input'])} -> logits {tuple(f['output'])} in {f['seconds']:.2f} s on {f['threads']} CPU threads"
        )
    return 0


def cmd_convert_official(args: argparse.Namespace, ctx: Any) -> int:
    from repux.config import Preprocessing, spacing_from
    from repux.labels import get_label_set
    from repux.models.official import OFFICIAL_PREPROCESSING, convert_official

    labels = get_label_set(args.labels)
    prep = OFFICIAL_PREPROCESSING.get(labels.name, Preprocessing())
    if args.spacing:
        from dataclasses import replace

        prep = replace(prep, spacing=spacing_from(list(args.spacing)))
    card = convert_official(args.checkpoint, labels, args.output, preprocessing=prep, model_id=args.model_id, overwrite=args.overwrite)
    print(f"wrote {card.path} ({card.id}: {len(card.labels)} organs, sha256 {card.sha256[:16]}...)")
    check = card.provenance.get("kernel_check", {})
    if check:
        print(f"large kernels: {check['large_kernels']}, centre-only (official training bug): {check['centre_only']}")
    if args.install:
        from repux.models.store import ModelStore

        installed = ModelStore().import_model(card.path)
        print(f"installed as '{installed.id}' in {installed.path}")
    return 0
