"""The two object views of OPA, as pure functions of an image and a trusted box (docs/opa.md; paper 3.2.1).

- :func:`discriminative_view` keeps the object and drops the background: the box, enlarged
  (by 10% in the paper) so the whole object is in it, cropped, then padded on its short side
  so that resizing the crop to the square network input distorts the object by at most the
  ``aspect`` ratio (DVF's post-processing).
- :func:`background_view` keeps the background and destroys the object: the box region is
  mean-filtered (box blur) until the object is a smear of colour. All such views form one
  extra "background" class.

*Whether* an image gets these views (the score threshold, the area rule, the fallbacks) and
the settings' defaults are :class:`dva.opa.policy.ViewPolicy`'s, not these functions'.
Boxes are ``(x0, y0, x1, y1)`` in pixels of ``image`` as loaded (upright, :mod:`dva.geometry`);
they are clipped to the image first.
"""

from __future__ import annotations

import math

from PIL import Image, ImageFilter

from dva.geometry import Box, clip_box, enlarge_box, pixel_box

#: The colour of the padding added to the discriminative view (black, torchvision's ``Pad`` default).
PAD_FILL = 0


def discriminative_view(image: Image.Image, box: Box, *, enlarge: float, aspect: tuple[int, int]) -> Image.Image:
    """The object without its background: ``box`` enlarged by ``enlarge``, padded towards ``aspect``.

    ``aspect`` is the most elongated shape let through unpadded, as ``short:long`` in either
    orientation: with ``(3, 4)`` a 100x300 crop is padded (black, centred) to 225x300, while
    a 240x300 crop is kept as it is.
    """
    if enlarge < 1:
        raise ValueError(f"enlarge must be at least 1 (the box must keep the whole object), got {enlarge}")
    short, long = sorted(aspect)
    if short <= 0:
        raise ValueError(f"aspect must be two positive numbers, got {aspect}")
    crop = image.crop(pixel_box(enlarge_box(box, enlarge, image.width, image.height)))
    w, h = crop.size
    min_short = math.ceil(max(w, h) * short / long)
    if min(w, h) >= min_short:
        return crop
    size = (min_short, h) if w < h else (w, min_short)
    canvas = Image.new(crop.mode, size, PAD_FILL)
    canvas.paste(crop, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def default_blur_kernel(box: Box) -> int:
    """Half the box's shorter side (at least 3 pixels): wide enough that no part of the object
    keeps its shape, and scaled with the box, so small and large objects are equally erased."""
    x0, y0, x1, y1 = box
    return max(3, round(min(x1 - x0, y1 - y0) / 2))


def background_view(image: Image.Image, box: Box, *, kernel: int | None = None) -> Image.Image:
    """The image with the object inside ``box`` mean-filtered away.

    ``kernel`` is the side of the square mean filter in pixels (default
    :func:`default_blur_kernel`). Only pixels inside the box change: the filter reads the box
    region alone, so no background colour bleeds in and nothing outside is touched.
    """
    box = clip_box(box, image.width, image.height)
    kernel = default_blur_kernel(box) if kernel is None else kernel
    if kernel < 1:
        raise ValueError(f"kernel must be a positive number of pixels, got {kernel}")
    region = pixel_box(box)
    blurred = image.crop(region).filter(ImageFilter.BoxBlur((kernel - 1) / 2))
    out = image.copy()
    out.paste(blurred, region[:2])
    return out
