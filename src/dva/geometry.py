"""Box geometry and image orientation: the one place boxes are clipped, fitted, enlarged and turned.

Boxes are ``(x0, y0, x1, y1)`` in pixel *edges*: pixel ``i`` spans ``[i, i + 1)``, so the
whole ``W x H`` image is ``(0, 0, W, H)``. A box always belongs to one of two frames
(docs/datasets.md, "Box coordinates"):

- the **stored** frame: pixels as the file stores them, what publishers annotate (CUB,
  NABirds, Stanford Cars, ...) and what ``sizes.txt``-style files describe;
- the **upright** frame: the image after its EXIF orientation is applied, which is what
  :func:`dva.data.images.load_image` returns and so what detectors see, box caches record
  and the views crop.

:func:`upright_box` is the one rule that takes a box from the first to the second, the same
transposition :func:`PIL.ImageOps.exif_transpose` applies to the pixels; :func:`read_image_header`
is the one way an image's size and orientation are read without decoding it.

One tolerance, :data:`EDGE_SLACK`, decides what overshoot is rounding rather than a wrong box.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

from PIL import Image

from dva.errors import DataError

#: ``(x0, y0, x1, y1)`` in pixel edges (see the module docstring for the frame).
Box = tuple[float, float, float, float]
#: ``(width, height)`` in pixels.
Size = tuple[int, int]

#: Overshoot (pixels) past the image edge that is rounding, not a wrong box: publishers' 0- and
#: 1-based conventions differ by one pixel, and detectors and tools round.
EDGE_SLACK = 1.0
#: Coordinates this close to a whole pixel are that pixel (1.1 * 50 is 55.00000000000001).
_EPS = 1e-6

#: The EXIF tag that says how the stored pixels must be turned to show the image upright.
ORIENTATION_TAG = 0x0112
#: EXIF orientations that swap width and height (the transposing ones).
TRANSPOSED = frozenset({5, 6, 7, 8})


def box_area(box: Box) -> float:
    x0, y0, x1, y1 = box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def overshoot(box: Box, width: int, height: int) -> float:
    """How many pixels ``box`` reaches past the edges of a ``width`` x ``height`` image (0 if inside)."""
    x0, y0, x1, y1 = box
    return max(0.0, -x0, -y0, x1 - width, y1 - height)


def clip_box(box: Box, width: int, height: int) -> Box:
    """``box`` clipped to a ``width`` x ``height`` image; ValueError if nothing of it is inside."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {_fmt(box)} has no area inside the {width}x{height} image")
    return (x0, y0, x1, y1)


def fit_box(box: Box, size: Size | None, where: str) -> tuple[Box | None, str | None]:
    """A publisher's ``box`` made to fit its image ``size`` (None: size unknown, box kept as is).

    Returns the box to keep (clipped, or None when nothing sensible is left) and a warning
    naming ``where`` for anything beyond :data:`EDGE_SLACK`. An annotation slip is a warning,
    not a refusal: retrieval never needs the box, and OPA falls back to the whole image.
    """
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        return None, f"{where}: empty box {_fmt(box)} (x1 <= x0 or y1 <= y0); ignored"
    if size is None:
        return box, None
    width, height = size
    try:
        clipped = clip_box(box, width, height)
    except ValueError:
        return None, f"{where}: box {_fmt(box)} lies outside its {width}x{height} image; ignored"
    if overshoot(box, width, height) > EDGE_SLACK:
        return clipped, f"{where}: box {_fmt(box)} exceeds its {width}x{height} image; clipped to {_fmt(clipped)}"
    return clipped, None


def enlarge_box(box: Box, factor: float, width: int, height: int) -> Box:
    """Scale ``box`` by ``factor`` about its centre, then clip it to the image."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return clip_box((cx - half_w, cy - half_h, cx + half_w, cy + half_h), width, height)


def area_fraction(box: Box, width: int, height: int) -> float:
    """The share of a ``width`` x ``height`` image that ``box`` (clipped to it) covers."""
    return box_area(clip_box(box, width, height)) / (width * height)


def pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The smallest whole-pixel box that contains ``box`` (what ``Image.crop`` takes)."""
    x0, y0, x1, y1 = box
    return math.floor(x0 + _EPS), math.floor(y0 + _EPS), math.ceil(x1 - _EPS), math.ceil(y1 - _EPS)


def upright_size(stored: Size, orientation: int) -> Size:
    """The ``(width, height)`` an image of ``stored`` size shows once its EXIF orientation is applied."""
    width, height = stored
    return (height, width) if orientation in TRANSPOSED else (width, height)


def upright_box(box: Box, stored: Size, orientation: int) -> Box:
    """``box`` in the stored frame of a ``stored``-size image, in the upright frame.

    The same turn :func:`PIL.ImageOps.exif_transpose` gives the pixels (EXIF 2.32, tag 0x0112:
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate
    90 counter-clockwise); 1 and unknown values leave the box as it is, as PIL leaves the image.
    """
    x0, y0, x1, y1 = box
    w, h = stored
    turned = {
        2: (w - x1, y0, w - x0, y1),
        3: (w - x1, h - y1, w - x0, h - y0),
        4: (x0, h - y1, x1, h - y0),
        5: (y0, x0, y1, x1),
        6: (h - y1, x0, h - y0, x1),
        7: (h - y1, w - x1, h - y0, w - x0),
        8: (y0, w - x1, y1, w - x0),
    }
    return turned.get(orientation, (x0, y0, x1, y1))


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says about its geometry (nothing decoded)."""

    #: ``(width, height)`` of the pixels as stored.
    stored_size: Size
    #: EXIF orientation, 1 (upright as stored) when absent.
    orientation: int = 1

    @property
    def size(self) -> Size:
        """``(width, height)`` upright: the size :func:`dva.data.images.load_image` returns."""
        return upright_size(self.stored_size, self.orientation)

    def upright_box(self, box: Box) -> Box:
        """A stored-frame ``box`` (a publisher's) in the frame of the loaded image."""
        return upright_box(box, self.stored_size, self.orientation)


def read_image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Size and EXIF orientation of the image at ``path`` from its header; DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size only: nothing is decoded
            with Image.open(path) as image:
                size = image.size
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return ImageHeader(size, orientation if isinstance(orientation, int) else 1)


def _fmt(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
