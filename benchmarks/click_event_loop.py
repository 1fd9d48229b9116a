"""How long a click holds Slicer's event loop: the click tool in a real MRML scene (slicer-core, headless).

A front end calls two things from its event loop: the point-placed handler (a click: map the point, write one line to
the session process) and ``ClickSegmentTool.processEvents()`` (read the answers, write the changed box into the
segment). This script times every such call while clicking organs of a synthetic CT (a phantom, 0.8 x 0.8 x 1.5 mm by
default, as a CT from a scanner) with the built-in model, and prints the longest and the 95th percentile.
The network itself runs in the session's child process, so it never counts here.

Run: OMP_NUM_THREADS=2 python benchmarks/click_event_loop.py [--spacing 0.8,0.8,1.5] [--model repux-tiny-phantom]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", default="0.8,0.8,1.5", help="phantom voxel spacing x,y,z in mm (default: 0.8,0.8,1.5)")
    ap.add_argument("--model", default=None, help="model id or folder (default: the built-in model)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    import SimpleITK as sitk
    import vtk
    from RepUXSegmentLib.clicksession import ClickSegmentTool, clickPointList
    from RepUXSegmentLib.mrml import MRMLContext
    from scipy import ndimage

    from repux.data.phantom import generate_phantom
    from repux.device import cpu_features
    from repux.labels import FLARE

    spacing = tuple(float(v) for v in args.spacing.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        ph = generate_phantom(args.seed, spacing=spacing, orientation="axial")
        path = Path(tmp) / "ct.nrrd"
        sitk.WriteImage(ph.image, str(path))
        context = MRMLContext.headless(tmp)
        volume = context.volumesLogic.AddArchetypeVolume(str(path), "ct")
        truth = sitk.GetArrayFromImage(ph.label_map(FLARE))
        points = clickPointList(context.scene)
        timings: dict[str, list[float]] = {"click handler": [], "processEvents": []}
        tool = ClickSegmentTool(context, volume, points, model=args.model, device="cpu", pythonExecutable=sys.executable, extraArguments=["--no-background"])

        def pump(predicate, timeout=600.0) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                t = time.perf_counter()
                tool.processEvents()
                timings["processEvents"].append(time.perf_counter() - t)
                if predicate():
                    return
                time.sleep(0.01)
            raise TimeoutError("no answer")

        tool.start()
        try:
            pump(lambda: tool.ready and tool.opened)
            ijk_to_ras = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(ijk_to_ras)
            answers = []
            for value in (1, 2, 3, 1):  # liver (cold), kidney, spleen, liver again (warm)
                inner = np.argwhere(ndimage.binary_erosion(truth == value, iterations=3))
                k, j, i = inner[len(inner) // 2]
                before = len(tool.outcomes)
                t = time.perf_counter()
                points.AddControlPoint(vtk.vtkVector3d(*ijk_to_ras.MultiplyPoint([float(i), float(j), float(k), 1.0])[:3]))
                timings["click handler"].append(time.perf_counter() - t)
                pump(lambda b=before: len(tool.outcomes) > b)
                o = tool.outcomes[-1]
                answers.append({"status": o.status, "organ": o.organ, "round_trip_s": round(o.seconds, 3), "engine_s": round(o.engineSeconds, 3)})
        finally:
            tool.stop()
        out = {
            "cpu": cpu_features(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "volume": list(ph.image.GetSize()),
            "spacing_mm": list(spacing),
            "clicks": answers,
        }
        for name, values in timings.items():
            v = np.array(values) * 1000
            out[f"{name} max ms"] = round(float(v.max()), 1)
            out[f"{name} p95 ms"] = round(float(np.percentile(v, 95)), 1)
            out[f"{name} calls"] = len(values)
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
