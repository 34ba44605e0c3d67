"""Configuration as plain dataclasses, with the paper's values as defaults.

A run is fully described by a :class:`RunConfig` (model + data + training), saved as
``config.json`` in the run directory. Everything that reads a run (``dva eval``, ``dva index``,
``dva serve``, ``--resume``) rebuilds the model from that file, so the file is the contract
between stages. Loading is strict: an unknown or mistyped field is an error naming the field,
never silently ignored.

Every field says what it is for in its metadata (PEFT's ``LoraConfig`` style), and that
metadata is the one answer to "what makes two runs the same" (docs/config.md):

- ``identity``: the field changes what a run computes. Run names (``dva reproduce``), the
  weights-file metadata checked on load and the index fingerprint are all derived from the
  identity fields (:func:`identity_fields`, :func:`identity_dict`). ``identity=WHEN_SET``
  (fields added after runs were named): identity, but left out of :func:`identity_dict`
  while at its default, so runs made before the field existed keep their names.
- ``resumable``: the field may differ when an interrupted run is resumed
  (:func:`resumable_fields`); by default exactly the fields that are not identity.
- ``weights`` (model fields): trained weights are only valid for the same value, so a weights
  file records it and loading checks it (:func:`dva.runs.check_weights_metadata`). The image
  size is identity but not ``weights``: adapters trained at one size run at another
  (``dva visualize --img-size``), and tensor shapes are checked on load anyway.
- ``help``: the field's one-line help, which ``dva train`` shows for its option.

What training *produces* (class names, their number, the dva version) is not configuration:
it lives in :class:`TrainingRecord`, stored beside the config in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dva.errors import ConfigError

#: Paper default backbone (docs/method.md section 1): ViT-B/16, ImageNet-21k, original Google weights.
DEFAULT_BACKBONE = "vit_base_patch16_224.orig_in21k"
#: The paper's method (ICA + OPA + DPT).
DEFAULT_METHOD = "dva"


#: ``setting(..., identity=WHEN_SET)``: the field is identity, but :func:`identity_dict` leaves it
#: out while it holds its default. A field added later must not rename the finished runs (and
#: change the index fingerprints) that were made before it existed, when it did not change them.
WHEN_SET: typing.Final = "when-set"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    identity: bool | typing.Literal["when-set"] = True,
    resumable: bool | None = None,
    weights: bool | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its metadata; ``resumable`` defaults to ``not identity``, ``weights`` to ``identity``.

    ``identity=WHEN_SET``: identity, named in run keys and hashes only when not at its default.
    """
    is_identity = identity is True or identity == WHEN_SET
    metadata = {
        "help": help,
        "identity": is_identity,
        "identity_when_set": identity == WHEN_SET,
        "resumable": (not is_identity) if resumable is None else resumable,
        "weights": is_identity if weights is None else weights,
    }
    return field(default=default, default_factory=default_factory, metadata=metadata)


#: ICA's adapter settings were ``ModelConfig`` fields before they moved into the ``ica`` and
#: ``dva`` methods' options; config files and weights written then still hold them at the top
#: of ``model``. These were their defaults, which every run of another method recorded.
LEGACY_MODEL_FIELDS: dict[str, Any] = {"targets": ("q", "v"), "rank": 16, "scale": 1.0}


