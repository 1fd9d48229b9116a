"""Per-organ Dice of models on the shared real CT (the dev set; TotalSegmentator labels, a silver standard).

Never train on this CT: it is the honest check of models trained without it.  Organs are matched by name
between the model and the reference (AMOS-15 layout for sided models, FLARE-4 for models with one 'kidney').

    python scripts/eval_dev_ct.py -m repux-tiny-abdomen-ct -m repux-tiny-phantom --out dev-ct.json [--largest-component]
    python scripts/eval_dev_ct.py -m MODEL_WITH_CLICK_GUIDANCE --clicks 0,1,3,5,10   # Dice after N simulated clicks, NoC
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "data" / "ct-abdomen"


def dev_dataset(layout: str, folder: Path):
    from repux.data.datasets import Case, load_dataset, write_manifest
    from repux.labels import LabelSet

    names = json.loads((DEV / "labels" / "labelmaps.json").read_text())[layout]
    labels = LabelSet.from_names([names[str(v)] for v in range(1, len(names))], name=layout)
    case = Case("example_ct", DEV / "example_ct.nii.gz", DEV / "labels" / f"example_ct_{layout}.nii.gz", "test")
    write_manifest(folder, labels, [case], name=f"dev-ct-{layout}")
    return load_dataset(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", required=True, help="model id or folder (repeatable)")
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--largest-component", action="store_true", help="keep the largest connected component per organ")
    ap.add_argument("--clicks", help="simulated click counts, e.g. 0,1,3,5,10 (a model with click guidance)")
    args = ap.parse_args()
    if not (DEV / "example_ct.nii.gz").is_file():
        print(f"the dev CT is not at {DEV}", file=sys.stderr)
        return 1
    from repux.models.store import resolve_model
    from repux.training.evaluate import evaluate

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.model:
            card = resolve_model(m)
            sided = any("right" in n or "left" in n for n in card.labels.names)
            ds = dev_dataset("amos15" if sided else "flare4", Path(tmp) / m.replace("/", "_"))
            kw = {"largest_component": True} if args.largest_component else {}
            t0 = time.perf_counter()
            clicks = tuple(sorted({int(v) for v in args.clicks.split(",")})) if args.clicks else None
            report = evaluate(m, ds, device=args.device, segmenter_kwargs=kw, clicks=clicks)
            seconds = time.perf_counter() - t0
            row = report["cases"][0]
            dice = {o: (None if row[f"{o}/dice"] is None else round(row[f"{o}/dice"], 3)) for o in report["organs"]}
            results[m] = {"reference": "amos15" if sided else "flare4", "dice": dice, "seconds": round(seconds, 1), "largest_component": args.largest_component}
            print(f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None) + f"  ({seconds:.1f} s)")
            if clicks:
                from repux.training.evaluate import format_clicks

                results[m]["clicks"] = {k: v for k, v in report["clicks"].items() if k != "per_case"}
                print(format_clicks(report))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
