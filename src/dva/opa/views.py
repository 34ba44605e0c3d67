"""The two object views of OPA, as pure functions of an image and its box (METHOD.md 3; paper 3.2.1).

- :func:`discriminative_view` keeps the object and drops the background: the box, enlarged by
  10% so the whole object is in it, cropped, then padded on its short side so that resizing
  the crop to the square network input distorts the object by at most the ``aspect`` ratio
  (DVF's post-processing). A box the detector is unsure of (score below ``min_score``) is not
  trusted: the original image is the view.
- :func:`background_view` keeps the background and destroys the object: the box region is
  mean-filtered (box blur) until the object is a smear of colour. All such views form one
  extra "background" class. An object that fills most of the image would leave almost nothing
  but blur, so no background view is made when the box covers ``max_area`` or more of it.

Boxes are ``(x0, y0, x1, y1)`` in pixels of ``image``; they are clipped to the image first.
"""

from __future__ import annotations

import math

from PIL import Image, ImageFilter

from dva.data.records import Box

#: The colour of the padding added to the discriminative view (black, torchvision's ``Pad`` default).
PAD_FILL = 0


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` clipped to a ``width`` x ``height`` image; ValueError if nothing of it is inside."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} has no area inside the {width}x{height} image")
    return (x0, y0, x1, y1)


def enlarge_box(box: Box, factor: float, width: int, height: int) -> Box:
    """Scale ``box`` by ``factor`` about its centre, then clip it to the image."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return clip_box((cx - half_w, cy - half_h, cx + half_w, cy + half_h), width, height)


#: Coordinates this close to a whole pixel are that pixel (1.1 * 50 is 55.00000000000001).
_EPS = 1e-6


def pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The smallest whole-pixel box that contains ``box`` (what ``Image.crop`` takes)."""
    x0, y0, x1, y1 = box
    return math.floor(x0 + _EPS), math.floor(y0 + _EPS), math.ceil(x1 - _EPS), math.ceil(y1 - _EPS)


def area_fraction(box: Box, width: int, height: int) -> float:
    x0, y0, x1, y1 = clip_box(box, width, height)
    return (x1 - x0) * (y1 - y0) / (width * height)


def discriminative_view(
    image: Image.Image,
    box: Box | None,
    score: float,
    *,
    min_score: float = 0.5,
    enlarge: float = 1.1,
    aspect: tuple[int, int] = (3, 4),
) -> Image.Image:
    """The object without its background: the enlarged box, padded towards ``aspect``.

    ``aspect`` is the most elongated shape let through unpadded, as ``short:long`` in either
    orientation: with ``(3, 4)`` a 100x300 crop is padded (black, centred) to 225x300, while
    a 240x300 crop is kept as it is. Returns ``image`` itself when ``box is None`` or
    ``score < min_score``.
    """
    if box is None or score < min_score:
        return image
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


def background_view(
    image: Image.Image,
    box: Box | None,
    *,
    max_area: float = 0.5,
    kernel: int | None = None,
) -> Image.Image | None:
    """The image with the object mean-filtered away; ``None`` when the box covers ``max_area`` or more.

    ``kernel`` is the side of the square mean filter in pixels (default
    :func:`default_blur_kernel`). Only pixels inside the box change: the filter reads the box
    region alone, so no background colour bleeds in and nothing outside is touched.
    """
    if box is None:
        return None
    box = clip_box(box, image.width, image.height)
    if area_fraction(box, image.width, image.height) >= max_area:
        return None
    kernel = default_blur_kernel(box) if kernel is None else kernel
    if kernel < 1:
        raise ValueError(f"kernel must be a positive number of pixels, got {kernel}")
    region = pixel_box(box)
    blurred = image.crop(region).filter(ImageFilter.BoxBlur((kernel - 1) / 2))
    out = image.copy()
    out.paste(blurred, region[:2])
    return out
