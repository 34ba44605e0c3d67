"""``dva train``: train a run (adapters + proxies) and write it to ``--out``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dva.cli._common import (
    DataRootOpt,
    DatasetOpt,
    JsonOpt,
    MethodOptionOpt,
    SplitOpt,
    parse_method_options,
    print_json,
    split_csv,
)
from dva.cli.opa import (
    BoxFileOpt,
    BoxThresholdOpt,
    DetectorDeviceOpt,
    PromptOpt,
    TextThresholdOpt,
    cli_detector_options,
)
from dva.config import LEGACY_MODEL_FIELDS, ModelConfig, RunConfig, from_dict, load_overrides
from dva.distributed import current
from dva.errors import ConfigError


def train(
    out: Path = typer.Option(..., "--out", help="Run directory to write (or to continue with --resume)."),
    dataset: str | None = DatasetOpt,
    data: str | None = DataRootOpt,
    split: str | None = SplitOpt,
    val_classes: int | None = typer.Option(
        None, "--val-classes", help="Hold out the last N training classes for validation (never the test split)."
    ),
    backbone: str | None = typer.Option(None, "--backbone", help="timm ViT name or offline backbone (dinov2_vits14.imgfocus)."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="Random weights with --no-pretrained."),
    method: str | None = typer.Option(
        None, "--method", help="dva (ICA + OPA + DPT, needs --boxes or --detector), ica, adaptformer, clip-adapter, "
        "full, partial-attn, partial-proj, partial-mlp, frozen (fine-tuning wants a small --lr, e.g. 1e-5); "
        "PEFT peers: lora, vpt-deep, vptsp-g (docs/reproduce.md)."
    ),
    method_option: list[str] | None = MethodOptionOpt,
    targets: str | None = typer.Option(None, "--targets", help="ICA targets, a subset of q,k,v. Paper: q,v."),
    rank: int | None = typer.Option(None, "--rank", help="ICA bottleneck rank. Paper: 16."),
    img_size: int | None = typer.Option(None, "--img-size", help="Crop size (resize is img-size * 256/224). Paper: 224."),
    epochs: int | None = typer.Option(None, "--epochs", help="Paper: 10."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size. Paper: 32."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate of the adapters / trained weights."),
    proxy_lr: float | None = typer.Option(None, "--proxy-lr", help="Learning rate of the proxies."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Paper: 1e-4."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adam (paper), adamw or sgd."),
    lambda_dist: float | None = typer.Option(None, "--lambda", help="Weight of the DPT distillation loss. Paper: 3."),
    warmup_epochs: float | None = typer.Option(None, "--warmup-epochs", help="Linear warm-up before the cosine schedule."),
    precision: str | None = typer.Option(None, "--precision", help="auto (bf16 on CUDA), bf16, fp16, fp32."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1, ..."),
    seed: int | None = typer.Option(None, "--seed"),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader worker processes."),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", help="Also write the resume checkpoint every N steps (0: at epoch ends only)."
    ),
    boxes: Path | None = typer.Option(
        None, "--boxes", help="OPA box file from `dva detect` (or your own); with --detector, the cache to fill."
    ),
    detector: str | None = typer.Option(
        None, "--detector", help="Detect the training boxes first (cached in --boxes, default RUN_DIR/boxes.jsonl)."
    ),
    prompt: str | None = PromptOpt,
    detector_model: str | None = typer.Option(
        None, "--detector-model", help="groundingdino/owlv2 weights (see dva detect --model)."
    ),
    box_threshold: float | None = BoxThresholdOpt,
    text_threshold: float | None = TextThresholdOpt,
    box_file: str | None = BoxFileOpt,
    detector_device: str | None = DetectorDeviceOpt,
    min_score: float | None = typer.Option(
        None, "--min-score", help="OPA: boxes scoring less are not trusted (original image used). Paper: 0.5."
    ),
    config_file: Path | None = typer.Option(None, "--config", help="YAML/JSON file with model/data/train/opa sections."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out exactly where it stopped."),
    compile_model: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the training forward (costs start-up time; docs/speed.md)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    json_out: bool = JsonOpt,
) -> None:
    """Train adapters and proxies on a frozen ViT (the paper's recipe by default).

    Writes config.json, per-epoch weights (safetensors), a resume checkpoint and
    metrics.jsonl into --out. Ctrl-C stops cleanly after the current step; --resume continues.

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m dva train ...
    --batch-size stays the global batch; rank 0 writes the run; the result equals a
    single-process run with the same global batch (docs/speed.md).
    """
    from dva.train import Trainer

    overrides = {
        "model": {
            "backbone": backbone,
            "pretrained": pretrained,
            "method": method,
            "method_options": parse_method_options(method_option),
            "targets": split_csv(targets),
            "rank": rank,
            "img_size": img_size,
        },
        "data": {"dataset": dataset, "root": data, "split": split, "val_classes": val_classes, "num_workers": workers},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "proxy_lr": proxy_lr,
            "weight_decay": weight_decay,
            "optimizer": optimizer,
            "lambda_dist": lambda_dist,
            "warmup_epochs": warmup_epochs,
            "precision": precision,
            "device": device,
            "seed": seed,
            "checkpoint_every": checkpoint_every,
            "compile": compile_model,
        },
        "opa": {
            "boxes": str(boxes) if boxes is not None else None,
            "detector": detector,
            "prompt": prompt,
            "min_score": min_score,
            "detector_options": cli_detector_options(
                model=detector_model, box_threshold=box_threshold, text_threshold=text_threshold, box_file=box_file,
                device=detector_device, data_root=data, detector=detector or "",
            ) or None,
        },
    }
    config = build_config(out, overrides, config_file, resume)
    _check_opa(config, out)
    summary = Trainer(config, out, progress=not quiet).fit(resume=resume)
    if not current().is_main:
        return
    if json_out:
        print_json(summary)
    else:
        print(f"run written to {out} ({summary['epochs']} epochs, {summary['train_seconds']:.0f} s)")


def _check_opa(config: RunConfig, out: Path) -> None:
    """Boxes go with methods that use OPA; ``--detector`` alone caches into the run directory."""
    from dva.models import get_method

    opa = config.opa
    if not get_method(config.model.method).uses_opa:
        if opa.boxes or opa.detector:
            raise ConfigError(f"--boxes/--detector give OPA's object views, which method {config.model.method!r} "
                              "does not use (--method dva does)")
        return
    if opa.detector and not opa.boxes:
        opa.boxes = str(out / "boxes.jsonl")


def build_config(out: Path, overrides: dict[str, dict[str, Any]], config_file: Path | None, resume: bool) -> RunConfig:
    """Defaults < the method's defaults < ``--config`` file < explicit options.

    On resume the saved config replaces both kinds of defaults. A config file may hold ICA's
    ``targets``/``rank``/``scale`` at the top of ``model`` (the older layout): they are read as
    the method's options.
    """
    if resume and not out.is_dir():
        raise ConfigError(f"{out}: no run to resume (no such folder); drop --resume to start one")
    saved = resume and (out / "config.json").is_file()
    # --config applies on resume too; what may not change there is refused by name (Trainer).
    base = RunConfig.load(out / "config.json").to_dict() if saved else RunConfig().to_dict()
    given = []
    if config_file is not None:
        layer = load_overrides(config_file)
        if isinstance(layer.get("model"), dict):
            layer["model"] = ModelConfig.upgrade(layer["model"], method=base["model"]["method"])
        _merge(base, layer)
        given.append(layer)
    options = {section: {k: v for k, v in values.items() if v is not None} for section, values in overrides.items()}
    # ICA's --targets/--rank set those options of the methods that take them (ica, dva), over
    # whatever the file or --method-option said; other methods ignore them, as they always did.
    flags = {k: options["model"].pop(k) for k in LEGACY_MODEL_FIELDS if k in options.get("model", {})}
    _merge(base, options)
    given.append(options)
    if flags:
        moved = ModelConfig.upgrade({"method": base["model"]["method"], **flags}).get("method_options", {})
        base["model"]["method_options"] = {**base["model"].get("method_options", {}), **moved}
    if not saved and isinstance(base.get("model"), dict) and isinstance(base["model"].get("method"), str):
        from dva.models.methods import apply_method_defaults

        apply_method_defaults(base, given)
    return from_dict(RunConfig, base, where=str(config_file or "options"))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "method_options":
            _merge(base[key], value)
        else:
            base[key] = value
