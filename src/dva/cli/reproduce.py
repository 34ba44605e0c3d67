"""``dva reproduce TABLE``: train and evaluate a paper table's rows, print it beside the paper's numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dva.cli._common import DataRootOpt, DatasetOpt, JsonOpt, SplitOpt, print_json, print_table
from dva.errors import ConfigError

if TYPE_CHECKING:
    from dva.config import RunConfig
    from dva.reproduce import Table


def reproduce(
    table: str = typer.Argument(..., help="table1, table8, table9, table10 or lambda (Fig. 3)."),
    dataset: str | None = DatasetOpt,
    data: str | None = DataRootOpt,
    split: str | None = SplitOpt,
    out: Path = typer.Option(
        Path("reproduce"), "--out", help="Folder for the runs (OUT/runs, shared by all tables) and OUT/TABLE.md/.json."
    ),
    seeds: str = typer.Option("0", "--seeds", help="Training seeds, e.g. 0,1: mean and spread per row."),
    epochs: int | None = typer.Option(None, "--epochs", help="Paper: 10."),
    img_size: int | None = typer.Option(None, "--img-size", "--image-size", help="Crop size. Paper: 224."),
    backbone: str | None = typer.Option(None, "--backbone", help="Paper: vit_base_patch16_224.orig_in21k."),
    pretrained: bool | None = typer.Option(
        None, "--pretrained/--no-pretrained", help="Random weights with --no-pretrained."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Paper: 32."),
    lr: float | None = typer.Option(None, "--lr", help="Adapter learning rate (fine-tuning rows use their own, 1e-5)."),
    boxes: Path | None = typer.Option(None, "--boxes", help="Training boxes for rows that use OPA (dva detect)."),
    test_boxes: Path | None = typer.Option(
        None,
        "--test-boxes",
        help="Boxes of the test images, for rows evaluated with the detector at test time "
        "(Table 8 'Base + ICA + OPA'; dva detect --test-only).",
    ),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader worker processes."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, ..."),
    precision: str | None = typer.Option(None, "--precision", help="auto (bf16 on CUDA), bf16, fp16, fp32."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML/JSON base config (model/data/train/opa)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the rows, their trainable parameters and run directories; train nothing."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    json_out: bool = JsonOpt,
) -> None:
    """Reproduce a table of the paper: every row trained (once, shared across tables), evaluated, tabulated.

    Finished rows are kept and skipped, so running again continues an interrupted table and
    a second table reuses the first's runs. Writes OUT/TABLE.md and OUT/TABLE.json: our
    numbers beside the paper's (CUB-200-2011, ViT-B/16). docs/reproduce.md explains each row.
    """
    from dva.cli.train import build_config
    from dva.reproduce import get_table

    the_table = get_table(table)
    seed_list = _parse_seeds(seeds)
    overrides = {
        "model": {"backbone": backbone, "pretrained": pretrained, "img_size": img_size},
        "data": {"dataset": dataset, "root": data, "split": split, "num_workers": workers},
        # the tables need each run's final weights only (fine-tuned ViT-B/16 epochs are 343 MB each)
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "device": device,
            "precision": precision,
            "keep_checkpoints": 1,
        },
        "opa": {"boxes": str(boxes.resolve()) if boxes else None},
    }
    base = build_config(out, overrides, config_file, resume=False)
    test_box_path = str(test_boxes.resolve()) if test_boxes else None
    if dry_run:
        _dry_run(the_table, base, out, seed_list, json_out)
        return
    if not base.data.root:
        raise ConfigError("reproduce needs the dataset: --dataset NAME --data ROOT")
    _run(the_table, base, out, seed_list, test_box_path, quiet=quiet, json_out=json_out)


def _run(
    table: Table, base: RunConfig, out: Path, seeds: list[int], test_boxes: str | None, *, quiet: bool, json_out: bool
) -> None:
    from dva.data import load_catalog, make_split
    from dva.reproduce import (
        TEST_DISCRIMINATIVE,
        check_rows,
        run_rows,
        setting_line,
        summarize,
        time_detector,
        to_markdown,
        write_table,
    )

    check_rows(table.rows, base, test_boxes=test_boxes)
    detector_ms, detector_note = None, ""
    if table.needs_latency and test_boxes and any(r.test_view == TEST_DISCRIMINATIVE for r in table.rows):
        side = make_split(load_catalog(base.data.dataset, base.data.root), base.data.split).test
        detector_ms, detector_note = time_detector(test_boxes, side)
    results = run_rows(
        table.rows,
        base,
        out,
        seeds,
        test_boxes=test_boxes,
        latency=table.needs_latency,
        detector_ms=detector_ms,
        detector_note=detector_note,
        progress=not quiet,
    )
    summary = summarize(table, results)
    markdown = to_markdown(summary, setting_line(base, seeds))
    md_path, json_path = write_table(out, summary, markdown)
    if json_out:
        print_json(summary)
    else:
        print(markdown, end="")
        print(f"\nwritten: {md_path}, {json_path}")


def _dry_run(table: Table, base: RunConfig, out: Path, seeds: list[int], json_out: bool) -> None:
    from dva.reproduce import PARAMS, plan_rows

    planned = plan_rows(table.rows, base, out, seeds)
    rows = [
        {
            "row": p.row.name,
            "method": p.config.model.method,
            "test_view": p.row.test_view,
            "seed": p.seed,
            "trainable": p.trainable_params,
            "paper_params_m": p.row.paper.get(PARAMS),
            "run": str(p.run_dir),
            "status": p.status,
        }
        for p in planned
    ]
    if json_out:
        print_json(rows)
        return
    print(f"{table.title} ({base.model.backbone}); runs under {out / 'runs'}")
    print_table(
        [
            {
                **r,
                "trainable": f"{r['trainable']:,}",
                "paper_params_m": f"{r['paper_params_m']:g}" if r["paper_params_m"] else "-",
                "run": Path(r["run"]).name,
            }
            for r in rows
        ]
    )


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds expects distinct integers, got {text!r}")
    return seeds
