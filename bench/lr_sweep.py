"""Choose the adapter and proxy learning rates (and DPT's lambda) by measurement, never on test classes.

cub100 open split: the training classes 0-49 are divided again, classes 40-49 held out as a
validation side (``--val-classes 10``); test classes 50-99 are not read. Each (lr, proxy_lr)
pair trains ICA (q,v, r16) on the offline DINOv2 ViT-S/14 and reports validation Recall@1.

    python bench/lr_sweep.py --lrs 1e-4,3e-4,1e-3,3e-3,1e-2 --proxy-lrs 1e-1 --epochs 1
    python bench/lr_sweep.py --method dva --boxes boxes/cub100_train.jsonl --lambdas 0,1,3 --lrs 1e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig
from dva.train import Trainer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cub100"))
    parser.add_argument("--backbone", default="dinov2_vits14.imgfocus")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--method", default="ica")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2")
    parser.add_argument("--proxy-lrs", default="1e-1")
    parser.add_argument("--lambdas", default="3", help="DPT weights to try (--method dva only)")
    parser.add_argument("--boxes", default=None, help="training boxes (--method dva)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/lr_sweep.json")
    args = parser.parse_args()

    rows = []
    lambdas = [float(x) for x in args.lambdas.split(",")] if args.method == "dva" else [3.0]
    for lambda_dist in lambdas:
        for proxy_lr in map(float, args.proxy_lrs.split(",")):
            for lr in map(float, args.lrs.split(",")):
                config = RunConfig(
                    model=ModelConfig(backbone=args.backbone, img_size=args.img_size, method=args.method),
                    data=DataConfig(dataset="cub100", root=args.data, split="open", val_classes=10),
                    train=TrainConfig(epochs=args.epochs, lr=lr, proxy_lr=proxy_lr, seed=args.seed,
                                      lambda_dist=lambda_dist),
                    opa=OPAConfig(boxes=args.boxes),
                )
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as run_dir:
                    summary = Trainer(config, run_dir, progress=False).fit()
                val = summary["last_epoch"]["val"]
                rows.append({"lr": lr, "proxy_lr": proxy_lr, "lambda": lambda_dist, "val_recall@1": val["recall@1"],
                             "val_map@r": val["map@r"], "minutes": (time.perf_counter() - start) / 60})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"| method | lambda | lr | proxy lr | val R@1 | val MAP@R |  (cub100 classes 40-49, {args.epochs} epoch(s), "
          f"{args.img_size} px)")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lam = f"{r['lambda']:g}" if args.method == "dva" else "-"
        print(f"| {args.method} | {lam} | {r['lr']:g} | {r['proxy_lr']:g} | {100 * r['val_recall@1']:.1f} | "
              f"{100 * r['val_map@r']:.1f} |")


if __name__ == "__main__":
    main()
