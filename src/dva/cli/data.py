"""``dva data``: inspect datasets and check local copies against the paper's counts."""

from __future__ import annotations

import typer

from dva.cli._common import JsonOpt, print_json, print_table

app = typer.Typer(help="Inspect and check datasets.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """The dataset layouts dva reads."""
    from dva.data import get_dataset, list_datasets

    print_table([{"name": n, "description": get_dataset(n).description} for n in list_datasets()])


@app.command("check")
def check(
    dataset: str = typer.Option(..., "--dataset", help="Dataset layout name."),
    data: str = typer.Option(..., "--data", help="Root folder of the dataset."),
    split: str = typer.Option("open", "--split", help="open, closed or all."),
    json_out: bool = JsonOpt,
) -> None:
    """Count images and classes per side and list every problem found (exit 1 if any)."""
    from dva.data.check import check_dataset

    report = check_dataset(dataset, data, split)
    if json_out:
        print_json(report)
    else:
        rows = [{"side": s, **report[s]} for s in ("train", "test") if s in report]
        print_table(rows)
        if report.get("expected"):
            verdict = "matches" if report["matches_expected"] else "DOES NOT match"
            print(f"{verdict} the complete dataset's counts {report['expected']}")
        for problem in report["problems"]:
            print(f"problem: {problem}")
    if report["problems"]:
        raise typer.Exit(1)
