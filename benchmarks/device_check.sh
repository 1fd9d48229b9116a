#!/usr/bin/env bash
# One prepared run on a lent GPU machine: the `gpu` tests, then benchmarks/gpu.sh; everything goes to OUT_DIR.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        (about 8 minutes on an H100/H200-class GPU)
#
# The machine has PyTorch (CUDA) but no network: packages it lacks (monai, SimpleITK; their wheels for its Python)
# are taken from .whl/ when that folder exists (pip download --only-binary=:all: --python-version 3.12 ... -d .whl
# monai SimpleITK on a machine with PyPI; see the device tool's notes). The repository runs from its folder
# (PYTHONPATH), so no build backend is needed there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/repux-site .whl/*.whl && export PYTHONPATH=/tmp/repux-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, sys; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'python', sys.version.split()[0])"
  grep -m1 "model name" /proc/cpuinfo
} 2>&1 | tee "$OUT/device.txt"
"$PY" -m pytest -m gpu Testing/device/test_gpu.py -v -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.txt"
tests=${PIPESTATUS[0]}
timeout 420 bash benchmarks/gpu.sh "$OUT" 2>&1 | tail -n 80
echo "gpu tests exit code: $tests" | tee -a "$OUT/device.txt"
exit "$tests"
