"""``dva dedup``: list groups of near-identical images of an index (CSV, contact sheet, summary)."""

from __future__ import annotations

from pathlib import Path

import typer

from dva.cli._common import JsonOpt, print_json, print_table

#: Groups listed in the terminal (the CSV and --json list them all).
SHOWN_GROUPS = 10


def dedup(
    index_dir: Path = typer.Option(..., "--index", help="Index directory written by `dva index`."),
    threshold: float = typer.Option(0.95, "--threshold", help="Link two images when their cosine is >= this."),
    k: int = typer.Option(10, "--k", help="Approximate indexes only (no range search): neighbours per image."),
    csv_out: Path = typer.Option(Path("duplicates.csv"), "--csv", help="CSV: group, id, path, label, score."),
    sheet: Path = typer.Option(Path("duplicates.png"), "--sheet", help="Contact sheet PNG: one row per group."),
    max_groups: int = typer.Option(50, "--sheet-groups", help="Groups drawn on the contact sheet (largest first)."),
    json_out: bool = JsonOpt,
) -> None:
    """Groups of near-identical images: connected components of pairs with cosine >= --threshold.

    Writes every group to --csv (score: cosine to the group's first member) and the largest to a
    contact sheet; prints a summary. Nothing in the index changes.
    """
    from dva.index.dedup import contact_sheet, find_duplicates, write_csv

    report = find_duplicates(index_dir, threshold=threshold, k=k)
    write_csv(report, csv_out)
    contact_sheet(report, sheet, max_groups=max_groups)
    if json_out:
        print_json({**report.to_dict(), "csv": str(csv_out), "sheet": str(sheet)})
        return
    print_table([report.summary()])
    for number, group in enumerate(report.groups[:SHOWN_GROUPS], start=1):
        names = ", ".join(Path(m.path).name for m in group[:5]) + (", ..." if len(group) > 5 else "")
        print(f"group {number}: {len(group)} images ({names})")
    if len(report.groups) > SHOWN_GROUPS:
        print(f"... and {len(report.groups) - SHOWN_GROUPS} more groups")
    print(f"written: {csv_out}, {sheet}")
