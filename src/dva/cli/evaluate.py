"""``dva eval``: Recall@K and MAP@R of a run (or of a frozen backbone) on a test split."""

from __future__ import annotations

from pathlib import Path

import typer

from dva.cli._common import (
    DataRootOpt,
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    SplitOpt,
    WorkersOpt,
    print_json,
    print_table,
)
from dva.errors import ConfigError


def evaluate(
    run: Path | None = typer.Option(None, "--run", help="Run directory written by `dva train`."),
    data: str | None = DataRootOpt,
    dataset: str | None = DatasetOpt,
    split: str | None = SplitOpt,
    frozen: bool = typer.Option(False, "--frozen", help="Evaluate a frozen backbone, no run needed."),
    backbone: str | None = typer.Option(None, "--backbone", help="With --frozen: the backbone to evaluate."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="With --frozen: random weights."),
    img_size: int | None = typer.Option(None, "--img-size", help="Crop size (default: the run's)."),
    weights: Path | None = typer.Option(None, "--weights", help="A specific epoch file instead of model.safetensors."),
    opa_test: bool = typer.Option(
        False, "--opa-test", help="Embed the test images' discriminative views (detector at test time, Table 8 "
        "'Base + ICA + OPA'); boxes from --boxes or the run's box file."
    ),
    boxes: Path | None = typer.Option(None, "--boxes", help="With --opa-test: box file holding the test images."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = WorkersOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
) -> None:
    """Every test image queries all other test images by cosine similarity (paper protocol).

    The dataset, root and split default to the run's own; the test side of the split is used.
    """
    from dva.config import ModelConfig, RunConfig
    from dva.data import load_catalog, make_split
    from dva.evaluate import evaluate_side
    from dva.models import create_model
    from dva.runs import Run

    if frozen:
        if not (backbone and dataset and data):
            raise ConfigError("--frozen needs --backbone, --dataset and --data")
        model_config = ModelConfig(backbone=backbone, pretrained=pretrained, method="frozen", img_size=img_size or 224)
        model = create_model(model_config)
        resize, cfg = None, RunConfig()  # OPA settings at their defaults
    elif run is not None:
        the_run = Run(run)
        cfg = the_run.config
        dataset, data, split = dataset or cfg.data.dataset, data or cfg.data.root, split or cfg.data.split
        model = the_run.load_model(weights)
        model_config, resize = cfg.model, cfg.data.resize_size
    else:
        raise ConfigError("pass --run RUN_DIR, or --frozen --backbone NAME")
    side = make_split(load_catalog(dataset, data), split or "open").test
    view, opa_report = None, None
    if opa_test:
        from dva.opa.training import discriminative_views

        box_path = boxes or cfg.opa.boxes
        if not box_path:
            raise ConfigError("--opa-test needs boxes of the test images: --boxes FILE (dva detect --include-test)")
        view, counts = discriminative_views(box_path, side, cfg, root=data, dataset=dataset)
        opa_report = {"boxes": str(box_path), **counts}
    elif boxes is not None:
        raise ConfigError("--boxes is for --opa-test; evaluation otherwise uses the original images only")
    metrics = evaluate_side(
        model, side, img_size=img_size or model_config.img_size, resize_size=resize, batch_size=batch_size,
        num_workers=workers, device=device, precision=precision, progress=not quiet, view=view,
    )
    if opa_report is not None:
        metrics["opa_test"] = opa_report
    if json_out:
        print_json(metrics)
    else:
        shown = {k: v for k, v in metrics.items() if k != "opa_test"}
        print_table([{"dataset": dataset, "split": split or "open", **shown}])
        if opa_report is not None:
            print("test images seen as: " + ", ".join(f"{k} {v}" for k, v in opa_report.items() if k != "boxes"))
