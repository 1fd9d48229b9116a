"""Figures of the built-in model's README section.

* ``synth-examples.png``: synthetic training CTs rendered from real BTCV label maps (``repux synth``), organs overlaid;
* ``dev-ct-result.png``: the model's result on the shared real CT beside the TotalSegmentator labels (silver standard).

    python scripts/synth_figure.py --labels ../shared/data/labelmaps/btcv-13organ-2mm --model repux-tiny-abdomen-ct \
        --out Resources/Screenshots
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "data" / "ct-abdomen"


def stack(paths: list[Path], out: Path) -> None:
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    w = max(i.width for i in ims)
    canvas = Image.new("RGB", (w, sum(i.height for i in ims)), (20, 20, 24))
    y = 0
    for i in ims:
        canvas.paste(i, (0, y))
        y += i.height
    canvas.save(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="folder of BTCV label maps")
    ap.add_argument("--model", default="repux-tiny-abdomen-ct")
    ap.add_argument("--out", default="Resources/Screenshots")
    ap.add_argument("--maps", default="btcv_0001,btcv_0010,btcv_0030", help="label maps to render (comma-separated stems)")
    args = ap.parse_args()
    import repux
    from repux.data.synth import BTCV, SynthConfig, render_example
    from repux.labels import LabelSet
    from repux.tools.demo import overlay_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for i, stem in enumerate(args.maps.split(",")):
            ex = render_example(sitk.ReadImage(str(Path(args.labels) / f"{stem}.nii.gz")), BTCV, 100 + i, SynthConfig(mode="ct"))
            p = Path(tmp) / f"{stem}.png"
            overlay_png(ex.image, ex.labels, BTCV, p, title=f"synthetic CT from the {stem} label map ({ex.meta['phase']} phase, seed {100 + i})")
            parts.append(p)
        stack(parts, out / "synth-examples.png")
        ct = sitk.ReadImage(str(DEV / "example_ct.nii.gz"))
        result = repux.segment(ct, model=args.model, device="cpu")
        names = json.loads((DEV / "labels" / "labelmaps.json").read_text())["amos15"]
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DEV / "labels" / "example_ct_amos15.nii.gz")))
        mapped = np.zeros_like(ref, dtype=np.uint8)
        ts = LabelSet.from_names([names[str(v)] for v in range(1, len(names))], name="amos15")
        for lab in ts:
            mine = result.label_set.find(lab.name)
            if mine is not None:
                mapped[ref == lab.value] = mine.value
        ref_img = sitk.GetImageFromArray(mapped)
        ref_img.CopyInformation(result.labels)
        overlay_png(ct, result.labels, result.label_set, out / "dev-ct-result.png", title=f"real CT (dev set, never trained on): {args.model}",
                    reference=ref_img, row_names=("RepUX", "TotalSegmentator (silver standard)"))
    print(f"wrote {out / 'synth-examples.png'} and {out / 'dev-ct-result.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
