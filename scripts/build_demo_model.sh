#!/usr/bin/env bash
# Rebuild the built-in demo model repux/resources/models/repux-tiny-phantom exactly as shipped.
# CPU, 2 cores: about 13 minutes for the training (plus ~1 minute for the phantoms).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/demo-model}
mkdir -p "$WORK"
python -m repux phantoms --n 40 --output "$WORK/phantoms" --seed 0
rm -rf repux/resources/models/repux-tiny-phantom
python -m repux train --dataset "$WORK/phantoms" --out repux/resources/models/repux-tiny-phantom --run-dir "$WORK/run" \
  --name "RepUX tiny, synthetic abdominal phantoms (4 mm)" \
  --description "Demonstration model trained by 'repux train' on 32 synthetic CT phantoms (repux phantoms --n 40 --seed 0). It segments the phantoms; it is NOT trained on patient CT and is not for clinical use. Fine-tune it on your own cases (repux finetune / RepUXTrainer)." \
  --preset tiny --spacing 4,4,4 --roi-size 64 --max-iterations 400 --time-budget 15m --val-interval 100 \
  --lr 3e-3 --warmup 20 --crop-sampling classes --channels-last --seed 0 --device cpu --weights-dtype float16
