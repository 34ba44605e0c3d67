"""The model an index is built with, recorded inside the index so search can rebuild it.

An index directory holds the run's ``config.json`` (and its trained ``model.safetensors``),
so it loads with :class:`dva.Run` like the run itself and stays usable after the run
directory is moved or deleted. Adapters are merged into the frozen weights before
embedding (``RetrievalModel.merge_adapters``): same embeddings, the frozen model's cost.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dva._version import __version__
from dva.config import ModelConfig, RunConfig, TrainingRecord, identity_dict
from dva.errors import CheckpointError, ConfigError
from dva.models import RetrievalModel, get_method
from dva.runs import Run, load_model


@dataclass(frozen=True)
class IndexModel:
    """A model config plus, for trained methods, the weights file that completes it."""

    config: RunConfig
    weights: Path | None
    #: Where it came from, for humans: ``run runs/cub`` or ``frozen dinov2_vits14.imgfocus``.
    source: str
    #: What training recorded (class names, version), copied into the index with the config.
    record: TrainingRecord = field(default_factory=TrainingRecord)

    @classmethod
    def from_run(cls, run_dir: str | Path, weights: str | Path | None = None) -> IndexModel:
        run = Run(run_dir)
        config = run.config
        weights_path = Path(weights) if weights else run.weights_path
        if not get_method(config.model.method).trains:
            return cls(config, None, f"run {run.path}", run.record)
        if not weights_path.is_file():
            raise ConfigError(
                f"{weights_path}: no trained weights (has `dva train --out {run.path}` finished an epoch?)"
            )
        return cls(config, weights_path, f"run {run.path} ({weights_path.name})", run.record)

    @classmethod
    def frozen(cls, backbone: str, *, pretrained: bool = True, img_size: int = 224, init_seed: int = 0) -> IndexModel:
        model = ModelConfig(
            backbone=backbone, pretrained=pretrained, img_size=img_size, init_seed=init_seed, method="frozen"
        )
        return cls(RunConfig(model=model), None, f"frozen {backbone}", TrainingRecord(dva_version=__version__))

    @classmethod
    def from_index(cls, index_dir: str | Path) -> IndexModel:
        """The model saved into an index directory, which holds it as a run directory does."""
        as_run = Run(index_dir)
        config = RunConfig.load(as_run.config_path)
        weights = as_run.weights_path
        if not get_method(config.model.method).trains:
            return cls(config, None, f"index {as_run.path}", as_run.record)
        if not weights.is_file():
            raise CheckpointError(
                f"{weights}: missing; the index's {config.model.method} model needs its trained weights"
            )
        return cls(config, weights, f"index {as_run.path}", as_run.record)

    @property
    def img_size(self) -> int:
        return self.config.model.img_size

    @property
    def resize_size(self) -> int | None:
        return self.config.data.resize_size

    def fingerprint(self) -> str:
        """Same fingerprint, same embeddings: adding to an index with another model is refused.

        A hash of the model's identity fields in their stable layout (:func:`dva.config.identity_dict`,
        so existing indexes keep their fingerprint) and of the trained weights.
        """
        digest = hashlib.sha256(json.dumps(identity_dict(self.config.model), sort_keys=True).encode())
        if self.weights is not None:
            with open(self.weights, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def save(self, index_dir: Path) -> None:
        """Copy the config (and weights) into ``index_dir``, which then loads like a run."""
        as_run = Run(index_dir)
        self.config.save(as_run.config_path, self.record)
        if self.weights is not None:
            shutil.copyfile(self.weights, as_run.weights_path)

    def load_model(self, device: str | torch.device = "cpu") -> RetrievalModel:
        """Rebuild the model with its trained weights (as a run does), adapters merged, in eval mode."""
        model = load_model(self.config, self.weights, device=device)
        model.merge_adapters()
        return model

    def describe(self) -> dict[str, object]:
        m = self.config.model
        return {
            "backbone": m.backbone,
            "method": m.method,
            "img_size": m.img_size,
            "resize_size": self.resize_size,
            "source": self.source,
        }
