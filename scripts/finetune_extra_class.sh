#!/usr/bin/env bash
# Fine-tune the built-in model on phantoms with one extra organ class (vertebral column) and compare
# old and new classes on 10 never-seen phantoms.  CPU, 2 cores: about 12 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/finetune-extra}
mkdir -p "$W"
python -m repux phantoms --n 20 --seed 2000 --output "$W/train" --organs "liver,kidney,spleen,pancreas,vertebral column" --progress none
python -m repux phantoms --n 10 --seed 3000 --output "$W/test" --organs "liver,kidney,spleen,pancreas,vertebral column" --val-fraction 0 --progress none
python -m repux evaluate -m repux-tiny-phantom --dataset "$W/test" --output "$W/eval-base" --progress none
python -m repux finetune --base repux-tiny-phantom --dataset "$W/train" --output "$W/model" --run-dir "$W/run" \
  --max-iterations 200 --val-interval 100 --lr 1e-3 --freeze-encoder 20 --channels-last --seed 0 --device cpu --progress none
python -m repux evaluate -m "$W/model" --dataset "$W/test" --output "$W/eval-finetuned" --progress none
python - "$W" <<'PY'
import json, sys
w = sys.argv[1]
base = json.load(open(f"{w}/eval-base.json"))["mean"]
ft = json.load(open(f"{w}/eval-finetuned.json"))["mean"]
print(f"{'organ':<18}{'base Dice':>10}{'fine-tuned':>12}{'change':>9}")
for organ in ["liver", "kidney", "spleen", "pancreas", "vertebral column"]:
    b, f = base.get(f"{organ}/dice"), ft.get(f"{organ}/dice")
    print(f"{organ:<18}{'-' if b is None else f'{b:.3f}':>10}{f:>12.3f}{'' if b is None else f'{f - b:+.3f}':>9}")
PY
