"""``dva data``: inspect datasets and check local copies against the paper's counts."""

from __future__ import annotations

import typer

from dva.cli._common import JsonOpt, print_json, print_table

app = typer.Typer(help="Inspect and check datasets.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """The dataset layouts dva reads (docs/datasets.md says where to get each)."""
    from dva.data import get_dataset, list_datasets

    print_table([{"name": n, "description": get_dataset(n).description} for n in list_datasets()])


@app.command("check")
def check(
    dataset: str = typer.Option(..., "--dataset", help="Dataset layout name (`dva data list`)."),
    data: str = typer.Option(..., "--data", help="Root folder of the dataset."),
    split: str | None = typer.Option(
        None, "--split", help="open, closed or all (default: every split the dataset has)."
    ),
    open_images: bool = typer.Option(
        True, "--open-images/--no-open-images", help="Read every image header (finds non-images, boxes outside images)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
) -> None:
    """Count images and classes per split, compare with the paper's counts, list every problem.

    Exit status: 0 when the copy is usable and matches the published counts, 1 when a problem
    was found or the counts differ (a partial download). Warnings (boxes clipped to their
    image, ...) are listed but do not fail the check.
    """
    from dva.data.check import check_dataset

    report = check_dataset(dataset, data, split, open_images=open_images, progress=not quiet and not json_out)
    if json_out:
        print_json(report)
    else:
        print(f"{report['dataset']} at {report['root']}: {report['images']:,} images, {report['classes']} classes")
        rows = []
        for name, entry in report["splits"].items():
            for side in ("train", "test"):
                expected = entry.get("expected", {}).get(side, "")
                rows.append({"split": name, "side": side, **entry[side], "expected images": expected})
        print_table(rows)
        if report["matches_expected"] is not None:
            verdict = "matches" if report["matches_expected"] else "DOES NOT match"
            print(f"{verdict} the complete dataset's published counts")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        if report["clipped_boxes"]:
            print(f"{report['clipped_boxes']:,} ground-truth boxes clipped to the image sizes the dataset ships")
        for problem in report["problems"]:
            print(f"problem: {problem}")
    if report["problems"] or report["matches_expected"] is False:
        raise typer.Exit(1)
