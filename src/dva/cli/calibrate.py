"""``dva calibrate``: choose and store an index's "same item" threshold from labelled pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from dva.cli._common import DeviceOpt, JsonOpt, PrecisionOpt, WorkersOpt, print_json, print_table


def calibrate(
    index_dir: Path = typer.Option(..., "--index", help="Index directory written by `dva index`."),
    labelled: Path = typer.Option(
        ..., "--labelled", help="Labelled images: a VAL/<class>/<image> tree or a .csv/.jsonl list with a label column."
    ),
    fmr: float = typer.Option(0.01, "--fmr", help="Target false-match rate: the share of impostor pairs let through."),
    max_pairs: int = typer.Option(
        2_000_000, "--max-pairs", help="All pairs when each kind has at most this many, else a seeded sample of it."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the pair sample."),
    plot: Path | None = typer.Option(None, "--plot", help="Where to draw the FMR/FNMR curve (INDEX/calibration.png)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = WorkersOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
) -> None:
    """Pick the cosine threshold of "same item" for a target false-match rate and store it in the index.

    Pairs of the labelled images (embedded with the index's own model) of one label are genuine,
    of two labels impostors. The threshold is the smallest whose FMR is at most --fmr; FMR and
    FNMR measured at it, and the pair counts, go to INDEX/calibration.json. `dva search`,
    dva.Searcher and `dva serve` then say of each match whether it is the same item.
    """
    from dva.index.calibrate import calibrate as run

    embed = dict(batch_size=batch_size, num_workers=workers, device=device, precision=precision, progress=not quiet)
    result = run(index_dir, labelled, target_fmr=fmr, max_pairs=max_pairs, seed=seed, plot=plot, embed=embed)
    if json_out:
        print_json(result.to_dict())
        return
    print_table(
        [
            {
                "threshold": result.threshold,
                "target FMR": result.target_fmr,
                "FMR": result.fmr,
                "FNMR": result.fnmr,
                "genuine pairs": result.genuine_pairs,
                "impostor pairs": result.impostor_pairs,
                "pairs": result.pairs,
                "images": result.images,
                "labels": result.labels,
            }
        ]
    )
    if result.skipped:
        print(f"note: {result.skipped} labelled images could not be read and were left out")
