#!/usr/bin/env bash
# GPU benchmark of RepUX (CUDA events, one warm-up, medians) - about 5 minutes on an H100-class GPU.
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# Runs on a machine with an NVIDIA GPU and a CUDA build of torch. Writes OUT_DIR/gpu-benchmark.{txt,json}
# and prints the card's name with every figure. Sections: inference per 96^3 window for base/small/tiny
# (reference fp32 native conv vs fast fp32 vs bf16), training step at 64^3 (native autograd vs the
# exact FFT/forward-conv backward vs + activation checkpointing, AMP on), and the whole-volume run on the
# real CT when ../shared/data is present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import repux" 2>/dev/null; then
  "$PY" -m pip install --quiet -e . 2>/dev/null || "$PY" -m pip install --quiet --no-deps -e .
fi
"$PY" - <<'PYEOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA device visible to torch " + torch.__version__)
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
CT=../shared/data/ct-abdomen/example_ct.nii.gz
VOLUME=()
if [ -f "$CT" ]; then VOLUME=(--input "$CT"); fi
SECTIONS=window,train
[ -f "$CT" ] && SECTIONS=window,train,volume
"$PY" -m repux benchmark --device cuda --presets base,small,tiny --sections "$SECTIONS" "${VOLUME[@]}" \
  --repeats 10 --train-repeats 5 -o "$OUT/gpu-benchmark.json" --progress none | tee "$OUT/gpu-benchmark.txt"
# large-kernel algorithm choice per stage shape (direct cuDNN vs FFT), forward and backward
"$PY" - <<'PYEOF' | tee -a "$OUT/gpu-benchmark.txt"
import torch, statistics
from repux.nn.lkconv import depthwise_conv3d, select_algorithm
dev = torch.device("cuda")
print("\n21^3 depthwise conv per stage (ms, median of 10, CUDA events):")
print(f"  {'C':>4} {'S':>3} {'auto':>6} {'direct fwd':>10} {'fft fwd':>8} {'direct f+b':>10} {'fft f+b':>8}")
def t(fn, n=10):
    fn(); torch.cuda.synchronize(); ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)
for C, S in [(48, 48), (96, 24), (192, 12), (384, 6), (48, 32), (96, 16)]:
    x = torch.randn(2, C, S, S, S, device=dev, requires_grad=True)
    w = torch.randn(C, 1, 21, 21, 21, device=dev, requires_grad=True)
    row = [C, S, select_algorithm((2, C, S, S, S), (min(21, 2 * S - 1),) * 3, dev)]
    with torch.no_grad():
        row += [t(lambda: depthwise_conv3d(x, w, algorithm=a)) for a in ("direct", "fft")]
    row += [t(lambda: depthwise_conv3d(x, w, algorithm=a).sum().backward()) for a in ("direct", "fft")]
    print(f"  {row[0]:>4} {row[1]:>3} {row[2]:>6} {row[3]:>10.2f} {row[4]:>8.2f} {row[5]:>10.2f} {row[6]:>8.2f}")
PYEOF
echo "results: $OUT/gpu-benchmark.txt $OUT/gpu-benchmark.json"
