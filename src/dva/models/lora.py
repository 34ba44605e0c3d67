"""LoRA (Hu et al., ICLR 2022) on the q and v slices of the fused qkv, a PEFT peer of ICA.

"We limit our study to only adapting the attention weights" and "adapting both W_q and W_v
gives the best performance overall" (Hu et al., Sec. 4.1 and Table 5). LoRA adds
``(alpha / r) * B A x`` to ``W x`` with ``A`` random and ``B`` zero, so training starts at the
frozen model ("We use a random Gaussian initialization for A and zero for B ... We then scale
ΔWx by α/r", Sec. 4.1).

ICA is exactly this layer: :class:`dva.models.ica.ICALinear` has bias-free ``down`` (= ``A``)
and ``up`` (= ``B``) projections on the q and v slices, ``up`` zero-initialised and ``down``
Kaiming-uniform with ``a = sqrt(5)`` (PEFT's default LoRA initialisation, not the paper's
Gaussian), and a constant ``scale`` (1 in ICA). So ``--method lora`` is ICA's layer with
``scale = alpha / rank``: ICA is LoRA on q and v with alpha = r. Both merge into the frozen
weights (``mergeable``), so inference costs what the frozen model costs.

Defaults: ``rank = 16`` (ICA's, so the two rows have the same 589,824 parameters on ViT-B/16:
``12 * 2 * (768 * 16 + 16 * 768)``) and ``alpha = 8`` (PEFT's ``LoraConfig.lora_alpha``
default), hence ``scale = 0.5``; PEFT's default dropout is 0, as here. PEFT on a timm ViT
(``target_modules=["qkv"]``) would adapt the whole fused q, k, v with one ``A``; this adapts the
q and v slices separately, as the paper's ``W_q``, ``W_v``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dva.errors import ConfigError
from dva.models.ica import ICAConfig


@dataclass(frozen=True)
class LoRAConfig:
    """``ModelConfig.method_options`` of ``--method lora``."""

    rank: int = 16
    alpha: float = 8.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora rank must be >= 1, got {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def ica_config(self) -> ICAConfig:
        """The same layer as ICA, on q and v, with LoRA's ``alpha / r`` scale."""
        return ICAConfig(targets=("q", "v"), rank=self.rank, scale=self.scale)
