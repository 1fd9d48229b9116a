#!/usr/bin/env python
"""Plot a training run: loss per iteration and validation Dice per organ.

    python scripts/plot_training.py RUN_DIR_OR_PROGRESS.jsonl --out curve.png [--title TEXT]

RUN_DIR is a ``repux train``/``repux finetune`` run folder (its ``checkpoint.pt`` holds the
history, loaded with ``weights_only=True``); a ``.jsonl`` file is a saved ``--progress json``
stream.  Needs matplotlib (``pip install "repux[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_history(source: Path) -> list[dict]:
    if source.is_dir():
        import torch

        return list(torch.load(str(source / "checkpoint.pt"), map_location="cpu", weights_only=True)["history"])
    events = [json.loads(line) for line in source.read_text().splitlines() if line.startswith("{")]
    return [e for e in events if "iteration" in e and ("loss" in e or "val_dice" in e)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = load_history(args.source)
    train = [h for h in hist if "loss" in h]
    val = [h for h in hist if h.get("val_dice")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    its = [h["iteration"] for h in train]
    loss = [h["loss"] for h in train]
    a1.plot(its, loss, color="#bbbbbb", lw=0.8, label="loss")
    k = 10
    if len(loss) > k:
        smooth = [sum(loss[max(0, i - k + 1) : i + 1]) / len(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
        a1.plot(its, smooth, color="#1f77b4", lw=1.6, label=f"loss (mean of {k})")
    a1.set_xlabel("iteration")
    a1.set_ylabel("Dice + cross-entropy loss")
    a1.legend(frameon=False)
    a1.grid(alpha=0.3)
    organs = list(val[0]["val_dice"]) if val else []
    for o in organs:
        a2.plot([h["iteration"] for h in val], [h["val_dice"].get(o) for h in val], marker="o", label=o)
    if val:
        a2.plot([h["iteration"] for h in val], [h.get("val_mean_dice") for h in val], "k--", marker="s", label="mean")
    a2.set_xlabel("iteration")
    a2.set_ylabel("validation Dice (held-out)")
    a2.set_ylim(0, 1)
    a2.legend(frameon=False, fontsize=8, loc="lower right")
    a2.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} ({len(train)} iterations, {len(val)} validations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
