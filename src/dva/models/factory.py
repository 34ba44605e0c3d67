"""One entry point that builds a model from its config, like ``timm.create_model``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from dva.config import DEFAULT_METHOD, LEGACY_MODEL_FIELDS, ModelConfig
from dva.models.backbone import create_backbone
from dva.models.methods import apply_method
from dva.models.retrieval import RetrievalModel


def create_model(config: ModelConfig | None = None, **overrides: Any) -> RetrievalModel:
    """Build the frozen backbone and apply the training method (adapters, unfreezing).

    ``create_model(backbone="vit_small_patch16_224", pretrained=False, rank=8)`` works too:
    keyword overrides replace fields of ``config`` (the paper's defaults when omitted), e.g.
    ``create_model(method="adaptformer", method_options={"bottleneck": 32})``. ICA's ``targets``,
    ``rank`` and ``scale`` may be given as keywords, as before they became method options.
    """
    config = _with_overrides(config, overrides)
    backbone = create_backbone(
        config.backbone, pretrained=config.pretrained, img_size=config.img_size, init_seed=config.init_seed
    )
    model = RetrievalModel(backbone)
    apply_method(model, config)
    return model


def _with_overrides(config: ModelConfig | None, overrides: dict[str, Any]) -> ModelConfig:
    raw = {**({f.name: getattr(config, f.name) for f in fields(config)} if config else {}), **overrides}
    legacy = {k: raw.pop(k) for k in LEGACY_MODEL_FIELDS if k in raw}
    if legacy:  # keywords of the old layout: options of the methods that take them, else ignored
        moved = ModelConfig.upgrade({"method": raw.get("method", DEFAULT_METHOD), **legacy})
        raw["method_options"] = {**raw.get("method_options", {}), **moved.get("method_options", {})}
    return ModelConfig(**raw)


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def count_parameters(model: nn.Module) -> ParameterReport:
    """PEFT's ``print_trainable_parameters`` as data (proxies are not part of the model)."""
    params = list(model.parameters())
    return ParameterReport(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def parameter_report(config: ModelConfig | None = None, **overrides: Any) -> ParameterReport:
    """The counts of the model :func:`create_model` builds, without building its weights.

    The model is made on PyTorch's meta device (shapes only: no memory, no download, about
    0.4 s for ViT-B/16), which is all counting needs.
    """
    with torch.device("meta"):
        model = create_model(config, **{**overrides, "pretrained": False})
    return count_parameters(model)
