"""Trained on tight crops, searched on loosely framed photos: does what DVA learned carry over?

cub100's photos are tight crops around the bird; real collections (full CUB-200, NABirds, a
user's own photos) frame birds more loosely. This benchmark takes the runs that
``bench/quality.py`` trained on cub100's classes 0-49 (nothing is trained here) and searches
the unseen classes 50-99 twice: as published, and zoomed out (``bench/zoom_out.py``: each photo
shrunk to half its side on a blurred background). Every row is searched the same way, one
global view and no detector, so a smaller drop means features that hold when the object is
small, which is what DPT is meant to teach from the object views.

    python bench/quality.py                      # the runs (or --finished-only to table what exists)
    python bench/zoom_out.py --data ../shared/data/cub100 --out bench/results/zoom/cub100-zoom
    python bench/framing_shift.py                # about 2 minutes per run on one CPU core
    # runs trained with zoom-out views (quality.py --set train.zoom_out=0.5 --out OTHER --boxes B):
    python bench/framing_shift.py --runs OTHER --boxes B --set train.zoom_out=0.5 --out OTHER/framing

Results are cached per run in ``--out`` (delete a file to evaluate again); the table is printed
and written to ``OUT/framing_shift.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from quality import FULL_FINE_TUNING, ICA, SHARED, base_config

from dva._io import atomic_write_json, atomic_write_text
from dva.config import with_assignments
from dva.data import SplitSide, data_fingerprint, load_catalog, make_split
from dva.data.loaders import ImageView
from dva.errors import ConfigError
from dva.evaluate import evaluate_side
from dva.opa.box_files import read_box_file
from dva.reproduce import DVA, TEST_ORIGINAL, row_config, run_key
from dva.reproduce.run import eval_path
from dva.runs import Run

ROWS = (ICA, DVA, FULL_FINE_TUNING)
METRICS = ("recall@1", "recall@2", "map@r")


def metrics_on(
    run: Run,
    side: SplitSide,
    cache: Path,
    workers: int,
    *,
    resize_size: int | None = None,
    view: ImageView | None = None,
) -> dict[str, float]:
    """The finished run's metrics on ``side`` (another copy of its collection), cached in ``cache``.

    ``resize_size`` (default: the run's own) and ``view`` change how the images are framed, as in
    :func:`dva.evaluate.evaluate_side`; give each framing its own ``cache``."""
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    config = run.config
    metrics = evaluate_side(
        run.load_model(),
        side,
        img_size=config.model.img_size,
        resize_size=resize_size or config.data.resize_size,
        view=view,
        num_workers=workers,
        progress=sys.stderr.isatty(),
    )
    atomic_write_json(cache, metrics)
    return metrics


def copy_settings(zoom_root: str) -> str:
    """How ``bench/zoom_out.py`` made the copy (scale, blur, seed), from its box file's header.

    Printed with the table because the copy's settings change every zoomed number (a sharper
    background is harder; bench/zoom_out.py's docstring), so a table names the copy it read."""
    boxes = Path(zoom_root) / "boxes.jsonl"
    if not boxes.is_file():
        return f"settings unknown: no {boxes}"
    header = read_box_file(boxes).header or {}
    settings = header.get("settings") or {}
    if not settings:
        return "settings unknown: no bench/zoom_out.py header in its boxes.jsonl"
    return ", ".join(f"{key} {settings[key]}" for key in ("scale", "blur", "seed") if key in settings)


def zoomed_metrics(run: Run, zoom_root: str, out: Path, workers: int) -> dict[str, float]:
    """The run's metrics on the zoomed-out test classes, cached under ``out`` by run and data."""
    split = make_split(load_catalog("cub100", zoom_root), "open")
    return metrics_on(run, split.test, out / f"{run.path.name}-{data_fingerprint(split)}.json", workers)


def mean_sd(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cub100"), help="cub100 root (the runs' data)")
    parser.add_argument("--zoom", default="bench/results/zoom/cub100-zoom", help="bench/zoom_out.py's copy of it")
    parser.add_argument("--runs", default="bench/results/quality", help="bench/quality.py's --out")
    parser.add_argument("--out", default="bench/results/framing")
    parser.add_argument("--backbone", default="dinov2_vits14.imgfocus")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--boxes", default=None, help="the training box file the runs were given (quality.py --boxes)")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="the --set the runs were trained with (quality.py --set), e.g. train.zoom_out=0.5",
    )
    args = parser.parse_args()
    if not (Path(args.zoom) / "images.txt").is_file():
        parser.error(f"{args.zoom}: no zoomed-out copy there; make it with bench/zoom_out.py (see --help)")
    copy = copy_settings(args.zoom)  # read before the evaluations, not after them

    boxes = args.boxes or Path(args.runs) / "boxes" / "cub100_saliency_train.jsonl"
    try:
        base = with_assignments(
            base_config(args.data, args.backbone, args.img_size, args.epochs, args.workers, boxes), args.assignments
        )
    except ConfigError as error:
        parser.error(str(error))
    out = Path(args.out)
    table: list[dict[str, Any]] = []
    for row in ROWS:
        original: dict[str, list[float]] = {m: [] for m in METRICS}
        zoomed: dict[str, list[float]] = {m: [] for m in METRICS}
        seeds = []
        for seed in (int(s) for s in args.seeds.split(",")):
            run = Run(Path(args.runs) / "runs" / run_key(row_config(row, base, seed)))
            stored = eval_path(run, TEST_ORIGINAL)
            if not (run.finished and stored.is_file()):
                print(f"{row.name} seed {seed}: no finished bench/quality.py run, skipped", file=sys.stderr)
                continue
            print(f"{row.name} seed {seed}: {run.path.name}", file=sys.stderr)
            before = json.loads(stored.read_text(encoding="utf-8"))["metrics"]
            after = zoomed_metrics(run, args.zoom, out, args.workers)
            seeds.append(seed)
            for m in METRICS:
                original[m].append(before[m])
                zoomed[m].append(after[m])
        if seeds:
            drop = {m: [a - b for a, b in zip(original[m], zoomed[m], strict=True)] for m in METRICS}
            table.append({"name": row.name, "seeds": seeds, "original": original, "zoomed": zoomed, "drop": drop})

    lines = [
        "| Setting | seeds | R@1 tight / zoomed (drop) | R@2 tight / zoomed | MAP@R tight / zoomed (drop) |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        o, z, d = r["original"], r["zoomed"], r["drop"]
        lines.append(
            f"| {r['name']} | {len(r['seeds'])} | {mean_sd(o['recall@1'])} / {mean_sd(z['recall@1'])} "
            f"({mean_sd(d['recall@1'])}) | {mean_sd(o['recall@2'])} / {mean_sd(z['recall@2'])} | "
            f"{mean_sd(o['map@r'])} / {mean_sd(z['map@r'])} ({mean_sd(d['map@r'])}) |"
        )
    markdown = (
        "Trained on cub100 classes 0-49 (tight crops), searched on classes 50-99 as published and zoomed out "
        f"(bench/zoom_out.py: {copy}), one global view, no detector.\n\n" + "\n".join(lines) + "\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "framing_shift.json", table)
    atomic_write_text(out / "framing_shift.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
