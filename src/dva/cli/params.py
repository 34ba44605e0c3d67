"""``dva params``: the trainable-parameter report of a method (PEFT's print_trainable_parameters)."""

from __future__ import annotations

import typer

from dva.cli._common import JsonOpt, MethodOptionOpt, parse_method_options, print_json, split_csv


def params(
    backbone: str = typer.Option("vit_base_patch16_224", "--backbone", help="timm ViT name or offline backbone."),
    method: str = typer.Option("ica", "--method", help="Training method (see `dva train --help`)."),
    method_option: list[str] | None = MethodOptionOpt,
    targets: str | None = typer.Option(None, "--targets", help="ICA targets (subset of q,k,v). Default: q,v."),
    rank: int | None = typer.Option(None, "--rank", help="ICA rank (ica, dva). Default: 16."),
    img_size: int = typer.Option(224, "--img-size", help="Input size (does not change the counts)."),
    pretrained: bool = typer.Option(
        False, "--pretrained/--no-pretrained", help="Ignored: counts never depend on weights, so nothing is downloaded."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Count trainable and total parameters (proxies, which depend on the dataset, are not counted).

    ViT-B/16 with rank 16: one ICA target 294,912, two 589,824, three 884,736 (paper Table 9);
    clip-adapter 294,912; adaptformer 1,189,632; full 85,798,656 (docs/reproduce.md).
    """
    from dva.config import ModelConfig
    from dva.models import get_method, parameter_report

    flags = {k: v for k, v in {"targets": split_csv(targets), "rank": rank}.items() if v is not None}
    flagged = ModelConfig.upgrade({"method": method, **flags}).get("method_options", {})  # ICA's, for ica and dva
    options = {**(parse_method_options(method_option) or {}), **flagged}
    report = parameter_report(backbone=backbone, method=method, method_options=options, img_size=img_size)
    resolved = get_method(method).resolve_options(options)
    if json_out:
        extra = {"options": resolved} if resolved else {}
        print_json({"trainable": report.trainable, "total": report.total, **extra})
    else:
        shown = "".join(f" {k}={v}" for k, v in resolved.items())
        print(f"{backbone} / {method}{shown}: {report}")
