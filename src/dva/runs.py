"""A run directory, the contract between training and everything that uses its result.

::

    RUN_DIR/
      config.json               RunConfig: backbone, method, targets, rank, image size, classes, version
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
from pathlib import Path
from typing import Any

import torch

from dva.checkpoint import load_tensors
from dva.config import RunConfig
from dva.errors import CheckpointError
from dva.models import RetrievalModel, create_model, get_method

MODEL_PREFIX = "model."
PROXY_KEY = "loss.proxy_anchor.proxies"


class Run:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config: RunConfig | None = None

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

    def load_model(self, weights: str | Path | None = None, *, device: str | torch.device = "cpu") -> RetrievalModel:
        """Rebuild the model from ``config.json`` and load the trained weights into it."""
        config = self.config
        model = create_model(config.model)
        if get_method(config.model.method).trains:
            tensors, metadata = load_tensors(weights or self.weights_path)
            load_trained_weights(model, tensors, metadata, config, source=Path(weights or self.weights_path))
        return model.to(device).eval()

    def load_proxies(self) -> torch.Tensor:
        tensors, _ = load_tensors(self.weights_path)
        if PROXY_KEY not in tensors:
            raise CheckpointError(f"{self.weights_path}: holds no proxies ({PROXY_KEY})")
        return tensors[PROXY_KEY]


def weights_metadata(config: RunConfig, **extra: Any) -> dict[str, Any]:
    """What a weights file records about the model it belongs to (checked on load)."""
    m = config.model
    return {
        "backbone": m.backbone,
        "method": m.method,
        "targets": list(m.targets),
        "rank": m.rank,
        "method_options": get_method(m.method).resolve_options(m.method_options),
        "img_size": m.img_size,
        "dva_version": config.dva_version,
        **extra,
    }


def check_weights_metadata(metadata: dict[str, Any], config: RunConfig, source: Path) -> None:
    """Refuse a weights or resume file whose metadata names another model than ``config``'s."""
    options = get_method(config.model.method).resolve_options(config.model.method_options)
    for field in ("backbone", "method", "rank", "targets", "method_options"):
        want = options if field == "method_options" else getattr(config.model, field)
        want = list(want) if isinstance(want, tuple) else want
        if field in metadata and metadata[field] != want:
            raise CheckpointError(
                f"{source}: weights were trained with {field}={metadata[field]!r} "
                f"but the run config says {field}={want!r}"
            )


def load_trained_weights(
    model: RetrievalModel, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], config: RunConfig, source: Path
) -> None:
    """Load adapter weights, refusing (with the reason) weights made for another model."""
    check_weights_metadata(metadata, config, source)
    expected = model.trainable_state_dict()
    given = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit {config.model.backbone} with method {config.model.method} "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name, tensor in given.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)} "
                "(weights from another backbone or rank?)"
            )
    result = model.load_state_dict(given, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
