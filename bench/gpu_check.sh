#!/usr/bin/env bash
# GPU check of dva, under 5 minutes on one H100: ViT-B/16 bf16 speed and a 1-step DVA smoke test.
#
#   OUT=/some/dir bash bench/gpu_check.sh        # everything it prints also lands in $OUT
#
# 1. checks that python has torch with CUDA; installs only the missing pure dependencies of
#    pyproject.toml, with torch pinned to the installed build (never another torch);
# 2. bench/speed.py --only train,infer on CUDA in bf16, batches 32 and 128: training step
#    ICA vs full fine-tuning (img/s, peak memory), inference merged ICA vs plain timm;
# 3. a 1-step DVA training (ICA + OPA views + DPT) in bf16 on CUDA on generated images,
#    then dva eval and dva export of that run;
# 4. if time is left: embedding from JPEG files with DataLoader workers, and torch.compile.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t dva-gpu-check-XXXX)}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=285  # seconds for the whole script; optional steps only run in what is left
remaining() { echo $((BUDGET - SECONDS)); }
echo "== dva gpu check, results in $OUT"

echo "== 1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
"$PY" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("missing: torch (install a CUDA build of torch first; this script never installs torch)")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if not torch.cuda.is_available():
    sys.exit("missing: a CUDA device visible to torch (torch.cuda.is_available() is False)")
print(f"GPU: {torch.cuda.get_device_name(0)}, flash SDP enabled: {torch.backends.cuda.flash_sdp_enabled()}")
EOF
missing=$("$PY" - <<'EOF'
import importlib.util, re, tomllib
modules = {"pyyaml": "yaml", "pillow": "PIL", "faiss-cpu": "faiss"}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for requirement in deps:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()
    if name != "torch" and importlib.util.find_spec(modules.get(name, name.replace("-", "_"))) is None:
        print(f"'{requirement}'", end=" ")
EOF
)
if [ -n "$missing" ]; then
  echo "missing python packages: $missing; installing them (torch pinned)"
  "$PY" -c "import torch; print('torch==' + torch.__version__)" > "$OUT/constraints.txt"
  eval "timeout 180 \"$PY\" -m pip install -q -c \"$OUT/constraints.txt\" $missing" \
    || { echo "could not install: $missing (no network?); install them, then rerun"; exit 3; }
fi

echo "== 2. speed: training and inference, ViT-B/16 224px bf16, batches 32 and 128"
timeout 170 "$PY" bench/speed.py --device cuda --precision bf16 --only train,infer --batch-sizes 32,128 \
  --out "$OUT" | tee "$OUT/speed.md"

echo "== 3. DVA smoke test: 1 training step in bf16 on CUDA, then eval and export"
SMOKE="$OUT/smoke"
rm -rf "$SMOKE"
timeout 90 "$PY" - "$SMOKE/cub" <<'EOF'
# A CUB-200-2011 layout with 4 classes of 8 generated photos (and their boxes): the open split
# trains on classes 0-1 (16 images: one batch of 16) and tests on classes 2-3.
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
images, labels, split, boxes = [], [], [], []
rng = np.random.default_rng(0)
for c in range(4):
    (root / "images" / f"{c + 1:03d}.S{c}").mkdir(parents=True)
    for i in range(8):
        n = c * 8 + i + 1
        pixels = np.clip(rng.normal(60 * c + 40, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
        rel = f"{c + 1:03d}.S{c}/{i}.jpg"
        Image.fromarray(pixels).save(root / "images" / rel)
        images.append(f"{n} {rel}"); labels.append(f"{n} {c + 1}"); split.append(f"{n} {i % 2}")
        boxes.append(f"{n} 20.0 16.0 60.0 50.0")
for name, lines in [("images", images), ("image_class_labels", labels), ("train_test_split", split),
                    ("bounding_boxes", boxes)]:
    (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
(root / "classes.txt").write_text("\n".join(f"{c + 1} {c + 1:03d}.S{c}" for c in range(4)) + "\n")
EOF
timeout 120 "$PY" -m dva train --out "$SMOKE/run" --dataset cub --data "$SMOKE/cub" --method dva --detector dataset \
  --backbone vit_base_patch16_224 --no-pretrained --epochs 1 --batch-size 16 --device cuda --precision bf16 \
  --workers 2 --quiet --json
timeout 60 "$PY" - "$SMOKE/run" <<'EOF'
import json, math, sys
from pathlib import Path
run = Path(sys.argv[1])
steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
epoch = [s for s in steps if s["type"] == "epoch"][-1]
assert (run / "summary.json").is_file() and (run / "model.safetensors").is_file(), "run incomplete"
assert math.isfinite(epoch["loss"]), f"loss is {epoch['loss']}"
print(f"SMOKE OK: 1 step of DVA in bf16 on CUDA, loss {epoch['loss']:.4f}, events {epoch.get('events', {})}")
EOF
timeout 60 "$PY" -m dva eval --run "$SMOKE/run" --device cuda --workers 2 --quiet --json
timeout 90 "$PY" -m dva export --run "$SMOKE/run" --out "$SMOKE/export"

echo "== 4. optional rows (seconds left: $(remaining))"
if [ "$(remaining)" -gt 60 ]; then
  timeout $(( $(remaining) / 2 )) "$PY" bench/speed.py --device cuda --precision bf16 --only e2e --workers 0,8,15 \
    --out "$OUT" | tee "$OUT/speed_e2e.md" || echo "e2e row stopped (time budget)"
fi
if [ "$(remaining)" -gt 45 ]; then
  timeout $(( $(remaining) - 10 )) "$PY" bench/speed.py --device cuda --precision bf16 --only infer,train --compile \
    --batch-sizes 128 --out "$OUT" | tee "$OUT/speed_compile.md" || echo "compile rows stopped (time budget)"
fi
echo "== done in ${SECONDS}s; results in $OUT"
