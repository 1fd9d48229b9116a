"""Click-to-segment latencies of repux.InteractiveSession on a synthetic 512x512x300 CT (built-in model).

Run: OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/interactive_latency.py
Prints JSON: model load, session open, cold click (no window computed), warm click (all windows computed), CPU flags.
"""

from __future__ import annotations

import json
import time

import numpy as np
import SimpleITK as sitk


def main() -> None:
    import torch

    from repux.data.phantom import generate_phantom
    from repux.inference import Segmenter
    from repux.labels import FLARE
    from repux.session import InteractiveSession

    ph = generate_phantom(3, orientation="axial", spacing=(3.2, 3.2, 6.0), size_mm=(409.6, 409.6, 450.0), noise_hu=15.0)
    ref = sitk.Image([512, 512, 300], sitk.sitkInt16)
    ref.SetSpacing((0.8, 0.8, 1.5))
    ref.SetDirection(ph.image.GetDirection())
    c = np.array(ph.image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ph.image.GetSize()]))
    ref.SetOrigin(tuple(c - np.array(ph.image.GetDirection()).reshape(3, 3) @ (np.array([511, 511, 299]) / 2 * np.array([0.8, 0.8, 1.5]))))
    ct = sitk.Resample(ph.image, ref, sitk.Transform(), sitk.sitkLinear, -1000, sitk.sitkInt16)
    lab = sitk.Resample(ph.label_map(FLARE), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(lab)
    out: dict = {"input_size": list(ct.GetSize()), "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    t = time.perf_counter()
    seg = Segmenter("repux-tiny-phantom", device="cpu")
    out["model_load_s"] = round(time.perf_counter() - t, 2)
    s = InteractiveSession(segmenter=seg, background=False)
    t = time.perf_counter()
    info = s.open(ct)
    out["open_s"] = round(time.perf_counter() - t, 2)
    out["windows"] = info["windows"]
    out["model_grid"] = info["model_grid_size"]

    def ras(value):
        pts = np.argwhere(arr == value)
        k, j, i = pts[len(pts) // 2]
        x, y, z = ct.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        return (-x, -y, z)

    r = s.click(ras(1))
    out["cold_click_s"] = round(r.seconds, 2)
    out["cold_click_windows"] = r.windows
    out["cold_click_organ"] = r.organ
    t = time.perf_counter()
    s.compute_all()
    out["rest_of_full_pass_s"] = round(time.perf_counter() - t, 2)
    r = s.click(ras(3))
    out["warm_click_s"] = round(r.seconds, 3)
    out["warm_click_organ"] = r.organ
    r = s.click(ras(1))
    out["warm_click_same_organ_s"] = round(r.seconds, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
