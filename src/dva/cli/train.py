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
    TightenOpt,
    cli_detector_options,
)
from dva.config import (
    LEGACY_MODEL_FIELDS,
    ModelConfig,
    RunConfig,
    config_fields,
    field_help,
    from_dict,
    load_overrides,
    parse_assignments,
)
from dva.distributed import current
from dva.errors import ConfigError


def _field(name: str, *flags: str) -> Any:
    """The ``dva train`` option of config field ``name`` (``"train.lr"``), its help the field's own."""
    leaf = name.rsplit(".", 1)[-1]
    return typer.Option(None, *(flags or (f"--{leaf.replace('_', '-')}",)), help=field_help(name))


#: Options whose parameter is not named as their config field (the field's name is the default).
PARAMETER_OF = {"data.root": "data", "data.num_workers": "workers", "train.compile": "compile_model"}
#: Options that are read into a field by hand (parsed, or built from several options).
COMPOSED = {"model.method_options", "opa.detector_options", "opa.boxes"}


def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run directory to write (or to continue with --resume)."),
    dataset: str | None = DatasetOpt,
    data: str | None = DataRootOpt,
    split: str | None = SplitOpt,
    val_classes: int | None = _field("data.val_classes"),
    val_fold: int | None = _field("data.val_fold"),
    backbone: str | None = _field("model.backbone"),
    pretrained: bool | None = _field("model.pretrained", "--pretrained/--no-pretrained"),
    method: str | None = typer.Option(
        None,
        "--method",
        help="dva (ICA + OPA + DPT, needs --boxes or --detector), ica, adaptformer, clip-adapter, "
        "full, partial-attn, partial-proj, partial-mlp (fine-tuning trains at lr 1e-5 unless --lr), frozen; "
        "PEFT peers: lora, vpt-deep, vptsp-g (docs/reproduce.md).",
    ),
    method_option: list[str] | None = MethodOptionOpt,
    targets: str | None = typer.Option(
        None, "--targets", help="ICA targets (ica, dva), a subset of q,k,v. Paper: q,v. = --method-option targets=..."
    ),
    rank: int | None = typer.Option(None, "--rank", help="ICA bottleneck rank (ica, dva). Paper: 16."),
    img_size: int | None = _field("model.img_size"),
    epochs: int | None = _field("train.epochs"),
    batch_size: int | None = _field("train.batch_size"),
    lr: float | None = _field("train.lr"),
    proxy_lr: float | None = _field("train.proxy_lr"),
    weight_decay: float | None = _field("train.weight_decay"),
    optimizer: str | None = _field("train.optimizer"),
    lambda_dist: float | None = _field("train.lambda_dist", "--lambda"),
    warmup_epochs: float | None = _field("train.warmup_epochs"),
    zoom_out: float | None = _field("train.zoom_out"),
    precision: str | None = _field("train.precision"),
    device: str | None = _field("train.device"),
    seed: int | None = _field("train.seed"),
    workers: int | None = _field("data.num_workers", "--workers"),
    checkpoint_every: int | None = _field("train.checkpoint_every"),
    boxes: Path | None = _field("opa.boxes"),
    detector: str | None = _field("opa.detector"),
    prompt: str | None = PromptOpt,
    detector_model: str | None = typer.Option(
        None, "--detector-model", help="groundingdino/owlv2 weights (see dva detect --model)."
    ),
    box_threshold: float | None = BoxThresholdOpt,
    text_threshold: float | None = TextThresholdOpt,
    box_file: str | None = BoxFileOpt,
    detector_device: str | None = DetectorDeviceOpt,
    tighten: float | None = TightenOpt,
    min_score: float | None = _field("opa.min_score"),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML/JSON file with model/data/train/opa sections."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out exactly where it stopped."
    ),
    compile_model: bool | None = _field("train.compile", "--compile/--no-compile"),
    assignments: list[str] | None = typer.Option(
        None,
        "--set",
        help="Any config field, SECTION.FIELD=VALUE (YAML value), repeatable; over every other option: "
        "--set train.alpha=16 --set opa.aspect='[3, 4]'.",
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

    overrides = config_overrides(ctx.params)
    overrides["model"].update(method_options=parse_method_options(method_option), targets=split_csv(targets), rank=rank)
    overrides["opa"].update(
        boxes=str(boxes) if boxes is not None else None,
        detector_options=cli_detector_options(
            model=detector_model,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            box_file=box_file,
            device=detector_device,
            tighten=tighten,
            data_root=data,
            detector=detector or "",
        )
        or None,
    )
    for section, values in parse_assignments(assignments or []).items():
        overrides[section].update(values)
    config = build_config(out, overrides, config_file, resume)
    _check_opa(config, out)
    summary = Trainer(config, out, progress=not quiet).fit(resume=resume)
    if not current().is_main:
        return
    if json_out:
        print_json(summary)
    else:
        print(f"run written to {out} ({summary['epochs']} epochs, {summary['train_seconds']:.0f} s)")


def config_overrides(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config sections the command-line options set, by field (``{"train": {"lr": 1e-4}, ...}``).

    Derived from the config's own fields: an option named as its field (or as
    :data:`PARAMETER_OF` says) sets it; options not given (None) set nothing.
    """
    overrides: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}, "opa": {}}
    for name, _ in config_fields(RunConfig):
        section, leaf = name.split(".")
        parameter = PARAMETER_OF.get(name, leaf)
        if name not in COMPOSED and params.get(parameter) is not None:
            overrides[section][leaf] = params[parameter]
    return overrides


def _check_opa(config: RunConfig, out: Path) -> None:
    """Boxes go with methods that use OPA; ``--detector`` alone caches into the run directory."""
    from dva.models import get_method

    opa = config.opa
    if not get_method(config.model.method).uses_opa:
        if opa.boxes or opa.detector:
            raise ConfigError(
                f"--boxes/--detector give OPA's object views, which method {config.model.method!r} "
                "does not use (--method dva does)"
            )
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
