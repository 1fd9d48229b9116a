#!/usr/bin/env python
"""Sliding-window overlap: time and Dice against reference labels, per overlap, on one CT.

The paper's test script uses overlap 0.7; RepUX defaults to 0.5 (``--quality standard``). This prints, for
each overlap, the number of windows, the time and the Dice of every organ against a reference label map, plus
the Dice between each output and the output at the first overlap::

    python scripts/overlap_study.py --input ../shared/data/ct-abdomen/example_ct.nii.gz \\
        --labels ../shared/data/ct-abdomen/labels/example_ct_flare4.nii.gz --model repux-tiny-phantom

Not a test; the README's overlap figures come from exactly this command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import SimpleITK as sitk

from repux.inference.segmenter import Segmenter


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float | None:
    x, y = a == value, b == value
    total = int(x.sum() + y.sum())
    return None if total == 0 else round(2.0 * float(np.logical_and(x, y).sum()) / total, 4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--labels", required=True, help="reference label map on the input's grid, values as in the model")
    p.add_argument("--model", default="repux-tiny-phantom")
    p.add_argument("--overlaps", default="0.7,0.5,0.25")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(args.labels))
    rows, first = [], None
    for overlap in [float(v) for v in args.overlaps.split(",")]:
        seg = Segmenter(args.model, device="cpu", overlap=overlap)
        seg.segment(args.input)  # warm-up
        t = time.perf_counter()
        result = seg.segment(args.input)
        seconds = time.perf_counter() - t
        out = sitk.GetArrayFromImage(result.labels)
        first = out if first is None else first
        names = {lab.value: lab.name for lab in result.label_set}
        rows.append(
            {
                "overlap": overlap,
                "windows": result.summary["windows"],
                "seconds": round(seconds, 2),
                "dice_vs_labels": {names[v]: dice(out, ref, v) for v in names},
                "dice_vs_first": {names[v]: dice(out, first, v) for v in names},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
