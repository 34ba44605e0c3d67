"""Grad-CAM heat maps of what a retrieval embedding attends to (the paper's Fig. 5).

A retrieval model has no class score, so the Grad-CAM target is a similarity: the
projection of the image's *un-normalised* embedding on a reference direction, either the
image's own embedding ("what makes this embedding") or a query's ("why this gallery image
matched that query"). The un-normalised embedding matters: the cosine of a unit vector to
itself is at its maximum, so its gradient is exactly zero.

The activations are the patch tokens entering the last block's attention (``norm1``),
reshaped to their grid by :func:`vit_reshape_transform`, which drops the prefix tokens (CLS
and register tokens) and derives the grid from the token count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.transforms import v2

from dva.data.transforms import default_resize
from dva.errors import ConfigError
from dva.evaluate.embed import embedding_transform
from dva.index.model import IndexModel
from dva.models import RetrievalModel, create_model


def vit_reshape_transform(num_prefix_tokens: int = 1, grid_size: tuple[int, int] | None = None) -> Callable:
    """``(B, prefix + H*W, C)`` tokens -> ``(B, C, H, W)`` maps, the layout Grad-CAM expects.

    The grid is ``grid_size`` when given, else the square root of the patch-token count,
    so any input resolution works; a count that is not a square is an error naming it.
    """

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, num_prefix_tokens:, :]
        count = patches.shape[1]
        if grid_size is not None:
            height, width = grid_size
        else:
            height = width = math.isqrt(count)
        if height * width != count:
            raise ValueError(
                f"{tokens.shape[1]} tokens minus {num_prefix_tokens} prefix tokens = {count} patch tokens, "
                f"which is not a {height}x{width} grid"
            )
        return patches.reshape(patches.shape[0], height, width, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


class SimilarityTarget:
    """Grad-CAM target: the embedding's projection on a fixed unit ``reference`` direction."""

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = F.normalize(reference.detach().float(), dim=-1)

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding.float() * self.reference.to(embedding.device)).sum()


class _UnnormalizedEmbedding(nn.Module):
    """The model's embedding before L2 normalisation (see the module docstring for why)."""

    def __init__(self, model: RetrievalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.backbone(images)).float()


def embedding_cam(model: RetrievalModel, images: torch.Tensor, references: torch.Tensor | None = None) -> np.ndarray:
    """``(B, H, W)`` heat maps in [0, 1] of ``images`` (already transformed), at input resolution.

    ``references`` are ``(B, D)`` embeddings to explain the similarity to (default: each
    image's own embedding).
    """
    from pytorch_grad_cam import GradCAM

    backbone = model.backbone
    grid = tuple(backbone.patch_embed.grid_size) if images.shape[-2:] == tuple(backbone.patch_embed.img_size) else None
    reshape = vit_reshape_transform(backbone.num_prefix_tokens, grid)
    wrapped = _UnnormalizedEmbedding(model).eval()
    if references is None:
        with torch.no_grad():
            references = wrapped(images)
    targets = [SimilarityTarget(r) for r in references]
    # With every weight frozen nothing needs a gradient; asking for the input's makes the
    # activations carry one (GradCAM does not forward BaseCAM's compute_input_gradient).
    images = images.detach().clone().requires_grad_(True)
    with (
        torch.enable_grad(),
        GradCAM(model=wrapped, target_layers=[backbone.blocks[-1].norm1], reshape_transform=reshape) as cam,
    ):
        return cam(input_tensor=images, targets=targets)


def frozen_and_adapted(model: IndexModel, img_size: int | None = None) -> tuple[RetrievalModel, RetrievalModel]:
    """The frozen backbone and the adapted model of a run or index, for a side-by-side comparison."""
    config = model.config.model
    if config.method == "frozen":
        raise ConfigError(f"{model.source} uses the frozen backbone: there is no adapted model to compare with")
    if img_size is not None and img_size != config.img_size:
        model = IndexModel(replace(model.config, model=replace(config, img_size=img_size)), model.weights, model.source)
    frozen = create_model(replace(model.config.model, method="frozen", method_options={})).eval()
    return frozen, model.load_model()


def gradcam_comparison(
    models: dict[str, RetrievalModel],
    images: Sequence[Image.Image],
    *,
    img_size: int,
    resize_size: int | None = None,
    reference: Image.Image | None = None,
    cell: int = 224,
) -> Image.Image:
    """A figure with one row per image: [reference,] the model's view, then one heat map per model.

    With ``reference``, each model's map explains the similarity of the image to the
    reference under that model; without, to the image's own embedding.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    view = v2.Compose([v2.Resize((resize_size or default_resize(img_size),) * 2), v2.CenterCrop(img_size)])
    columns = (["reference"] if reference is not None else []) + ["image", *models]
    rows: list[list[Image.Image]] = [[] for _ in images]
    for i, image in enumerate(images):
        if reference is not None:
            rows[i].append(view(reference))
        rows[i].append(view(image))
    for model in models.values():
        transform = embedding_transform(model, img_size, resize_size)
        batch = torch.stack([transform(image) for image in images])
        refs = None
        if reference is not None:
            with torch.no_grad():
                ref = _UnnormalizedEmbedding(model)(transform(reference)[None])
            refs = ref.expand(len(images), -1)
        for i, heat in enumerate(embedding_cam(model, batch, refs)):
            rgb = np.asarray(view(images[i]), dtype=np.float32) / 255
            rows[i].append(Image.fromarray(show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.5)))
    return _figure(columns, rows, cell)


def _figure(columns: Sequence[str], rows: Sequence[Sequence[Image.Image]], cell: int) -> Image.Image:
    gap, font_size = 6, max(12, cell // 14)
    font = ImageFont.load_default(size=font_size)
    header = font_size + 10
    canvas = Image.new("RGB", (gap + len(columns) * (cell + gap), header + len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(columns):
        draw.text((gap + j * (cell + gap), 4), title, fill="black", font=font)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas.paste(
                image.resize((cell, cell), Image.Resampling.BICUBIC),
                (gap + j * (cell + gap), header + i * (cell + gap)),
            )
    return canvas
