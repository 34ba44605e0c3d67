"""Backbone weights an adapter method may train besides its adapters (``also_train``).

Full fine-tuning trains every weight; ICA trains low-rank updates of q and v only. Between the
two lie a few small groups of weights that adapters leave frozen and that re-scale or shift
features channel by channel, which is what a new domain's statistics ask for first:

``bias``
    every bias of the backbone (BitFit, Ben Zaken et al., ACL 2022; VPTSP-G trains it too).
``norm``
    the scale and shift of every LayerNorm (``norm1``, ``norm2`` of each block, the final norm).
``layerscale``
    the per-channel gains of LayerScale (``ls1``, ``ls2``: DINOv2 has them, the original
    ViT-B/16 does not, so asking for them there is an error).

They are a few ten thousand weights (DINOv2 ViT-S/14: 51,456 biases, 19,200 LayerNorm
weights, 9,216 LayerScale gains; groups overlap in the LayerNorm biases). They stay ordinary
backbone weights, so a run still merges into a plain timm model. Why they are an option, and
what they measured (MAP@R up a little, R@1 not, below fine-tuning; off by default): docs/opa.md,
"The small weights only fine-tuning trains, and DPT over MLP adapters".
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from dva.errors import ConfigError

#: The weight groups ``also_train`` accepts, in canonical order.
TUNABLE_GROUPS = ("bias", "norm", "layerscale")


def also_train_option(value: str | Iterable[str]) -> str:
    """The canonical spelling of an ``also_train`` option: ``"norm+layerscale"``, ``""`` for none."""
    return "+".join(parse_also_train(value))


def parse_also_train(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"norm+layerscale"``, ``"layerscale,norm"`` or a sequence -> ``("norm", "layerscale")``, validated.

    Canonical order and no repeats, so two spellings of one choice are one run. ``""``: none.
    """
    if isinstance(value, str):
        names = [n.strip().lower() for n in value.replace(",", "+").split("+") if n.strip()]
    else:
        names = [str(n).strip().lower() for n in value]
    bad = [n for n in names if n not in TUNABLE_GROUPS]
    if bad:
        raise ConfigError(f"also_train: unknown {', '.join(bad)}; choose from {', '.join(TUNABLE_GROUPS)}")
    return tuple(g for g in TUNABLE_GROUPS if g in names)


def train_also(backbone: nn.Module, groups: str | Iterable[str]) -> int:
    """Make the weights of ``groups`` (see :data:`TUNABLE_GROUPS`) trainable; returns how many (each once).

    Raises :class:`ConfigError` for a group the backbone does not have, so a typo'd or
    impossible choice cannot train silently like the adapters alone.
    """
    found: dict[int, nn.Parameter] = {}
    for group in parse_also_train(groups):
        params = _group_parameters(backbone, group)
        if not params:
            raise ConfigError(f"also_train {group!r}: the backbone has no {_WHAT[group]} to train")
        found.update((id(p), p) for p in params)
    for p in found.values():
        p.requires_grad_(True)
    return sum(p.numel() for p in found.values())


_WHAT = {"bias": "bias", "norm": "LayerNorm", "layerscale": "LayerScale (ls1, ls2 gamma)"}


def bias_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every bias of ``module`` (BitFit's weights): the parameters whose name ends in ``bias``."""
    return [p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]


def _group_parameters(backbone: nn.Module, group: str) -> list[nn.Parameter]:
    if group == "bias":
        return bias_parameters(backbone)
    if group == "norm":
        return [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    # timm's LayerScale keeps its gains in ``gamma``; identity stand-ins (no LayerScale) have none
    return [p for name, p in backbone.named_parameters() if name.endswith(("ls1.gamma", "ls2.gamma"))]
