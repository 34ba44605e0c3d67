"""Quality benchmark: does the method work in this code? cub100, open split, real DINOv2 weights.

Every row trains on cub100's classes 0-49 and is tested on the unseen classes 50-99, with the
offline DINOv2 ViT-S/14 (``dinov2_vits14.imgfocus``), at the same image size and epochs:

    frozen backbone            no training (Table 8 "Base")
    ICA                        q,v adapters, rank 16, Proxy-Anchor on the original images
    ICA + OPA (test detector)  DVA trained with lambda 0, test images replaced by their
                               discriminative views (Table 8's third row)
    DVA                        ICA + OPA + DPT (lambda 3); the detector is not used at test time
    full fine-tuning           every backbone weight, lr 1e-5
    peers                      LoRA, VPT-deep (+ BitFit), VPTSP-G, AdaptFormer (MLP adapters)
    DVA over AdaptFormer       OPA + DPT training AdaptFormer's adapters (does DPT add to them?)

Trained rows run under several seeds (mean ± sample standard deviation). Boxes come from the
offline saliency detector, detected once into ``OUT/boxes/`` (resumable); runs live in
``OUT/runs/`` and are reused, so an interrupted benchmark continues where it stopped.
Learning rates are the defaults chosen on a validation split of the training classes
(bench/lr_sweep.py), never on the test classes.

    python bench/quality.py                      # every row, 3 seeds: roughly 8 hours on 2 CPU cores (+10 for boxes)
    python bench/quality.py --row "DVA (Ours)"   # one row (its 3 seeds: 1 to 1.5 hours for DVA)
    python bench/quality.py --epochs 1 --seeds 0 # a quicker look
    # every row with a changed setting (its runs get other names; keep them apart with --out):
    python bench/quality.py --set train.zoom_out=0.5 --out bench/results/zoomtrain/quality \
        --boxes bench/results/quality/boxes/cub100_saliency_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dva._io import atomic_write_json, atomic_write_text
from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig, with_assignments
from dva.data import load_catalog, make_split
from dva.errors import ConfigError
from dva.losses import TRANSFERS, DPTOptions
from dva.reproduce import (
    DVA,
    FULL_FINE_TUNING,
    PARAMS,
    RECALL_COLUMNS,
    RowResult,
    Table,
    dva_row,
    method_row,
    row_config,
    run_key,
    run_rows,
    setting_line,
    summarize,
    to_markdown,
)
from dva.reproduce.tables import PEERS, TABLE8, TABLE10
from dva.runs import Run

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FROZEN, ICA, ICA_OPA = TABLE8.rows[0], TABLE8.rows[1], TABLE8.rows[2]

#: DVA with each reading of DPT's transfer term that is not the default (docs/opa.md).
DVA_VARIANTS = tuple(
    dva_row(
        f"DVA, transfer={transfer}",
        {},
        options={"transfer": transfer},
        note=f"DPT's transfer term read as {transfer!r} (docs/opa.md)",
    )
    for transfer in TRANSFERS
    if transfer != DPTOptions().transfer
)

#: PEFT peers in the same harness (docs/reproduce.md, "PEFT peers"), with their own learning rates.
PEER_ROWS = tuple(row for row in PEERS.rows if row.name not in ("ICA", DVA.name))

#: The paper's own adapter peer (Table 10): adapters on every block's MLP, where ICA adapts attention.
ADAPTFORMER = next(row for row in TABLE10.rows if row.overrides["model"]["method"] == "adaptformer")
#: ... at ICA's parameter budget (0.300M on ViT-S/14 against ICA's 0.295M; bottleneck 64 has twice that).
ADAPTFORMER_32 = method_row(
    "AdaptFormer, bottleneck 32",
    "adaptformer",
    {},
    options={"bottleneck": 32},
    note="AdaptFormer with ICA's number of trained parameters",
)

#: DPT over the MLP adapters: OPA's object views and the same loss as DVA, on AdaptFormer's model.
DVA_ADAPTFORMER = method_row(
    "DVA over AdaptFormer",
    "dva-adaptformer",
    {},
    note="OPA + DPT (DVA's defaults) training AdaptFormer's adapters instead of ICA's (docs/opa.md)",
)

QUALITY = Table(
    "quality",
    "Quality benchmark: cub100 open split (test classes 50-99 unseen in training)",
    (
        FROZEN,
        ICA,
        ICA_OPA,
        DVA,
        *DVA_VARIANTS,
        FULL_FINE_TUNING,
        *PEER_ROWS,
        ADAPTFORMER,
        ADAPTFORMER_32,
        DVA_ADAPTFORMER,
    ),
    (*RECALL_COLUMNS, "map@r", PARAMS),
    label="Setting",
    notes=(
        "Paper column: CUB-200-2011 (200 classes), ViT-B/16 at 224 px, 10 epochs (Tables 8 and 10); "
        "a direction to compare with, not a target for this smaller setting.",
        f"DVA (Ours) is the default variant, transfer={DPTOptions().transfer!r}, chosen on validation classes "
        "40-49 (bench/lr_sweep.py).",
    ),
)


def base_config(data: str, backbone: str, img_size: int, epochs: int, workers: int, boxes: str | Path) -> RunConfig:
    """The settings every row shares (each row overrides its method and learning rates)."""
    return RunConfig(
        model=ModelConfig(backbone=backbone, img_size=img_size),
        data=DataConfig(dataset="cub100", root=data, split="open", num_workers=workers),
        train=TrainConfig(epochs=epochs),
        opa=OPAConfig(boxes=str(boxes)),
    )


def detect_once(data: str, side: str, out: Path) -> Path:
    """Saliency boxes of cub100's ``side`` images ("train" or "test" of the open split), cached in ``out``:
    ``detect_boxes`` skips the images the cache holds, so a second call detects nothing."""
    from dva.opa import create_detector
    from dva.opa.detect import detect_boxes

    split = make_split(load_catalog("cub100", data), "open")
    sides = {"train": split.train} if side == "train" else {"test": split.test}
    detect_boxes(create_detector("saliency"), sides, out, dataset="cub100", root=data, progress=sys.stderr.isatty())
    return out


METRIC_NAMES = {"recall@1": "R@1", "map@r": "MAP@R"}


def epoch_seconds(run_dir: Path) -> list[float]:
    """Wall-clock seconds of every epoch the run logged (its metrics.jsonl; none for the frozen row)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [e["seconds"] for e in events if e.get("type") == "epoch"]


