"""The retrieval model: an (adapted) frozen backbone that maps images to unit vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dva.models.backbone import backbone_normalization, int_attribute
from dva.models.ica import ica_layers, merge_ica, unmerge_ica


class RetrievalModel(nn.Module):
    """``images -> L2-normalised embedding`` (the CLS token after the final norm, docs/method.md section 1).

    ``head`` is an optional module on the embedding (CLIP-Adapter lives there); adapters
    inside the backbone (ICA, AdaptFormer) are injected by the training method.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    @property
    def embed_dim(self) -> int:
        return int_attribute(self.backbone, "num_features")

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` the backbone expects its input normalised with."""
        return backbone_normalization(self.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(self.backbone(images))
        return F.normalize(features.float(), dim=-1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changed: the adapters (or the unfrozen weights)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def merge_adapters(self) -> None:
        """Fold ICA adapters into the frozen weights: same outputs, the frozen model's cost.

        Only linear adapters merge: AdaptFormer's and CLIP-Adapter's ReLUs keep them separate
        modules, which inference pays for (fully or partly fine-tuned weights cost nothing extra).
        """
        merge_ica(self)

    def unmerge_adapters(self) -> None:
        unmerge_ica(self)

    @property
    def is_merged(self) -> bool:
        layers = ica_layers(self)
        return bool(layers) and all(layer.merged for layer in layers)
