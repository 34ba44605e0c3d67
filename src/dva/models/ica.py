"""In-Context Adaptation (ICA), docs/method.md section 2 and the paper's Eq. (5)-(6).

In every block, a bias-free bottleneck adapter runs in parallel with the frozen fused ``qkv``
projection and adds to the slices it targets::

    out_t = W_t x + b_t + s * up_t(down_t(x))        for t in targets (default q and v)

``up`` starts at zero, so training starts exactly at the frozen model. The adapter is linear,
so :meth:`ICALinear.merge` folds ``s * up_t @ down_t`` into ``W_t`` and inference then costs
exactly what the frozen model costs; :meth:`ICALinear.unmerge` takes it out again.

The layout follows PEFT's LoRA: a config, a layer that wraps (and never modifies, unless
merged) the frozen base layer, and an injection function that finds the target modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dva.errors import ConfigError

QKV_SLICES: tuple[str, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class ICAConfig:
    targets: tuple[str, ...] = ("q", "v")
    rank: int = 16
    scale: float = 1.0

    def __post_init__(self) -> None:
        targets = tuple(self.targets)
        if not targets:
            raise ConfigError("ICA targets: choose a non-empty subset of q, k, v")
        bad = [t for t in targets if t not in QKV_SLICES]
        if bad:
            raise ConfigError(f"ICA targets: unknown {', '.join(bad)}; choose from q, k, v")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"ICA targets: {','.join(targets)} names a slice twice")
        if self.rank < 1:
            raise ConfigError(f"ICA rank must be >= 1, got {self.rank}")
        # Canonical q, k, v order so "v,q" and "q,v" are the same adapter.
        object.__setattr__(self, "targets", tuple(t for t in QKV_SLICES if t in targets))


def parse_targets(text: str) -> tuple[str, ...]:
    """``"q,v"`` -> ``("q", "v")`` (validated by :class:`ICAConfig`)."""
    return tuple(t.strip().lower() for t in text.split(",") if t.strip())


class ICALinear(nn.Module):
    """A frozen fused ``qkv`` Linear with ICA adapters on some of its q/k/v slices."""

    def __init__(self, base_layer: nn.Linear, config: ICAConfig) -> None:
        super().__init__()
        if base_layer.out_features % 3:
            raise ConfigError(f"qkv projection has {base_layer.out_features} outputs, not a multiple of 3")
        self.base_layer = base_layer
        self.config = config
        self.slice_dim = base_layer.out_features // 3
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.down = nn.ModuleDict(
            {t: nn.Linear(base_layer.in_features, config.rank, bias=False, **factory) for t in config.targets}
        )
        self.up = nn.ModuleDict(
            {t: nn.Linear(config.rank, self.slice_dim, bias=False, **factory) for t in config.targets}
        )
        self.merged = False
        self.reset_adapters()

    def reset_adapters(self) -> None:
        """LoRA's initialisation: random ``down``, zero ``up``, so the delta starts at exactly 0."""
        for t in self.config.targets:
            nn.init.kaiming_uniform_(self._adapter(self.down, t).weight, a=math.sqrt(5))
            nn.init.zeros_(self._adapter(self.up, t).weight)

    @staticmethod
    def _adapter(layers: nn.ModuleDict, target: str) -> nn.Linear:
        layer = layers[target]
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"ICA adapter {target} is a {type(layer).__name__}, not an nn.Linear")
        return layer

    def _slice(self, target: str) -> slice:
        i = QKV_SLICES.index(target)
        return slice(i * self.slice_dim, (i + 1) * self.slice_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base_layer(x)
        if self.merged:
            return out
        parts = list(torch.split(out, self.slice_dim, dim=-1))
        for t in self.config.targets:
            i = QKV_SLICES.index(t)
            parts[i] = parts[i] + self.config.scale * self.up[t](self.down[t](x))
        return torch.cat(parts, dim=-1)

    def get_delta_weight(self, target: str) -> torch.Tensor:
        """``s * W_up @ W_down``: what the adapter adds to the ``target`` rows of ``qkv``."""
        up, down = self._adapter(self.up, target).weight, self._adapter(self.down, target).weight
        return self.config.scale * (up.float() @ down.float())

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Fold the adapters into the frozen weight (inference at the frozen model's cost)."""
        if self.merged:
            return
        weight = self.base_layer.weight
        for t in self.config.targets:
            delta = self.get_delta_weight(t)
            if safe_merge and not torch.isfinite(delta).all():
                raise ValueError(f"ICA adapter {t} has non-finite weights; refusing to merge")
            weight[self._slice(t)] += delta.to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding), so the adapters can be trained again."""
        if not self.merged:
            return
        weight = self.base_layer.weight
        for t in self.config.targets:
            weight[self._slice(t)] -= self.get_delta_weight(t).to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"targets={','.join(self.config.targets)}, rank={self.config.rank}, scale={self.config.scale}"


def inject_ica(model: nn.Module, config: ICAConfig) -> list[ICALinear]:
    """Wrap every ``attn.qkv`` Linear of ``model`` in an :class:`ICALinear`; return the wrappers."""
    layers: list[ICALinear] = []
    for module in list(model.modules()):
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and not isinstance(module, ICALinear):
            wrapper = ICALinear(qkv, config)
            module.qkv = wrapper
            layers.append(wrapper)
    if not layers:
        raise ConfigError("no `attn.qkv` Linear found to adapt; ICA needs a timm ViT")
    return layers


def ica_layers(model: nn.Module) -> list[ICALinear]:
    return [m for m in model.modules() if isinstance(m, ICALinear)]


def merge_ica(model: nn.Module) -> None:
    for layer in ica_layers(model):
        layer.merge()


def unmerge_ica(model: nn.Module) -> None:
    for layer in ica_layers(model):
        layer.unmerge()


def unload_ica(model: nn.Module) -> nn.Module:
    """Merge and replace every :class:`ICALinear` by its plain ``nn.Linear``.

    The result is an ordinary timm model (its state dict loads into ``timm.create_model``),
    which is what ``dva export`` writes.
    """
    for module in list(model.modules()):
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, ICALinear):
            qkv.merge()
            module.qkv = qkv.base_layer
    return model
