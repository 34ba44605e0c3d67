"""Zoom-out views: a photo shrunk and pasted on a blurred canvas, with the exact pasted box.

Why (docs/opa.md, "Zoom-out views for tightly cropped training data"): training sets such as
cub100 are tight crops around the object, so a model trained on them never sees a small object,
and OPA's object views equal the photos, leaving DPT nothing to transfer. Zooming out the
*original* training view, while the object views are still cut from the un-zoomed photo, gives
both: small objects to recognise, and full-resolution detail to transfer to them.

Two canvases, deliberately different:

- training (:func:`zoom_out`, :class:`ZoomOutAugment`): the photo's *own* colours, strongly
  blurred; no other image is read, so a sample stays a function of its own file and seed;
- the zoomed-out *test* set of ``bench/zoom_out.py``: *another* photo's blurred copy. A gain on
  that test set then cannot come from having learned its generator.

Both share the resize and paste steps below (:func:`blurred_canvas`, :func:`shrink`, :func:`paste`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageFilter

from dva.config import check_zoom
from dva.geometry import Box

#: Blur radius of the training canvas, as a fraction of the image's shorter side. Strong enough
#: that the canvas carries colours but no detail the model could mistake for the object. A
#: constant, not a setting: it was not tuned, and a knob nobody measured is one more identity
#: field; changing it changes what every zoom-out run computes, so make it a field then.
BLUR = 0.08


def blurred_canvas(source: Image.Image, size: tuple[int, int], radius: float) -> Image.Image:
    """``source`` resized (bicubic) to fill ``size`` and Gaussian-blurred with ``radius`` pixels."""
    canvas = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return canvas.filter(ImageFilter.GaussianBlur(radius))


def shrink(photo: Image.Image, scale: float) -> Image.Image:
    """``photo`` at ``scale`` of its side (LANCZOS), at least one pixel each way."""
    width, height = photo.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def paste(canvas: Image.Image, small: Image.Image, corner: tuple[int, int]) -> Box:
    """Paste ``small`` into ``canvas`` (in place) at ``corner``; the pasted box in pixel edges."""
    x0, y0 = corner
    canvas.paste(small, (x0, y0))
    return (float(x0), float(y0), float(x0 + small.width), float(y0 + small.height))


def zoom_out(
    image: Image.Image, scale: float, position: tuple[float, float], blur: float = BLUR
) -> tuple[Image.Image, Box]:
    """``image`` shrunk to ``scale`` of its side on a blurred copy of itself, same size as ``image``.

    ``position``: where the shrunk photo goes, as fractions in [0, 1] of the free room in x and
    y ((0, 0) top left, (1, 1) bottom right). ``blur``: the canvas's Gaussian radius as a fraction
    of the shorter side. Returns the composite and the pasted box ``(x0, y0, x1, y1)``.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"zoom-out scale must be in (0, 1], got {scale}")
    if not all(0 <= p <= 1 for p in position):
        raise ValueError(f"zoom-out position must be fractions in [0, 1], got {position}")
    canvas = blurred_canvas(image, image.size, blur * min(image.size))
    small = shrink(image, scale)
    corner = (
        round(position[0] * (canvas.width - small.width)),
        round(position[1] * (canvas.height - small.height)),
    )
    return canvas, paste(canvas, small, corner)


@dataclass(frozen=True)
class ZoomOutAugment:
    """Zoom out a training image with probability ``probability``, drawn from the sample's seed.

    The draw uses its own generator seeded by the per-sample seed (:func:`dva.data.loaders.sample_seed`),
    never torch's: the crop and flip that follow draw exactly what they drew without zoom-out, and
    the draw does not depend on the worker or on where a resumed run starts. Plain data, so it
    pickles into DataLoader workers.
    """

    probability: float
    scale: tuple[float, float]
    blur: float = BLUR

    def __post_init__(self) -> None:
        check_zoom(self.probability, self.scale)

    def draw(self, seed: int) -> tuple[float, tuple[float, float]] | None:
        """``(scale, position)`` of the sample with ``seed``, or None when it is not zoomed out."""
        if self.probability == 0:
            return None
        rng = random.Random(f"zoom-out:{seed}")
        zoomed = rng.random() < self.probability
        scale = rng.uniform(*self.scale)
        position = (rng.random(), rng.random())
        return (scale, position) if zoomed else None

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        """``image`` zoomed out as the draw of ``seed`` says, or ``image`` itself."""
        drawn = self.draw(seed)
        if drawn is None:
            return image
        scale, position = drawn
        return zoom_out(image, scale, position, self.blur)[0]
