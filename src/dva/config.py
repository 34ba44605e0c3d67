"""Configuration as plain dataclasses, with the paper's values as defaults.

A run is fully described by a :class:`RunConfig` (model + data + training), saved as
``config.json`` in the run directory. Everything that reads a run (``dva eval``, ``dva index``,
``dva serve``, ``--resume``) rebuilds the model from that file, so the file is the contract
between stages. Loading is strict: an unknown or mistyped field is an error naming the field,
never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dva.errors import ConfigError

#: Paper default backbone (METHOD.md section 1): ViT-B/16, ImageNet-21k, original Google weights.
DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"


@dataclass
class ModelConfig:
    """What to build: the frozen backbone and how it is adapted (METHOD.md sections 1-2)."""

    backbone: str = DEFAULT_BACKBONE
    #: False builds the backbone with random weights, seeded by ``init_seed`` so a run can be
    #: rebuilt bit-for-bit later (tests and speed benchmarks use this).
    pretrained: bool = True
    init_seed: int = 0
    img_size: int = 224
    #: Training method, see ``dva.models.methods``: "dva" (ICA + OPA + DPT, the paper's), "ica", "full", ...
    method: str = "dva"
    #: ICA: which slices of the fused qkv projection get an adapter, its rank and scale.
    targets: tuple[str, ...] = ("q", "v")
    rank: int = 16
    scale: float = 1.0
    #: Extra, method-specific options (e.g. AdaptFormer's bottleneck width).
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which images to train on and how they are read (METHOD.md sections 5-6)."""

    dataset: str = "cub"
    root: str = ""
    split: str = "open"
    #: Hold out the last N training classes as a validation set (open-set style). Used for
    #: logging and hyper-parameter choice; the test split is never used for selection.
    val_classes: int = 0
    #: Images are resized to ``resize_size`` squared, then cropped to ``ModelConfig.img_size``.
    #: None keeps the paper's 256/224 ratio.
    resize_size: int | None = None
    num_workers: int = 2
    #: Decoding failures tolerated during training, as a fraction of the training set
    #: (images that fail are skipped and counted); more than this stops the run.
    max_decode_errors: float = 0.01


@dataclass
class OPAConfig:
    """Object-Perceptual Adaptation (METHOD.md section 3): training-time object views."""

    #: Box file: a cache written by ``dva detect`` or a user's box file. Required when the
    #: method uses OPA; with ``detector`` set, the cache that training fills first.
    boxes: str | None = None
    #: Detect the training images' boxes when training starts (see ``dva detect --help``).
    detector: str | None = None
    #: Detector prompt template; ``"{class}"`` = each image's class name. None: the dataset's
    #: meta-category ("bird").
    prompt: str | None = None
    #: Options of the detector (``model``, ``box_threshold``, ...), see ``dva.opa.detectors``.
    detector_options: dict[str, Any] = field(default_factory=dict)
    #: Boxes scoring less are not trusted: the original image stands in for the object views.
    min_score: float = 0.5
    enlarge: float = 1.1
    #: The discriminative crop is padded on its short side to at least ``short:long``.
    aspect: tuple[int, int] = (3, 4)
    #: No background view when the box covers this fraction of the image or more.
    max_area: float = 0.5


@dataclass
class TrainConfig:
    """The paper's recipe (METHOD.md section 5) plus what the paper left open."""

    epochs: int = 10
    batch_size: int = 32
    #: Learning rate of the adapters (or of whatever the method trains in the backbone).
    lr: float = 1e-3
    #: Learning rate of the Proxy-Anchor proxies. Proxy-Anchor's authors train proxies much
    #: faster than the model; see the README for the measurement behind both defaults.
    proxy_lr: float = 1e-1
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    #: Linear warm-up length in epochs before the cosine schedule (0 = paper).
    warmup_epochs: float = 0.0
    #: Proxy-Anchor (Kim et al. 2020) and DPT (METHOD.md section 4).
    alpha: float = 32.0
    margin: float = 0.1
    lambda_dist: float = 3.0
    #: "auto" = bf16 autocast on CUDA, float32 elsewhere; or "bf16", "fp16", "fp32".
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    #: Also write the resume checkpoint every N optimizer steps (0 = only at epoch ends).
    checkpoint_every: int = 0
    #: Keep the last N per-epoch weight files (0 = keep all).
    keep_checkpoints: int = 0
    #: ``torch.compile`` the training forward (opt-in: compiling costs a minute or more up
    #: front; docs/speed.md has the measured gain).
    compile: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    opa: OPAConfig = field(default_factory=OPAConfig)
    #: Filled when training starts; evaluation and search read them back.
    class_names: list[str] = field(default_factory=list)
    num_classes: int = 0
    dva_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from dva._io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: run config not found (is this a run directory made by `dva train`?)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return from_dict(cls, raw, where=str(path))


T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from plain data, checking every field's name and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of config sections (``model:``, ``train:``, ...)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, opa)")
    return data
