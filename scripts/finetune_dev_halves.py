"""The fine-tune gain, measured honestly: fine-tune a COPY of a model on one half of the dev CT, evaluate on the other.

The shared real CT (TotalSegmentator labels, silver standard) is cut into an inferior and a superior slab at the
kidneys' centre. A copy of the model is fine-tuned (``repux finetune``, as RepUX Trainer runs it) on the superior slab and
both models are evaluated on the inferior slab, which the fine-tuned copy never saw. The built-in model itself never sees
the dev CT.

    python scripts/finetune_dev_halves.py --model repux-tiny-abdomen-ct --work runs/dev-halves --iterations 150
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "data" / "ct-abdomen"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="repux-tiny-abdomen-ct")
    ap.add_argument("--work", default="runs/dev-halves")
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--time-budget", default="20m")
    args = ap.parse_args()
    from repux.data.datasets import Case, load_dataset, write_manifest
    from repux.models.store import resolve_model
    from repux.training.evaluate import evaluate

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    card = resolve_model(args.model)
    ct = sitk.ReadImage(str(DEV / "example_ct.nii.gz"))
    total = sitk.ReadImage(str(DEV / "labels" / "example_ct_total117.nii.gz"))
    names = json.loads((DEV / "labels" / "total117_classmap.json").read_text())["total"]
    lut = np.zeros(256, np.uint8)
    for v, n in names.items():
        lab = card.labels.find(n)
        if lab is not None:
            lut[int(v)] = lab.value
    labels = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(total)])
    labels.CopyInformation(total)
    kid = [lab.value for lab in card.labels if "kidney" in lab.name]
    zs = np.nonzero(np.isin(sitk.GetArrayViewFromImage(labels), kid).any(axis=(1, 2)))[0]
    cut = int(zs.mean()) if len(zs) else ct.GetSize()[2] // 2
    halves = {}
    for name, (z0, z1) in {"inferior": (0, cut), "superior": (cut, ct.GetSize()[2])}.items():
        folder = work / name
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        img_p, lab_p = folder / "imagesTr" / f"{name}.nii.gz", folder / "labelsTr" / f"{name}.nii.gz"
        sitk.WriteImage(ct[:, :, z0:z1], str(img_p))
        sitk.WriteImage(labels[:, :, z0:z1], str(lab_p))
        write_manifest(folder, card.labels, [Case(name, img_p, lab_p, "train")], name=f"dev-ct-{name}")
        halves[name] = folder
    tuned = work / "finetuned"
    cmd = [sys.executable, "-m", "repux", "finetune", "--base", args.model, "--dataset", str(halves["superior"]), "--output", str(tuned),
           "--run-dir", str(work / "run"), "--max-iterations", str(args.iterations), "--time-budget", args.time_budget, "--val-fraction", "0",
           "--device", "cpu"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    test = load_dataset(halves["inferior"])
    out = {"cut_slice": cut, "base": {}, "finetuned": {}}
    for key, m in (("base", args.model), ("finetuned", str(tuned))):
        rep = evaluate(m, test, device="cpu")
        out[key] = {o: rep["cases"][0][f"{o}/dice"] for o in rep["organs"]}
    (work / "result.json").write_text(json.dumps(out, indent=2))
    for o in out["base"]:
        b, f = out["base"][o], out["finetuned"][o]
        if b is not None or f is not None:
            print(f"{o:32s} {b if b is not None else float('nan'):.3f} -> {f if f is not None else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
