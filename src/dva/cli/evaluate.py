"""``dva eval``: Recall@K and MAP@R of a run (or of a frozen backbone) on a test split or a suite."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import typer

from dva.cli._common import (
    DataRootOpt,
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    RerankAlphaOpt,
    RerankKOpt,
    SplitOpt,
    WorkersOpt,
    print_json,
    print_table,
    split_csv,
)
from dva.distributed import init_distributed
from dva.errors import ConfigError
from dva.runtime import resolve_device

#: The paper's tables report Recall@1/2/4/8 in percent.
TABLE_KS = (1, 2, 4, 8)


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
        False,
        "--opa-test",
        help="Embed the test images' discriminative views (detector at test time, Table 8 "
        "'Base + ICA + OPA'); boxes from --boxes or the run's box file.",
    ),
    boxes: Path | None = typer.Option(None, "--boxes", help="With --opa-test: box file holding the test images."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = WorkersOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    suite: str | None = typer.Option(
        None, "--suite", help="Evaluate on every dataset of a suite found under --data-root: paper (Tables 2-7)."
    ),
    data_root: Path | None = typer.Option(
        None,
        "--data-root",
        help="With --suite: folder holding CUB_200_2011/, stanford_cars/, stanford_dogs/, "
        "nabirds/, fgvc-aircraft-2013b/, inat2021/ (docs/datasets.md).",
    ),
    dataset_dir: list[str] | None = typer.Option(
        None,
        "--dataset-dir",
        help="With --suite: NAME=PATH, where a dataset lives if not under --data-root (repeatable).",
    ),
    datasets: str | None = typer.Option(None, "--datasets", help="With --suite: only these, e.g. cub,nabirds."),
    rerank: str | None = typer.Option(
        None,
        "--rerank",
        help="Re-rank each query's ranking: aqe (alpha query expansion) or dba (database-side "
        "augmentation); the query stays out of every expansion.",
    ),
    rerank_k: int = RerankKOpt,
    alpha: float = RerankAlphaOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = JsonOpt,
) -> None:
    """Every test image queries all other test images by cosine similarity (paper protocol).

    Several GPUs: torchrun --nproc-per-node N -m dva eval ... embeds N shards of each gallery.

    The dataset, root and split default to the run's own; the test side of the split is used.

    With --suite paper: CUB-200-2011, Stanford Cars and Stanford Dogs on the test side of the
    run's protocol (open or closed), NABirds, FGVC-Aircraft and iNat2021's first 100
    categories as whole out-of-distribution galleries; datasets not found are skipped with a
    note, broken ones stop the suite before anything is embedded.

    Memory: one gallery at a time, kept as a float32 N x D array (NABirds: 48,562 x 768 x 4 B
    = 149 MB for ViT-B), plus a normalised copy and a similarity block of at most 2^26 entries
    with top-k's working copy: about 8 * N * D bytes + 512 MiB, never N x N (measured: the
    metrics on N = 48,562, D = 64 raise peak memory by 537 MiB).
    """
    from dva.config import ModelConfig, RunConfig
    from dva.data import load_catalog, make_split
    from dva.evaluate import evaluate_side
    from dva.index.rerank import check_rerank
    from dva.models import create_model
    from dva.runs import Run

    check_rerank(rerank, rerank_k, alpha)  # before anything is embedded
    if rerank is not None and suite is not None:
        raise ConfigError("--rerank evaluates one dataset (--dataset/--data or a run's); not with --suite")
    if suite is None and (data_root or dataset_dir or datasets):
        raise ConfigError("--data-root, --dataset-dir and --datasets go with --suite")
    if suite is not None and (dataset or data):
        raise ConfigError("--suite evaluates every dataset under --data-root; --dataset/--data evaluate one")
    if frozen:
        if not (backbone and ((dataset and data) or suite)):
            raise ConfigError("--frozen needs --backbone, and --dataset with --data (or --suite)")
        model_config = ModelConfig(backbone=backbone, pretrained=pretrained, method="frozen", img_size=img_size or 224)
        model = create_model(model_config)
        resize, cfg = None, RunConfig()  # OPA settings at their defaults
    elif run is not None:
        the_run = Run(run)
        cfg = the_run.config
        dataset, data, split = dataset or cfg.data.dataset, data or cfg.data.root, split or cfg.data.split
        model = the_run.load_model(weights) if suite is None else None  # the suite loads it itself
        model_config, resize = cfg.model, cfg.data.resize_size
    else:
        raise ConfigError("pass --run RUN_DIR, or --frozen --backbone NAME")
    # Under torchrun every rank embeds a shard of each gallery; rank 0 computes and prints the metrics.
    info, rank_device = init_distributed(resolve_device(device))
    quiet = quiet or not info.is_main
    common = dict(
        batch_size=batch_size, num_workers=workers, device=rank_device, precision=precision, progress=not quiet
    )
    if suite is not None:
        from dva.evaluate.suite import evaluate_run_on_suite, evaluate_suite

        chosen = dict(suite=suite, dataset_dirs=_parse_dirs(dataset_dir or []), only=split_csv(datasets), **common)
        if run is not None:  # the run's protocol, image size and own dataset, as the Python API gives them
            evaluate = partial(
                evaluate_run_on_suite, run, data_root, weights=weights, img_size=img_size, protocol=split, **chosen
            )
        else:
            evaluate = partial(
                evaluate_suite,
                model,
                data_root,
                img_size=img_size or model_config.img_size,
                protocol=split or "open",
                **chosen,
            )
        _run_suite(evaluate, suite, data_root, json_out=json_out, quiet=quiet, print_results=info.is_main)
        return
    side = make_split(load_catalog(dataset, data), split or "open").test
    view, opa_report = None, None
    if opa_test:
        from dva.opa.test_time import discriminative_views

        box_path = boxes or cfg.opa.boxes
        if not box_path:
            raise ConfigError("--opa-test needs boxes of the test images: --boxes FILE (dva detect --include-test)")
        view, counts = discriminative_views(box_path, side, cfg, root=data, dataset=dataset)
        opa_report = {"boxes": str(box_path), **counts}
    elif boxes is not None:
        raise ConfigError("--boxes is for --opa-test; evaluation otherwise uses the original images only")
    metrics = evaluate_side(
        model,
        side,
        img_size=img_size or model_config.img_size,
        resize_size=resize,
        view=view,
        rerank=rerank,
        rerank_k=rerank_k,
        alpha=alpha,
        **common,
    )
    if rerank is not None:
        metrics["rerank"] = {"method": rerank, "n": rerank_k, "alpha": alpha}
    if opa_report is not None:
        metrics["opa_test"] = opa_report
    if not info.is_main:
        return
    if json_out:
        print_json(metrics)
    else:
        shown = {k: v for k, v in metrics.items() if k not in ("opa_test", "rerank")}
        if rerank is not None:
            shown["rerank"] = f"{rerank} n={rerank_k} alpha={alpha:g}"
        print_table([{"dataset": dataset, "split": split or "open", **shown}])
        if opa_report is not None:
            print("test images seen as: " + ", ".join(f"{k} {v}" for k, v in opa_report.items() if k != "boxes"))


def _run_suite(
    evaluate: Callable[..., list[Any]],
    suite: str,
    data_root: Path | None,
    *,
    json_out: bool,
    quiet: bool,
    print_results: bool,
) -> None:
    """Run ``evaluate`` (``evaluate_suite`` or ``evaluate_run_on_suite``, bound) and print its results."""
    from dva.evaluate.suite import SuiteResult

    def announce(result: SuiteResult) -> None:
        if not (json_out or quiet) and result.skipped is None:
            print(f"{result.title}: R@1 {100 * result.metrics['recall@1']:.1f}", file=sys.stderr)

    results = evaluate(on_result=announce)
    if not print_results:
        return
    if json_out:
        print_json([r.to_dict() for r in results])
        return
    rows = [
        {
            "dataset": r.title,
            "split": r.protocol if r.protocol == "all" else f"{r.protocol} test",
            "role": r.role,
            "images": r.metrics["images"],
            **{f"R@{k}": f"{100 * r.metrics[f'recall@{k}']:.1f}" for k in TABLE_KS},
            "MAP@R": f"{100 * r.metrics['map@r']:.1f}",
        }
        for r in results
        if r.skipped is None
    ]
    print_table(rows)
    for r in results:
        if r.skipped is not None:
            print(f"note: {r.title} skipped, {r.skipped}")
        elif r.metrics.get("skipped"):
            print(f"note: {r.title}: {r.metrics['skipped']} images could not be decoded and were left out")
    if not rows:
        raise ConfigError(f"no dataset of the {suite} suite found under {data_root} (see docs/datasets.md)")


def _parse_dirs(values: list[str]) -> dict[str, str]:
    dirs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--dataset-dir expects NAME=PATH, got {value!r}")
        dirs[name.strip()] = path.strip()
    return dirs