def verdicts(summary: dict[str, Any]) -> list[str]:
    """The comparisons the benchmark exists for, stated from the measured numbers.

    Each pair is compared on R@1 and on MAP@R: with 2,953 test images R@1 moves by about 0.7
    between seeds, MAP@R (a ranking of every same-class image, not just the first) by about
    0.2, so a small real difference shows in MAP@R first.
    """
    by_name = {row["name"]: row["ours"] for row in summary["rows"]}
    lines = []

    def difference(a: str, b: str, metric: str) -> str:
        x, y = by_name[a][metric], by_name[b][metric]
        diff = x["mean"] - y["mean"]
        if min(len(x["values"]), len(y["values"])) < 2:
            return f"{diff:+.1f} {METRIC_NAMES[metric]} (one seed: spread unknown)"
        spread = max(x["std"], y["std"])
        judged = "larger than" if abs(diff) > spread else "within"
        return f"{diff:+.1f} {METRIC_NAMES[metric]} ({judged} the larger seed spread, {spread:.1f})"

    def compare(a: str, b: str) -> None:
        if a in by_name and b in by_name and all(m in by_name[n] for n in (a, b) for m in METRIC_NAMES):
            lines.append(f"{a} minus {b}: " + "; ".join(difference(a, b, m) for m in METRIC_NAMES))

    for row in QUALITY.rows:  # the default DVA against every other trained row
        if row not in (DVA, FROZEN, ICA_OPA):
            compare(DVA.name, row.name)
    compare(ICA.name, FULL_FINE_TUNING.name)
    compare(DVA.name, ICA_OPA.name)
    compare(ICA_OPA.name, ICA.name)
    compare(ICA.name, FROZEN.name)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cub100"), help="cub100 root")
    parser.add_argument("--out", default="bench/results/quality", help="runs, boxes and the table go here")
    parser.add_argument("--backbone", default="dinov2_vits14.imgfocus")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the trained rows (the frozen row needs one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="table the runs already trained (evaluating them if needed); train nothing",
    )
    parser.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        help="one row name to run, repeatable; for names holding a comma, e.g. 'LoRA (q, v; r 16, alpha 8)'",
    )
    parser.add_argument(
        "--boxes",
        default=None,
        help="a box file holding the train and test images (e.g. bench/zoom_out.py's exact boxes) instead of "
        "detecting saliency boxes",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change a setting of every row, as dva train --set (e.g. train.zoom_out=0.5); use another --out",
    )
    args = parser.parse_args()

    out = Path(args.out)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    boxes = out / "boxes"
    wanted = [name.strip() for name in args.rows.split(",") if name.strip()] + [name.strip() for name in args.row]
    unknown = sorted(set(wanted) - {row.name for row in QUALITY.rows})
    if unknown:
        parser.error(f"unknown row(s) {unknown}; rows: {[row.name for row in QUALITY.rows]}")
    rows = [row for row in QUALITY.rows if not wanted or row.name in wanted]
    needs_test_boxes = any(row.test_view != "original" for row in rows)
    test_box_file = boxes / "cub100_saliency_test.jsonl"
    if args.boxes is not None:  # given boxes (train and test images): nothing to detect
        train_boxes = Path(args.boxes)
        test_boxes: Path | None = train_boxes
    else:
        train_boxes = detect_once(args.data, "train", boxes / "cub100_saliency_train.jsonl")
        if args.finished_only:  # detect nothing either: use the test boxes only if they are there
            test_boxes = test_box_file if needs_test_boxes and test_box_file.is_file() else None
        else:  # test images' boxes only for the row that runs the detector at test time
            test_boxes = detect_once(args.data, "test", test_box_file) if needs_test_boxes else None
    if args.finished_only:
        rows = [row for row in rows if row.test_view == "original" or test_boxes is not None]

    base = base_config(args.data, args.backbone, args.img_size, args.epochs, args.workers, train_boxes)
    try:
        base = with_assignments(base, args.assignments)
    except ConfigError as error:
        parser.error(str(error))
    start = time.perf_counter()
    results: list[RowResult] = []
    missing: list[str] = []
    for row in rows:  # row by row: the frozen row trains nothing, so one seed is all it needs
        row_seeds = seeds[:1] if row is FROZEN else seeds
        if args.finished_only:  # report what is trained, train nothing
            done = [s for s in row_seeds if Run(out / "runs" / run_key(row_config(row, base, s))).finished]
            missing += [f"{row.name} (seed {s})" for s in row_seeds if s not in done]
            row_seeds = tuple(done)
        if row_seeds:
            results += run_rows([row], base, out, row_seeds, test_boxes=test_boxes, progress=sys.stderr.isatty())
    minutes = (time.perf_counter() - start) / 60

    summary = summarize(QUALITY, results)
    train_seconds = 0.0
    for row in summary["rows"]:
        seconds = [s for run in row["runs"] for s in epoch_seconds(Path(run))]
        row["ours"]["seconds_per_epoch"] = statistics.fmean(seconds) if seconds else 0.0
        train_seconds += sum(seconds)
    summary["verdicts"] = verdicts(summary)
    summary["setting"] = setting_line(base, seeds)
    summary["minutes_this_call"] = minutes
    summary["training_minutes_all_runs"] = train_seconds / 60
    markdown = to_markdown(summary, summary["setting"])
    timing = " | ".join(
        f"{row['name']} {row['ours']['seconds_per_epoch']:.0f} s"
        for row in summary["rows"]
        if row["ours"]["seconds_per_epoch"]
    )
    counts = " | ".join(f"{row['name']} {len(row['seeds'])}" for row in summary["rows"] if row["name"] != FROZEN.name)
    markdown += f"\nSeeds per trained row: {counts}.\n"
    markdown += f"\nSeconds per training epoch: {timing}.\n\n" + "\n".join(f"- {v}" for v in summary["verdicts"])
    markdown += (
        f"\n\nTraining time of all runs: {train_seconds / 60:.0f} minutes (their logged epochs); "
        f"this call: {minutes:.1f} minutes (finished runs are reused, not retrained).\n"
    )
    if missing:
        summary["not_run"] = missing
        markdown += "\nNot run yet (`--finished-only`): " + ", ".join(missing) + ".\n"
    atomic_write_json(out / "quality.json", summary)
    atomic_write_text(out / "quality.md", markdown)
    print(markdown)
    print(f"written: {out / 'quality.md'}, {out / 'quality.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
