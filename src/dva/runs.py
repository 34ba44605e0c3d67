"""A run directory, the contract between training and everything that uses its result.

::

    RUN_DIR/
      config.json               RunConfig (backbone, method and its options, image size, ...) and the
                                TrainingRecord (class names, their number, dva version)
      model.safetensors         trained weights of the latest finished epoch (adapters + proxies)
      checkpoints/
        epoch-0001.safetensors  trained weights after each epoch
        resume.safetensors      everything needed to continue exactly (optimizer, position)
      metrics.jsonl             one JSON object per logged step and per epoch
      summary.json              written when training finishes

Only what training changed is stored: the frozen backbone is rebuilt from its name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dva._version import __version__
from dva.checkpoint import load_tensors
from dva.config import LEGACY_MODEL_FIELDS, RunConfig, TrainingRecord, identity_fields, weights_fields
from dva.errors import CheckpointError, ConfigError
from dva.models import RetrievalModel, create_model, get_method

MODEL_PREFIX = "model."
PROXY_KEY = "loss.proxy_anchor.proxies"


class Run:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config: RunConfig | None = None
        self._record: TrainingRecord | None = None

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def weights_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def resume_path(self) -> Path:
        return self.checkpoints_dir / "resume.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def epoch_path(self, epoch: int) -> Path:
        return self.checkpoints_dir / f"epoch-{epoch:04d}.safetensors"

    @property
    def config(self) -> RunConfig:
        if self._config is None:
            if not self.path.is_dir():
                raise CheckpointError(f"{self.path}: run directory not found")
            self._config = RunConfig.load(self.config_path)
        return self._config

    @property
    def finished(self) -> bool:
        return self.summary_path.is_file()

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text()) if self.finished else {}

    @property
    def record(self) -> TrainingRecord:
        """What training recorded beside the config: class names, their number, the dva version."""
        if self._record is None:
            self.config  # noqa: B018 - the same "not a run" error first
            self._record = TrainingRecord.load(self.config_path)
        return self._record

    def load_model(self, weights: str | Path | None = None, *, device: str | torch.device = "cpu") -> RetrievalModel:
        """Rebuild the model from ``config.json`` and load the trained weights into it."""
        return load_model(self.config, Path(weights) if weights else self.weights_path, device=device)

    def load_proxies(self) -> torch.Tensor:
        tensors, _ = load_tensors(self.weights_path)
        if PROXY_KEY not in tensors:
            raise CheckpointError(f"{self.weights_path}: holds no proxies ({PROXY_KEY})")
        return tensors[PROXY_KEY]


def load_model(config: RunConfig, weights: Path | None, *, device: str | torch.device = "cpu") -> RetrievalModel:
    """The one way a trained model is rebuilt: ``config``'s model, with ``weights`` loaded if it trains.

    Used by :meth:`Run.load_model` and by indexes (``dva.index.model``), which keep a copy of a
    run's ``config.json`` and weights. ``weights`` is ignored for methods that train nothing.
    """
    model = create_model(config.model)
    if get_method(config.model.method).trains:
        if weights is None:
            raise CheckpointError(f"method {config.model.method!r} needs its trained weights; none given")
        tensors, metadata = load_tensors(weights)
        load_trained_weights(model, tensors, metadata, config, source=weights)
    return model.to(device).eval()


def weights_metadata(config: RunConfig, **extra: Any) -> dict[str, Any]:
    """What a weights file records about the model it belongs to: the model's identity fields.

    Checked on load (:func:`check_weights_metadata`), so weights trained for another model (other
    backbone, method, ICA targets, rank or scale, ...) are refused rather than silently misused.
    """
    return {**_model_identity(config), "dva_version": __version__, **extra}


def _model_identity(config: RunConfig) -> dict[str, Any]:
    """``config.model``'s identity fields by name, method options written out in full, as JSON data."""
    identity = identity_fields(config.model)
    identity["method_options"] = get_method(config.model.method).resolve_options(config.model.method_options)
    plain = json.loads(json.dumps(identity))
    if not isinstance(plain, dict):
        raise TypeError(f"model identity is not a mapping: {plain!r}")
    return plain


def _upgrade_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata of an older weights file in today's layout (ICA's settings among the method options)."""
    legacy = {k: metadata[k] for k in LEGACY_MODEL_FIELDS if k in metadata}
    if not legacy or not isinstance(metadata.get("method"), str):
        return metadata
    upgraded = {k: v for k, v in metadata.items() if k not in LEGACY_MODEL_FIELDS}
    taken = get_method(metadata["method"]).legacy_fields
    options = dict(metadata.get("method_options") or {})
    options.update({k: v for k, v in legacy.items() if k in taken and k not in options})
    upgraded["method_options"] = options
    return upgraded


def check_same_images(
    trained_on: str, current: Callable[[], str], *, path: str | Path, refusal: str, advice: str
) -> None:
    """Refuse to reuse a run trained on other images than those a config names now.

    The one home of the check for both ways of reusing a run: resuming it (``dva train
    --resume``) and answering a table row with its numbers (:func:`dva.reproduce.run_rows`).
    Run names leave out where the data lives, so only the recorded
    :attr:`TrainingRecord.data_fingerprint` tells another collection in the same format apart.
    ``trained_on`` is that record, empty in runs made before it existed: those cannot be checked.
    ``current`` gives the fingerprint of the images named now (:func:`dva.data.data_fingerprint`);
    it is called only when there is a record to compare, as computing it stats every image.
    ``refusal`` says what is refused (it names the images' folder), ``advice`` what to do instead.
    """
    if trained_on and trained_on != current():
        raise ConfigError(f"{path}: {refusal} (other ids, classes or file sizes; dva.data.data_fingerprint). {advice}")


def check_weights_metadata(metadata: dict[str, Any], config: RunConfig, source: Path) -> None:
    """Refuse a weights or resume file whose metadata names another model than ``config``'s.

    Every ``weights`` field of the model (config metadata) that the file records is compared;
    older files record fewer, and what they do not record cannot be checked (e.g. ICA's scale).
    """
    recorded = _upgrade_metadata(metadata)
    want = _model_identity(config)
    checked = weights_fields()
    for name, value in want.items():
        if name not in recorded or name not in checked:
            continue
        if name == "method_options" and isinstance(recorded[name], dict):
            pairs = [(f"method_options.{k}", recorded[name][k], v) for k, v in value.items() if k in recorded[name]]
        else:
            pairs = [(name, recorded[name], value)]
        for what, have, asked in pairs:
            if have != asked:
                raise CheckpointError(
                    f"{source}: weights were trained with {what}={have!r} but the run config says {what}={asked!r}"
                )


def check_fits(given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """Refuse tensors that are not exactly ``expected``'s names and shapes (``what``: the model, for the message)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit {what} "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name, tensor in given.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)} "
                "(weights from another backbone or rank?)"
            )


def load_trained_weights(
    model: RetrievalModel, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], config: RunConfig, source: Path
) -> None:
    """Load adapter weights, refusing (with the reason) weights made for another model."""
    check_weights_metadata(metadata, config, source)
    given = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    check_fits(
        given, model.trainable_state_dict(), source, f"{config.model.backbone} with method {config.model.method}"
    )
    result = model.load_state_dict(given, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