@dataclass(slots=True)
class ModelConfig:
    """What to build: the frozen backbone and how it is adapted (docs/method.md sections 1-2).

    Config sections have ``__slots__``: setting a field they do not have (``model.rank = 8``,
    from before ICA's settings became options) is an error, not a silently ignored attribute.
    """

    backbone: str = setting(
        DEFAULT_BACKBONE, help="timm ViT name or offline backbone (dinov2_vits14.imgfocus). Paper: ViT-B/16 in21k."
    )
    #: False builds the backbone with random weights, seeded by ``init_seed`` so a run can be
    #: rebuilt bit-for-bit later (tests and speed benchmarks use this).
    pretrained: bool = setting(
        True, help="Pre-trained backbone weights (random weights, seeded, with --no-pretrained)."
    )
    init_seed: int = setting(0, help="Seed of the random backbone weights when not pretrained.")
    img_size: int = setting(224, help="Crop size (resize is img-size * 256/224). Paper: 224.", weights=False)
    #: See ``dva.models.methods``: "dva" (ICA + OPA + DPT, the paper's), "ica", "full", ...
    method: str = setting(DEFAULT_METHOD, help="Training method (dva list: `dva train --help`).")
    #: The method's own settings, checked against its options dataclass (ICA's targets, rank and
    #: scale for ``ica`` and ``dva``; AdaptFormer's bottleneck width, ...).
    method_options: dict[str, Any] = setting(
        default_factory=dict, help="Options of the method, KEY=VALUE (see the method's options dataclass)."
    )

    @staticmethod
    def upgrade(raw: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
        """Read a ``model`` section of an older layout: ICA's top-level fields move into the options.

        They go to ``method_options`` for the methods that take them (``ica``, ``dva``); given in
        both places, they must agree. Other methods never read them and they are dropped.
        ``method``: the method when ``raw`` does not name one (a partial override file).
        """
        raw = dict(raw)
        legacy = {k: raw.pop(k) for k in LEGACY_MODEL_FIELDS if k in raw}
        if not legacy:
            return raw
        from dva.models.methods import get_method  # the registry imports this module

        name = raw.get("method", method or DEFAULT_METHOD)
        taken = get_method(name).legacy_fields if isinstance(name, str) else ()
        options = dict(raw.get("method_options") or {})
        for key, value in legacy.items():
            if key not in taken:
                continue
            if key in options and json.dumps(options[key]) != json.dumps(value, default=list):
                raise ConfigError(
                    f"model.{key}={value!r} and model.method_options.{key}={options[key]!r} disagree; "
                    f"keep the method option"
                )
            options[key] = value
        if options or "method_options" in raw:
            raw["method_options"] = options
        return raw


@dataclass(slots=True)
class DataConfig:
    """Which images to train on and how they are read (docs/method.md sections 5-6)."""

    dataset: str = setting("cub", help="Dataset format: cub, cub100, cars, dogs, nabirds, aircraft, inat, folder.")
    root: str = setting("", help="Where the dataset lives.", identity=False)
    split: str = setting("open", help="open (paper: train on the first half of the classes) or the official split.")
    #: Used for logging and hyper-parameter choice; the test split is never used for selection.
    val_classes: int = setting(0, help="Hold out the last N training classes for validation (never the test split).")
    #: Class-level cross-validation: fold k holds out the k-th block of ``val_classes`` from the end.
    #: Identity only when set, so runs made before folds existed keep their names (docs/config.md).
    val_fold: int = setting(
        0,
        help="Which block of val_classes to hold out: 0 the last N training classes, 1 the N before them, ...",
        identity=WHEN_SET,
        weights=False,
    )
    #: Images are resized to ``resize_size`` squared, then cropped to ``ModelConfig.img_size``.
    resize_size: int | None = setting(None, help="Resize before the crop; default keeps the paper's 256/224 ratio.")
    num_workers: int = setting(2, help="DataLoader worker processes.", identity=False)
    #: Images that fail are skipped and counted; more than this stops the run.
    max_decode_errors: float = setting(
        0.01, help="Decoding failures tolerated during training, as a fraction of the training set."
    )


@dataclass(slots=True)
class OPAConfig:
    """Object-Perceptual Adaptation (docs/method.md section 3): training-time object views."""

    #: Required when the method uses OPA; with ``detector`` set, the cache that training fills first.
    boxes: str | None = setting(
        None, help="OPA box file from `dva detect` (or your own); with --detector, the cache to fill."
    )
    #: See ``dva detect --help``.
    detector: str | None = setting(
        None, help="Detect the training boxes first (cached in --boxes, default RUN_DIR/boxes.jsonl)."
    )
    #: ``"{class}"`` = each image's class name. None: the dataset's meta-category ("bird").
    prompt: str | None = setting(None, help="Detector prompt template.")
    #: ``model``, ``box_threshold``, ..., see ``dva.opa.detectors``.
    detector_options: dict[str, Any] = setting(default_factory=dict, help="Options of the detector.")
    min_score: float = setting(0.5, help="OPA: boxes scoring less are not trusted (original image used). Paper: 0.5.")
    enlarge: float = setting(1.1, help="OPA: the box is enlarged by this factor before cropping.")
    aspect: tuple[int, int] = setting(
        (3, 4), help="OPA: the discriminative crop is padded on its short side to at least short:long."
    )
    max_area: float = setting(0.5, help="OPA: no background view when the box covers this fraction or more.")


@dataclass(slots=True)
class TrainConfig:
    """The paper's recipe (docs/method.md section 5) plus what the paper left open."""

    epochs: int = setting(10, help="Paper: 10.")
    batch_size: int = setting(32, help="Global batch size. Paper: 32.")
    #: A method may bring its own default (fine-tuning: ``dva.models.methods.FINE_TUNE_LR``).
    lr: float = setting(1e-3, help="Learning rate of the adapters / trained weights (fine-tuning methods: 1e-5).")
    #: Proxy-Anchor's authors train proxies much faster than the model; see the README for the
    #: measurement behind both defaults.
    proxy_lr: float = setting(1e-1, help="Learning rate of the proxies.")
    weight_decay: float = setting(1e-4, help="Paper: 1e-4.")
    optimizer: str = setting("adam", help="adam (paper), adamw or sgd.")
    warmup_epochs: float = setting(0.0, help="Linear warm-up (epochs) before the cosine schedule.")
    #: Proxy-Anchor (Kim et al. 2020) and DPT (docs/method.md section 4).
    alpha: float = setting(32.0, help="Proxy-Anchor's alpha.")
    margin: float = setting(0.1, help="Proxy-Anchor's margin.")
    lambda_dist: float = setting(3.0, help="Weight of the DPT distillation loss. Paper: 3.")
    #: Precision changes the numbers a run computes, so it is identity (unlike the device).
    precision: str = setting("auto", help="auto (bf16 on CUDA), bf16, fp16, fp32.")
    #: ``device`` and ``compile`` change only where and in which order floating-point
    #: operations run, not what is computed: a run may resume elsewhere.
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1, ...", identity=False)
    seed: int = setting(0, help="Seed of initialisation, batch order and augmentation.")
    checkpoint_every: int = setting(
        0, help="Also write the resume checkpoint every N steps (0: at epoch ends only).", identity=False
    )
    keep_checkpoints: int = setting(0, help="Keep the last N per-epoch weight files (0 = keep all).", identity=False)
    #: Opt-in: compiling costs a minute or more up front; docs/speed.md has the measured gain.
    compile: bool = setting(
        False, help="torch.compile the training forward (costs start-up time; docs/speed.md).", identity=False
    )
    #: Identity only when set: runs made before zoom-out existed keep their names (WHEN_SET).
    #: Not ``weights``: the weights do not depend on how they were trained to be loaded.
    zoom_out: float = setting(
        0.0,
        help="Probability that a training image's original view is zoomed out (shrunk onto its own blurred "
        "copy), for tightly cropped data (docs/opa.md). 0 = off, the paper's recipe.",
        identity=WHEN_SET,
        weights=False,
    )
    zoom_scale: tuple[float, float] = setting(
        (0.35, 0.75),
        help="Range of the zoomed-out photo's side, as a fraction of the image side, drawn uniformly.",
        identity=WHEN_SET,
        weights=False,
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings that cannot be trained with, as the :class:`ConfigError` a config raises.

        Run when the config is built, and again by the trainer (``dva.train.trainer.zoom_augment``):
        a field set after the config was built is checked too.
        """
        try:
            check_zoom(self.zoom_out, self.zoom_scale)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_zoom(probability: float, scale: tuple[float, float]) -> None:
    """Refuse zoom-out settings that cannot be drawn (ValueError), naming the config field.

    The one check of ``train.zoom_out`` and ``train.zoom_scale``: :meth:`TrainConfig.check` and
    :class:`dva.data.zoom.ZoomOutAugment` (built without a config too) both call it. It lives
    here rather than in :mod:`dva.data.zoom` so that importing the config stays cheap
    (:mod:`dva.data` loads PIL and numpy).
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"train.zoom_out: the zoom-out probability must be in [0, 1], got {probability!r}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(
            f"train.zoom_scale: the zoom-out scale range must satisfy 0 < min <= max <= 1, got {list(scale)!r}"
        )


#: Keys of ``config.json`` that hold the :class:`TrainingRecord`, not configuration.
RECORD_KEYS = ("class_names", "num_classes", "dva_version", "data_fingerprint")


@dataclass(slots=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    opa: OPAConfig = field(default_factory=OPAConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, record: TrainingRecord | None = None) -> None:
        """Write ``config.json``: the config, plus what training recorded when given."""
        from dva._io import atomic_write_json

        atomic_write_json(path, {**self.to_dict(), **(record.to_dict() if record is not None else {})})

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config of a ``config.json`` (its training record is read by :meth:`TrainingRecord.load`)."""
        return cls.from_saved(read_run_file(path), where=str(path))

    @classmethod
    def from_saved(cls, raw: Mapping[str, Any], *, where: str) -> RunConfig:
        """The config part of a ``config.json`` already read (:func:`read_run_file`): who needs both
        halves (resuming) reads the file once and builds each from it."""
        return from_dict(cls, {k: v for k, v in raw.items() if k not in RECORD_KEYS}, where=where)


@dataclass
class TrainingRecord:
    """What training found out and wrote beside the config: never an input, never identity."""

    class_names: list[str] = field(default_factory=list)
    num_classes: int = 0
    dva_version: str = ""
    #: :func:`dva.data.data_fingerprint` of the images trained and tested on ("" in runs made
    #: before it was recorded: those are reused unchecked).
    data_fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> TrainingRecord:
        return cls.from_saved(read_run_file(path), where=str(path))

    @classmethod
    def from_saved(cls, raw: Mapping[str, Any], *, where: str) -> TrainingRecord:
        """The record part of a ``config.json`` already read (:func:`read_run_file`)."""
        return from_dict(cls, {k: raw[k] for k in RECORD_KEYS if k in raw}, where=where)


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run, config and record together (see ``from_saved``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: run config not found (is this a run directory made by `dva train`?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, opa)")
    return raw


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of config section ``cls``.

    Config sections have ``__slots__``, so ``OPAConfig.min_score`` is a slot descriptor, not
    the default: code that shares a section's defaults (the view policy, ``dva views``) asks here.
    """
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            raise ConfigError(f"{cls.__name__}.{name} has no default")
    raise ConfigError(f"{cls.__name__} has no field {name!r}")


def config_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every leaf field of a config dataclass as ``("train.lr", Field)``, sections flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def parse_assignments(assignments: Iterable[str], cls: type | None = None) -> dict[str, dict[str, Any]]:
    """``["train.lr=1e-4", "opa.aspect=[3, 4]"]`` as config sections, the values read as YAML.

    Every field of ``cls`` (RunConfig) is reachable this way (``dva train --set``), including
    those without an option of their own. An unknown field or a missing ``=`` is an error naming
    it; types are checked when the config is built (:func:`from_dict`).
    """
    known = {name for name, _ in config_fields(cls or RunConfig)}
    sections: dict[str, dict[str, Any]] = {}
    for text in assignments:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"--set {text!r}: write SECTION.FIELD=VALUE, e.g. train.warmup_epochs=1")
        if name not in known:
            raise ConfigError(f"--set {name}: no such config field; fields: {', '.join(sorted(known))}")
        section, leaf = name.split(".", 1)
        sections.setdefault(section, {})[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return sections


def with_assignments(config: RunConfig, assignments: Iterable[str]) -> RunConfig:
    """``config`` with ``--set SECTION.FIELD=VALUE`` assignments applied, checked as ``dva train --set``
    checks them (unknown fields and wrong types are errors naming the field). For scripts and the
    benchmarks, which build a config in code and let the user change any field of it."""
    assignments = list(assignments)
    if not assignments:
        return config
    raw = config.to_dict()
    for section, values in parse_assignments(assignments).items():
        raw[section].update(values)
    return from_dict(RunConfig, raw, where="--set")


def field_help(name: str, cls: type | None = None) -> str:
    """The help of field ``name`` (``"train.lr"``) of ``cls`` (RunConfig), from its metadata."""
    for dotted, f in config_fields(cls or RunConfig):
        if dotted == name:
            text = f.metadata["help"]
            if not isinstance(text, str):
                raise TypeError(f"the help of config field {name} is a {type(text).__name__}, not a str")
            return text
    raise KeyError(name)


def weights_fields(cls: type | None = None) -> frozenset[str]:
    """Names of the ``ModelConfig`` fields (or ``cls``'s) that trained weights are only valid for."""
    return frozenset(name for name, f in config_fields(cls or ModelConfig) if f.metadata.get("weights", False))


def identity_fields(config: Any) -> dict[str, Any]:
    """``{"model.backbone": ..., "train.lr": ...}``: the values of ``config``'s identity fields."""
    values = _flat_values(config)
    return {name: values[name] for name, f in config_fields(type(config)) if f.metadata.get("identity", True)}


def resumable_fields(cls: type | None = None) -> frozenset[str]:
    """Dotted names of the fields that may change when an interrupted run is resumed."""
    return frozenset(name for name, f in config_fields(cls or RunConfig) if f.metadata.get("resumable", False))


def identity_dict(config: Any) -> dict[str, Any]:
    """The identity fields as nested JSON data, in the stable layout that names runs and indexes.

    Run directories (``dva reproduce``, bench/quality.py) and index fingerprints are hashes of
    this dict, so its layout must not move with the code: ``WHEN_SET`` fields at their default
    are left out (runs made before those fields existed keep their names), ICA's settings are written at the top
    of ``model`` as they were before they became method options (for every method: the values
    of ``ica`` and ``dva``, the old defaults for the others), so finished runs keep their names.
    """
    nested: dict[str, Any] = {}
    omitted = _at_default_when_set(config)
    for name, value in identity_fields(config).items():
        if name in omitted:
            continue
        parent = nested
        *sections, leaf = name.split(".")
        for section in sections:
            parent = parent.setdefault(section, {})
        parent[leaf] = json.loads(json.dumps(value))
    model = (
        nested.get("model") if isinstance(config, RunConfig) else nested if isinstance(config, ModelConfig) else None
    )
    if model is not None:
        _stable_model_layout(model)
    return nested


def _at_default_when_set(config: Any) -> set[str]:
    """Dotted names of ``config``'s ``WHEN_SET`` fields that hold their default (left out of the identity)."""
    values = _flat_values(config)
    omitted = set()
    for name, f in config_fields(type(config)):
        if f.metadata.get("identity_when_set", False) and _holds_default(f, values[name]):
            omitted.add(name)
    return omitted


def _holds_default(f: dataclasses.Field[Any], value: Any) -> bool:
    """Whether ``value`` (as stored or as plain JSON data) equals field ``f``'s default."""
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    return json.dumps(value, default=list) == json.dumps(default, default=list)


def _stable_model_layout(model: dict[str, Any]) -> None:
    defaults = hoist_legacy_fields(model)
    for key, old_default in LEGACY_MODEL_FIELDS.items():
        model.setdefault(key, json.loads(json.dumps(defaults.get(key, old_default))))
    _drop_method_options_at_default_when_set(model)


def _drop_method_options_at_default_when_set(model: dict[str, Any]) -> None:
    """Leave out the method options declared ``identity=WHEN_SET`` that hold their default.

    As for config fields: an option added to a method later (``also_train`` of ``ica`` and
    ``dva``) must not rename the runs that were finished before it existed.
    """
    from dva.models.methods import get_method  # the registry imports this module

    options_type = get_method(model["method"]).options
    options = model.get("method_options")
    if options_type is None or not isinstance(options, dict):
        return
    for f in dataclasses.fields(options_type):
        if f.metadata.get("identity_when_set", False) and f.name in options and _holds_default(f, options[f.name]):
            del options[f.name]


def hoist_legacy_fields(model: dict[str, Any]) -> dict[str, Any]:
    """Move ICA's options of ``model`` (a ``model`` section as plain data) to its top, the older layout.

    Only those of a method that takes them (``ica``, ``dva``); returns that method's defaults for
    them (``{}`` for other methods). The inverse of :meth:`ModelConfig.upgrade`.
    """
    from dva.models.methods import get_method  # the registry imports this module

    method = get_method(model["method"])
    options = dict(model.get("method_options") or {})
    for key in method.legacy_fields:
        if key in options:
            model[key] = json.loads(json.dumps(options.pop(key)))
    model["method_options"] = options
    return {k: v for k, v in method.default_options().items() if k in method.legacy_fields}


def _flat_values(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat_values(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


T = TypeVar("T")


def from_dict(cls: type[T], raw: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from plain data, checking every field's name and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in _dataclass_fields(cls)}
    if cls is ModelConfig:
        raw = ModelConfig.upgrade(raw)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _dataclass_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return dataclasses.fields(cls)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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
