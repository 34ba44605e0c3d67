"""Choose settings by measurement on validation classes, never on test classes.

cub100 open split: the training classes 0-49 are divided again, classes 40-49 held out as a
validation side (``--val-classes 10``); test classes 50-99 are not read. Every combination of
the swept settings trains on classes 0-39 and reports validation Recall@1 and MAP@R after
every epoch. Runs are kept under ``--out`` and reused, so an interrupted sweep continues.

    python bench/lr_sweep.py --lrs 1e-4,3e-4,1e-3,3e-3,1e-2 --proxy-lrs 1e-1 --epochs 1
    python bench/lr_sweep.py --method dva --boxes boxes/cub100_train.jsonl --lambdas 0,1,3 --lrs 1e-3
    python bench/lr_sweep.py --method dva --boxes boxes/cub100_train.jsonl --epochs 3 \\
        --variants "transfer=proxy;transfer=teacher;transfer=embedding;transfer=relation"

``--folds 0,1,2,3,4`` repeats every run with another block of ten training classes held out
(fold 0: classes 40-49, fold 1: 30-39, ... fold 4: 0-9): class-level cross-validation, 2,949
validation queries over the five folds instead of 600, still without a test image. With more
than one fold, a second table pools each setting's folds: right first neighbours over all
validation queries, and MAP@R averaged over those queries.

``--set SECTION.FIELD=VALUE`` (repeatable, as ``dva train --set``) changes any other setting of
every run; ``--also-val ROOT`` also measures each finished run on the validation classes of
another copy of the collection (bench/zoom_out.py's zoomed-out one), without training on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import yaml

from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig, with_assignments
from dva.data import data_fingerprint, load_catalog, split_from_config
from dva.runs import Run
from dva.train import Trainer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def parse_variants(text: str) -> list[dict]:
    """``"transfer=teacher,background=false;transfer=embedding"`` -> two method-option dicts."""
    variants = []
    for chunk in (c.strip() for c in text.split(";")):
        options = {}
        for item in (i.strip() for i in chunk.split(",") if i.strip()):
            key, _, value = item.partition("=")
            options[key.strip()] = yaml.safe_load(value.strip())
        variants.append(options)
    return variants or [{}]


def variant_name(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "default"


#: What makes two sweep rows the same setting (they differ only in their fold).
SETTING = ("method", "variant", "lambda", "lr", "proxy_lr", "seed")


def pool_folds(rows: list[dict]) -> list[dict]:
    """One row per setting, its folds pooled query by query (each fold's metrics weighted by its queries).

    Folds hold different numbers of images, so pooled R@1 is right first neighbours over all
    queries, not the mean of the folds' R@1; MAP@R is a mean over queries, so it pools the same way.
    """
    pooled: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r[k] for k in SETTING)
        p = pooled.setdefault(key, {"folds": [], "queries": 0, "right": 0, "map_sum": 0.0})
        p["folds"].append(r["fold"])
        p["queries"] += r["val_queries"]
        p["right"] += round(r["val_recall@1"] * r["val_queries"])
        p["map_sum"] += r["val_map@r"] * r["val_queries"]
    return [
        dict(zip(SETTING, key, strict=True))
        | {
            "folds": p["folds"],
            "queries": p["queries"],
            "right": p["right"],
            "val_recall@1": p["right"] / p["queries"],
            "val_map@r": p["map_sum"] / p["queries"],
        }
        for key, p in pooled.items()
    ]


def other_val_metrics(run_dir: Path, root: str, workers: int) -> dict[str, float]:
    """The finished run's metrics on the validation classes of the collection at ``root`` (cached).

    The split is the run's own (its dataset, protocol, validation classes and fold), read from
    another root: the same classes, other photos of them (bench/zoom_out.py's copy)."""
    from framing_shift import metrics_on

    run = Run(run_dir)
    data = dataclasses.replace(run.config.data, root=root)
    split = split_from_config(load_catalog(data.dataset, root), data)
    assert split.val is not None
    return metrics_on(run, split.val, run_dir / "eval" / f"val-{data_fingerprint(split)}.json", workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cub100"))
    parser.add_argument("--backbone", default="dinov2_vits14.imgfocus")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--method", default="ica")
    parser.add_argument("--variants", default="", help="method-option sets separated by ';' (KEY=VALUE,...)")
    parser.add_argument("--lrs", default="1e-3")
    parser.add_argument("--proxy-lrs", default="1e-1")
    parser.add_argument("--lambdas", default="3", help="DPT weights to try (OPA methods only)")
    parser.add_argument("--boxes", default=None, help="training boxes (OPA methods)")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--folds", default="0", help="validation folds: blocks of 10 classes from the end (0: 40-49)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/results/val", help="runs and sweep.json go here")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--also-val", default=None, help="also measure on this copy's validation classes")
    args = parser.parse_args()

    out = Path(args.out)
    rows = []
    grid = itertools.product(
        parse_variants(args.variants),
        map(float, args.lambdas.split(",")),
        map(float, args.proxy_lrs.split(",")),
        map(float, args.lrs.split(",")),
        map(int, args.seeds.split(",")),
        map(int, args.folds.split(",")),
    )
    for options, lambda_dist, proxy_lr, lr, seed, fold in grid:
        config = RunConfig(
            model=ModelConfig(
                backbone=args.backbone, img_size=args.img_size, method=args.method, method_options=dict(options)
            ),
            data=DataConfig(
                dataset="cub100", root=args.data, split="open", val_classes=10, val_fold=fold, num_workers=args.workers
            ),
            train=TrainConfig(
                epochs=args.epochs,
                lr=lr,
                proxy_lr=proxy_lr,
                seed=seed,
                lambda_dist=lambda_dist,
                optimizer=args.optimizer,
                weight_decay=args.weight_decay,
            ),
            opa=OPAConfig(boxes=args.boxes),
        )
        config = with_assignments(config, args.assignments)
        name = (
            f"{args.method}-{variant_name(options).replace('=', '-').replace(',', '_')}-lam{lambda_dist:g}"
            f"-{args.optimizer}-lr{lr:g}-plr{proxy_lr:g}-e{args.epochs}-img{args.img_size}-s{seed}"
            + (f"-fold{fold}" if fold else "")
        ) + "".join(f"-{a.replace('=', '-')}" for a in args.assignments)
        run_dir = out / "runs" / name
        start = time.perf_counter()
        summary = Trainer(config, run_dir, progress=sys.stderr.isatty()).fit(resume=run_dir.exists())
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
        per_epoch = [json.loads(x)["val"] for x in lines if x.strip() and json.loads(x).get("type") == "epoch"]
        val = summary["last_epoch"]["val"]
        rows.append(
            {
                "method": args.method,
                "variant": variant_name(options),
                "lr": lr,
                "proxy_lr": proxy_lr,
                "lambda": lambda_dist,
                "seed": seed,
                "fold": fold,
                "val_recall@1": val["recall@1"],
                "val_map@r": val["map@r"],
                "val_queries": val["images"],
                "val_recall@1_per_epoch": [v["recall@1"] for v in per_epoch],
                "seconds_per_epoch": summary["seconds_per_epoch"],
                "minutes": (time.perf_counter() - start) / 60,
            }
        )
        if args.also_val:
            other = other_val_metrics(run_dir, args.also_val, args.workers)
            rows[-1]["also_val_recall@1"], rows[-1]["also_val_map@r"] = other["recall@1"], other["map@r"]
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    pooled = pool_folds(rows)
    (out / "sweep.json").write_text(json.dumps({"args": vars(args), "rows": rows, "pooled": pooled}, indent=2))
    also = " | also-val R@1 | also-val MAP@R" if args.also_val else ""
    print(
        f"| method | variant | lambda | lr | proxy lr | seed | fold | val R@1 per epoch | val R@1 | val MAP@R{also} |  "
        f"(cub100, validation fold(s) {args.folds}, {args.epochs} epoch(s), {args.img_size} px; "
        f"also-val: {args.also_val})"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.also_val else ""))
    for r in rows:
        curve = " / ".join(f"{100 * v:.1f}" for v in r["val_recall@1_per_epoch"])
        extra = ""
        if "also_val_recall@1" in r:
            extra = f" {100 * r['also_val_recall@1']:.1f} | {100 * r['also_val_map@r']:.1f} |"
        print(
            f"| {r['method']} | {r['variant']} | {r['lambda']:g} | {r['lr']:g} | {r['proxy_lr']:g} | {r['seed']} | "
            f"{r['fold']} | {curve} | {100 * r['val_recall@1']:.1f} | {100 * r['val_map@r']:.1f} |{extra}"
        )

    if any(len(p["folds"]) > 1 for p in pooled):
        print(
            "\n| method | variant | lambda | lr | proxy lr | seed | folds | queries | right first neighbours | "
            "pooled val R@1 | pooled val MAP@R |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for p in pooled:
            print(
                f"| {p['method']} | {p['variant']} | {p['lambda']:g} | {p['lr']:g} | {p['proxy_lr']:g} | {p['seed']} | "
                f"{','.join(map(str, p['folds']))} | {p['queries']} | {p['right']} | {100 * p['val_recall@1']:.1f} | "
                f"{100 * p['val_map@r']:.1f} |"
            )


if __name__ == "__main__":
    main()
