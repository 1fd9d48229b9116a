#!/usr/bin/env python
"""BFR ablation: the same network and budget trained three ways, validation Dice for each.

* ``bfr``      - RepUX's corrected re-parameterization: the optimizer trains the raw
                 kernel W, the convolution uses W * BFM (gradient BFM * g);
* ``plain``    - the same large kernels trained directly (no BFM);
* ``official`` - the paper's code: ``dwconv.weight = nn.Parameter(W * BFM)`` inside
                 ``forward``. Emulated exactly: every forward multiplies the stored kernel
                 by BFM in place and convolves with it detached, so the kernel gets no
                 gradient (the optimizer's Parameter is orphaned) and decays towards its
                 centre tap; biases, BatchNorm and everything else train normally.

Usage (the README's ablation table was produced by exactly this)::

    python scripts/ablation.py --dataset PHANTOMS --preset tiny --spacing 4,4,4 --roi-size 64 \
        --max-iterations 400 --lr 3e-3 --seed 0 --out ablation.json

(the demo model's recipe, ``scripts/build_demo_model.sh``).

Not a test: it trains three models (about 3 x the time of one run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from repux.config import Preprocessing, spacing_from
from repux.data.datasets import load_dataset
from repux.nn import BFRDepthwiseConv3d, create_model
from repux.nn.lkconv import depthwise_conv3d
from repux.training.trainer import TrainConfig, train


def official_forward(self: BFRDepthwiseConv3d, x: torch.Tensor) -> torch.Tensor:
    """The official training-time forward: re-wrap W * BFM as a new leaf, every call (train and eval)."""
    with torch.no_grad():
        self.weight.mul_(self.bfm.to(self.weight.dtype))
    return depthwise_conv3d(x, self.weight.detach(), self.bias, algorithm=self.algorithm)


def build(variant: str, preset: str, num_classes: int, seed: int):
    torch.manual_seed(seed)
    net = create_model(preset, out_channels=num_classes, deploy=variant == "plain")
    if variant == "official":
        for m in net.modules():
            if isinstance(m, BFRDepthwiseConv3d):
                m.forward = official_forward.__get__(m, BFRDepthwiseConv3d)
    return net


def centre_only_fraction(net) -> float:
    kernels = [m.weight.detach() for m in net.modules() if isinstance(m, BFRDepthwiseConv3d)]
    centre = 0
    for k in kernels:
        c = k.shape[-1] // 2
        off = k.clone()
        off[..., c, c, c] = 0
        centre += int(off.abs().max() == 0)
    return centre / max(1, len(kernels))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--spacing", default="4,4,4")
    p.add_argument("--roi-size", default="64")
    p.add_argument("--max-iterations", type=int, default=400)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--val-interval", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="bfr,plain,official")
    p.add_argument("--run-root", default="ablation-runs")
    p.add_argument("--out", default="ablation.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    ds = load_dataset(args.dataset)
    results = {}
    for variant in args.variants.split(","):
        cfg = TrainConfig(
            preset=args.preset,
            roi_size=args.roi_size,
            max_iterations=args.max_iterations,
            val_interval=args.val_interval,
            lr=args.lr,
            warmup_iterations=args.warmup,
            crop_sampling="classes",
            channels_last=True,
            seed=args.seed,
            kernel_mode="plain" if variant == "plain" else "bfr",
            preprocessing=Preprocessing(spacing=spacing_from([float(v) for v in args.spacing.split(",")])),
            checkpoint_interval=args.max_iterations,
        )
        net = build(variant, args.preset, ds.labels.num_classes, args.seed)
        t = time.time()
        res = train(ds, None, cfg, run_dir=Path(args.run_root) / variant, model=net, device="cpu")
        results[variant] = {
            "best_mean_dice": res.best_mean_dice,
            "best_dice": res.best_dice,
            "final_val": next((h for h in reversed(res.history) if "val_dice" in h), {}).get("val_dice"),
            "iterations": res.iterations,
            "minutes": round((time.time() - t) / 60, 1),
            "centre_only_kernels": centre_only_fraction(net),
        }
        print(
            f"{variant:>9}: best mean Dice {res.best_mean_dice:.4f}  {res.best_dice}  centre-only kernels {results[variant]['centre_only_kernels']:.0%}",
            flush=True,
        )
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print("\nvariant    mean Dice  " + "  ".join(f"{n:>9}" for n in ds.labels.names))
    for v, r in results.items():
        print(f"{v:<10} {r['best_mean_dice']:.4f}     " + "  ".join(f"{(r['best_dice'].get(n) or 0):>9.4f}" for n in ds.labels.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
