"""AdaptFormer's parallel MLP adapter (Chen et al., NeurIPS 2022), a baseline of the paper's Table 10.

In every block a small bottleneck MLP runs beside the frozen MLP and adds to its output::

    mlp'(h) = mlp(h) + s * up(dropout(relu(down(h))))        h = norm2(x), the MLP's input

with bottleneck 64, s = 0.1 and dropout 0.1 on the bottleneck, as in AdaptFormer's released
configuration (``ffn_num=64``, ``ffn_adapter_scalar="0.1"``, ``dropout=0.1``). ``down`` and ``up``
carry biases; the "lora" initialisation of the released code (Kaiming-uniform ``down``, zero
``up`` and zero biases) makes the adapter add exactly 0 at the start, so training starts at
the frozen model.

Where the input comes from: the AdaptFormer paper (Eq. 2) feeds the adapter ``LN(x')``, the
same normalised input as the MLP, which is what wrapping ``block.mlp`` gives here and works for
any timm block. The released code feeds it the un-normalised residual stream ``x'`` instead
(``adapt_x = self.adaptmlp(x)`` before ``norm2``). Its output joins the MLP's before the block's
LayerScale (``ls2``, present in DINOv2, identity in the original ViT-B/16).

The ReLU makes the adapter non-linear: unlike ICA it cannot be merged into the frozen weights,
so inference pays for it (two small matrix products per block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dva.errors import ConfigError


@dataclass(frozen=True)
class AdaptFormerConfig:
    """``ModelConfig.method_options`` of ``--method adaptformer``."""

    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError(f"adaptformer bottleneck must be >= 1, got {self.bottleneck}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"adaptformer dropout must be in [0, 1), got {self.dropout}")


class AdaptMLP(nn.Module):
    """A frozen block MLP with AdaptFormer's bottleneck adapter beside it."""

    def __init__(self, base_layer: nn.Module, dim: int, config: AdaptFormerConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        weight = next(base_layer.parameters())
        self.down = nn.Linear(dim, config.bottleneck, device=weight.device, dtype=weight.dtype)
        self.up = nn.Linear(config.bottleneck, dim, device=weight.device, dtype=weight.dtype)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(config.dropout)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """The released code's "lora" initialisation: the adapter starts by adding exactly 0."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        frozen: torch.Tensor = self.base_layer(h)
        adapted: torch.Tensor = self.up(self.dropout(self.act(self.down(h))))
        return frozen + self.config.scale * adapted

    def extra_repr(self) -> str:
        c = self.config
        return f"bottleneck={c.bottleneck}, scale={c.scale}, dropout={c.dropout}"


def inject_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> list[AdaptMLP]:
    """Wrap the ``mlp`` of every transformer block of ``model`` in an :class:`AdaptMLP`."""
    layers: list[AdaptMLP] = []
    for block in list(model.modules()):
        mlp, norm = getattr(block, "mlp", None), getattr(block, "norm2", None)
        if isinstance(mlp, nn.Module) and not isinstance(mlp, AdaptMLP) and norm is not None:
            dim = getattr(norm, "normalized_shape", (None,))[0]
            if dim is None:
                raise ConfigError(f"{type(block).__name__}.norm2 has no normalized_shape; AdaptFormer needs a timm ViT")
            block.mlp = AdaptMLP(mlp, dim, config)
            layers.append(block.mlp)
    if not layers:
        raise ConfigError("no transformer block with `norm2` and `mlp` found; AdaptFormer needs a timm ViT")
    return layers
