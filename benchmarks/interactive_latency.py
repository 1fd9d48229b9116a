"""Click-to-segment latencies on a synthetic 512x512x300 CT with the built-in model (same as repux benchmark --sections interactive).

Run: OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/interactive_latency.py
"""

from __future__ import annotations

import json
import time


def main() -> None:
    from repux.device import cpu_features
    from repux.inference.segmenter import Segmenter
    from repux.inference.session import measure_latencies

    t = time.perf_counter()
    seg = Segmenter("repux-tiny-phantom", device="cpu")
    out = {"model_load_s": round(time.perf_counter() - t, 2), "cpu": cpu_features()}
    out.update(measure_latencies(seg))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
