#!/usr/bin/env bash
# Rebuild the built-in default model repux/resources/models/repux-tiny-abdomen-ct exactly as shipped:
# synthetic CTs rendered from the 30 real BTCV organ label maps (no real image), then 'repux train'.
# CPU, 2 cores: ~10-20 minutes of rendering (120 examples) + the training (time budget, default 90 minutes).
# The same command runs on a GPU (--device cuda) and under torchrun (rank 0 renders, the others wait).
# Resumable: rerun with RESUME=1 after an interruption (rendered examples are kept, training continues from
# its last checkpoint in $WORK). STAGE2=1 adds the second stage of the shipped model (below). SYNTH_N, VAL_MAPS, MAX_IT, BUDGET, DEVICE, LABELS and OUT override the recipe (the slow
# test Testing/engine/data/test_synth.py::test_recipe_builds_a_model runs it small).
set -euo pipefail
cd "$(dirname "$0")/.."
LABELS=${LABELS:-../shared/data/labelmaps/btcv-13organ-2mm}
WORK=${1:-runs/builtin}
BUDGET=${BUDGET:-90m}
OUT=${OUT:-repux/resources/models/repux-tiny-abdomen-ct}
mkdir -p "$WORK"
DESCRIPTION="Built-in default: trained only on synthetic CTs rendered by 'repux synth' from the 30 manual BTCV organ label maps (background split into synthetic tissues; CT priors for native/portal/arterial phases, 10% random intensities). No real image was used in training. Research use only; not a medical device. Fine-tune it on your corrected cases (RepUX Trainer / repux finetune)."
EXTRA=()
[ "${RESUME:-0}" = "1" ] && EXTRA+=(--resume)
python -m repux train --synth "$LABELS" --synth-n "${SYNTH_N:-4}" --synth-val-maps "${VAL_MAPS:-2}" --synth-workers 2 --synth-seed 0 \
  --run-dir "$WORK" --output "$OUT" \
  --name "RepUX tiny, abdominal CT (synthetic images from real BTCV label maps, 3 mm)" \
  --description "$DESCRIPTION" \
  --preset tiny --spacing 3,3,3 --roi-size 64 --max-iterations "${MAX_IT:-6000}" --time-budget "$BUDGET" --val-interval 500 \
  --lr 3e-3 --warmup 50 --crop-sampling classes --channels-last --seed 0 --device "${DEVICE:-cpu}" --weights-dtype float16 "${EXTRA[@]}"
# stage 2 (STAGE2=1, what the shipped model had): continue from the stage-1 model on 120 new synthetic CTs
# (--synth-seed 1) at a fresh learning-rate cycle; stage 1 (4,349 iterations, 160 min) + stage 2 (110 min) on 2 cores
if [ "${STAGE2:-0}" = "1" ]; then
  python -m repux synth --labels "$LABELS" -o "$WORK/synth-s1" --n "${SYNTH_N:-4}" --synth-val-maps "${VAL_MAPS:-2}" --synth-workers 2 --synth-seed 1
  STAGE1="$OUT.stage1"
  rm -rf "$STAGE1" && mv "$OUT" "$STAGE1"
  EXTRA2=()
  [ "${RESUME2:-0}" = "1" ] && EXTRA2+=(--resume)
  python -m repux finetune --base "$STAGE1" --dataset "$WORK/synth-s1" --run-dir "$WORK/stage2" --output "$OUT" \
    --lr 1e-3 --warmup 50 --max-iterations 3000 --time-budget "${BUDGET2:-110m}" --val-interval 500 --roi-size 64 \
    --crop-sampling classes --channels-last --augmentation standard --head-lr-scale 10 --seed 1 --device "${DEVICE:-cpu}" --weights-dtype float16 \
    --name "RepUX tiny, abdominal CT (synthetic images from real BTCV label maps, 3 mm)" --description "$DESCRIPTION" "${EXTRA2[@]}"
fi
# attribution of the training label maps in the model card (model.json only; the weights' sha256 is unchanged)
python - "$OUT" <<'PY'
import json, sys
p = sys.argv[1] + "/model.json"
d = json.load(open(p))
d["provenance"]["training_data"] = {
    "images": "none: synthetic CTs rendered by repux synth (repux.data.synth) from label maps only",
    "label_maps": "30 BTCV subjects, 13 manual organ labels at 2 mm (Learn2Reg 2020 task 3 version; 28 train, 2 validation maps)",
    "attribution": "BTCV: Landman et al., Multi-Atlas Labeling Beyond the Cranial Vault, 2015 (CC BY 4.0 as listed by kaiko-ai/eva; the Synapse release has its own terms of use); Learn2Reg: Hering et al., 2022",
    "dev_set_never_used": "../shared/data/ct-abdomen/example_ct (image and labels) was not used in training or model selection",
}
d["license"] = "Apache-2.0 (weights); training label maps: BTCV, attribution required (see provenance.training_data)"
json.dump(d, open(p, "w"), indent=2)
open(p, "a").write("\n")
PY
