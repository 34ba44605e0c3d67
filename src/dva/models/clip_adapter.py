"""CLIP-Adapter (Gao et al., IJCV 2024) on the retrieval embedding, a baseline of the paper's Table 10.

A two-layer bottleneck MLP reads the frozen backbone's final embedding and is blended back
into it with a residual ratio::

    x' = ratio * A(x) + (1 - ratio) * x,     A(x) = relu(up(relu(down(x))))

as in CLIP-Adapter's released code: reduction 4, bias-free layers, a ReLU after each, ratio
0.2. One departure: ``up`` starts at zero (CLIP-Adapter draws it at random), so ``A(x) = 0``
and ``x' = 0.8 x``, which the L2-normalisation that follows maps to the frozen embedding:
every method here starts at the frozen model. For ViT-B/16 (768-d) it has
2 * 768 * 192 = 294,912 parameters, the paper's "0.295M".

It lives in :attr:`RetrievalModel.head`, after the backbone, so the backbone is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dva.errors import ConfigError


@dataclass(frozen=True)
class CLIPAdapterConfig:
    """``ModelConfig.method_options`` of ``--method clip-adapter``."""

    reduction: int = 4
    ratio: float = 0.2

    def __post_init__(self) -> None:
        if self.reduction < 1:
            raise ConfigError(f"clip-adapter reduction must be >= 1, got {self.reduction}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"clip-adapter ratio must be in (0, 1), got {self.ratio}")


class CLIPAdapter(nn.Module):
    """``x -> ratio * A(x) + (1 - ratio) * x`` on ``dim``-dimensional embeddings."""

    def __init__(self, dim: int, config: CLIPAdapterConfig) -> None:
        super().__init__()
        if dim % config.reduction:
            raise ConfigError(f"clip-adapter reduction {config.reduction} does not divide the embedding size {dim}")
        self.config = config
        self.down = nn.Linear(dim, dim // config.reduction, bias=False)
        self.up = nn.Linear(dim // config.reduction, dim, bias=False)
        self.act = nn.ReLU()
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapted: torch.Tensor = self.act(self.up(self.act(self.down(x))))
        return self.config.ratio * adapted + (1.0 - self.config.ratio) * x

    def extra_repr(self) -> str:
        return f"reduction={self.config.reduction}, ratio={self.config.ratio}"
