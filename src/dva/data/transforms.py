"""The paper's image pipeline (Sec. 4.1.3): resize to 256x256, crop 224x224.

Training takes a random crop and a horizontal flip; evaluation a center crop. Other
resolutions keep the 256/224 ratio unless ``resize_size`` is given. Normalisation uses the
backbone's own pre-training statistics (0.5/0.5 for ViT-B/16 ``orig_in21k``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from dva.data.images import shrink_large

Transform = Callable[[Image.Image], torch.Tensor]


def default_resize(img_size: int) -> int:
    return round(img_size * 256 / 224)


def train_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], resize_size: int | None = None
) -> Transform:
    """Resize, random crop, horizontal flip, normalise."""
    return _pipeline([v2.RandomCrop(img_size), v2.RandomHorizontalFlip()], img_size, mean, std, resize_size)


def eval_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float], resize_size: int | None = None
) -> Transform:
    """Resize, center crop, normalise: what every embedding at test and search time sees."""
    return _pipeline([v2.CenterCrop(img_size)], img_size, mean, std, resize_size)


def _pipeline(
    crop: list[torch.nn.Module], img_size: int, mean: Sequence[float], std: Sequence[float], resize_size: int | None
) -> Transform:
    resize = resize_size or default_resize(img_size)
    return v2.Compose(
        [
            # Shrink huge images in PIL first: an antialiased tensor resize of a 1 x 40M image
            # took 33 s and 10 GB. Images up to WORK_SIDE pass unchanged.
            v2.Lambda(_shrink),
            v2.PILToTensor(),
            v2.Resize((resize, resize), antialias=True),
            *crop,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _shrink(image: Image.Image) -> Image.Image:
    return shrink_large(image) if isinstance(image, Image.Image) else image
