"""Where does test-time OPA's gain come from: the detected object, or a tighter frame?

Table 8's "Base + ICA + OPA" row replaces every test image by its discriminative view (the
saliency box, cropped) and gains about one R@1 point over ICA on cub100 (92.1 against 91.0,
docs/opa.md). cub100's boxes cover 85% of the median photo, so that view is mostly the photo
with a thinner margin, seen at a slightly higher resolution. This check separates the two
explanations on *validation* classes (40-49, never the test classes): each finished
``bench/lr_sweep.py`` run is evaluated

- as trained (resize to 128, center crop 112: the paper's 256/224 ratio),
- with its discriminative views (the saliency boxes, as ``dva eval --opa-test``),
- with tighter center crops, no detector (``resize`` 136, 144, 160: the center 82%, 78%, 70%
  of the side; the median box with the default crop keeps about 80%).

If a detector-free tighter crop gains as much as the boxes, OPA at test time is a framing
effect on this collection, not object perception, and it is no target for DPT to transfer.

    python bench/crop_check.py --boxes bench/results/quality/boxes/cub100_saliency_train.jsonl \
        --runs "bench/results/val/runs/*-e3-img112-s0"

Results are cached per run and setting in ``--out`` and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from framing_shift import metrics_on
from quality import SHARED

from dva.data import load_catalog, make_split
from dva.opa.test_time import discriminative_views
from dva.runs import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "cub100"))
    parser.add_argument("--runs", required=True, help="glob of finished bench/lr_sweep.py run directories")
    parser.add_argument("--boxes", required=True, help="saliency boxes of the training side (holds classes 40-49)")
    parser.add_argument("--resizes", default="136,144,160", help="tighter center crops to try (resize, then crop)")
    parser.add_argument("--out", default="bench/results/crop_check")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    run_dirs = sorted(Path(p) for p in glob.glob(args.runs) if (Path(p) / "summary.json").is_file())
    if not run_dirs:
        sys.exit(f"no finished run matches {args.runs!r}")
    val = make_split(load_catalog("cub100", args.data), "open", val_classes=10).val
    resizes = [int(r) for r in args.resizes.split(",") if r]
    header = ["run", "as trained", "discriminative view", *(f"center crop, resize {r}" for r in resizes)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for run_dir in run_dirs:
        run = Run(run_dir)
        cells = []
        for setting in ["trained", "opa", *map(str, resizes)]:
            view, resize = None, None
            if setting == "opa":
                view, counts = discriminative_views(args.boxes, val, run.config, root=args.data, dataset="cub100")
                print(f"{run_dir.name}: test-time views {counts}", file=sys.stderr)
            elif setting != "trained":
                resize = int(setting)
            cache = Path(args.out) / f"{run_dir.name}-{setting}.json"
            metrics = metrics_on(run, val, cache, args.workers, resize_size=resize, view=view)
            cells.append(f"{100 * metrics['recall@1']:.1f} / {100 * metrics['map@r']:.1f}")
        print(f"| {run_dir.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
