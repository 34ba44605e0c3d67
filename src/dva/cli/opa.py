"""``dva detect`` (boxes for OPA, cached once) and ``dva views`` (a contact sheet to check them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from dva.cli._common import DataRootOpt, JsonOpt, print_json, print_table
from dva.config import OPAConfig, default_of
from dva.errors import ConfigError

PromptOpt = typer.Option(
    None,
    "--prompt",
    help="Detector prompt; '{class}' = each image's class name (paper). Default: the dataset's "
    "meta-category, e.g. 'bird'.",
)
BoxThresholdOpt = typer.Option(None, "--box-threshold", help="groundingdino/owlv2: minimum box score kept.")
TextThresholdOpt = typer.Option(None, "--text-threshold", help="groundingdino: minimum text-token score.")
BoxFileOpt = typer.Option(None, "--box-file", help="boxes detector: your box file (CSV or JSON lines).")
DetectorDeviceOpt = typer.Option(None, "--detector-device", help="groundingdino/owlv2: auto, cpu, cuda, ...")
TightenOpt = typer.Option(
    None,
    "--tighten",
    help="saliency: raise Otsu's level toward the heat map's maximum by this fraction in [0, 1) for tighter "
    "boxes (0: Otsu; docs/opa.md, 'Tighter saliency boxes').",
)


def cli_detector_options(
    *,
    model: str | None = None,
    box_threshold: float | None = None,
    text_threshold: float | None = None,
    box_file: str | None = None,
    device: str | None = None,
    tighten: float | None = None,
    data_root: str | None = None,
    detector: str,
) -> dict[str, Any]:
    """The options given on the command line, for ``create_detector(detector, **options)``."""
    given = {
        "model": model,
        "box_threshold": box_threshold,
        "text_threshold": text_threshold,
        "box_file": box_file,
        "device": device,
        "tighten": tighten,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if detector == "boxes" and data_root:
        options["data_root"] = data_root
    return options


def detect(
    detector: str = typer.Option(..., "--detector", help="groundingdino, owlv2, dataset, boxes or saliency."),
    out: Path = typer.Option(..., "--out", help="Box cache (JSON lines) to create, or to complete if it exists."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset layout (`dva data list`)."),
    data: str = typer.Option(..., "--data", help="Root folder of the dataset."),
    split: str = typer.Option("open", "--split", help="open, closed or all."),
    include_test: bool = typer.Option(
        False, "--include-test", help="Also detect the test images (for `dva eval --opa-test`)."
    ),
    test_only: bool = typer.Option(False, "--test-only", help="Detect the test images only (a cache for evaluation)."),
    prompt: str | None = PromptOpt,
    model: str | None = typer.Option(
        None, "--model", help="groundingdino: tiny|base or a Hub id / folder; owlv2: base|large|id / folder."
    ),
    box_threshold: float | None = BoxThresholdOpt,
    text_threshold: float | None = TextThresholdOpt,
    box_file: str | None = BoxFileOpt,
    device: str | None = DetectorDeviceOpt,
    tighten: float | None = TightenOpt,
    limit: int | None = typer.Option(None, "--limit", help="Detect at most N more images (a trial run)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
) -> None:
    """Find each image's main object once and cache the boxes for OPA training.

    Interrupted runs continue where they stopped: images already in --out are skipped. A cache
    made by another detector or settings is refused.
    """
    from dva.data import load_catalog, make_split
    from dva.opa import create_detector, detect_boxes

    the_split = make_split(load_catalog(dataset, data), split)
    sides = {"train": the_split.train, "test": the_split.test}
    if test_only:
        del sides["train"]
    elif not include_test:
        del sides["test"]
    if not any(len(side) for side in sides.values()):
        raise ConfigError(f"the {split} split has no training images; add --include-test to detect its test images")
    options = cli_detector_options(
        model=model,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        box_file=box_file,
        device=device,
        tighten=tighten,
        data_root=data,
        detector=detector,
    )
    report = detect_boxes(
        create_detector(detector, **options),
        sides,
        out,
        dataset=dataset,
        root=data,
        prompt=prompt,
        limit=limit,
        progress=not quiet,
    )
    if json_out:
        print_json(report)
    else:
        print_table([{k: v for k, v in report.items() if k not in ("settings", "out")}])
        print(f"boxes cached in {report['out']}")


def views(
    boxes: Path = typer.Option(..., "--boxes", help="Box file (from `dva detect`, or your own)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the sheet into, as <box file name>_views.png."),
    limit: int = typer.Option(24, "--limit", help="Images on the sheet: every outcome, spread through the file."),
    data: str | None = DataRootOpt,
    min_score: float = typer.Option(
        default_of(OPAConfig, "min_score"),
        "--min-score",
        help="Boxes scoring less are not trusted (training's default).",
    ),
    max_area: float = typer.Option(
        default_of(OPAConfig, "max_area"), "--max-area", help="No background view at this box/image area or more."
    ),
    tile: int = typer.Option(200, "--tile", help="Tile size in pixels."),
    per_row: int = typer.Option(2, "--per-row", help="Images side by side (three tiles each)."),
    json_out: bool = JsonOpt,
) -> None:
    """Write a contact sheet of originals with boxes, discriminative and background views, plus counts.

    Counts: background (all three views), large_box (no background view), low_score and
    no_detection (the original image stands in), as training will count them.
    """
    from dva._io import atomic_write
    from dva.opa.box_files import read_box_file
    from dva.opa.policy import ViewPolicy
    from dva.opa.sheet import SheetOptions, box_statistics, contact_sheet, framing_advice, pick

    box_file = read_box_file(boxes, root=data)
    if not len(box_file):
        raise ConfigError(f"{boxes}: holds no boxes")
    options = SheetOptions(ViewPolicy(min_score=min_score, max_area=max_area), tile=tile, per_row=per_row)
    shown = pick(list(box_file.entries.values()), limit, options)
    sheet = contact_sheet(shown, options)
    path = atomic_write(out / f"{boxes.stem}_views.png", lambda p: sheet.save(p, format="PNG"))
    report: dict[str, Any] = {"sheet": str(path), "shown": len(shown), **box_statistics(box_file, options)}
    report["advice"] = framing_advice(report)
    if json_out:
        print_json(report)
    else:
        print_table([{k: v for k, v in report.items() if k not in ("sheet", "advice")}])
        print(f"contact sheet written to {path}")
        if report["advice"]:
            print(f"note: {report['advice']}", file=sys.stderr)
