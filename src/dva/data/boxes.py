"""Ground-truth boxes: the publishers' conventions, and boxes that do not fit their image.

Every box in a catalog is ``(x0, y0, x1, y1)`` in pixel *edges* of the image as stored on
disk: pixel ``i`` spans ``[i, i + 1)``, so a box covering the whole ``W x H`` image is
``(0, 0, W, H)``. Publishers use two conventions:

- ``x y width height`` with a 0-based corner (CUB-200-2011, NABirds): ``(x, y, x + w, y + h)``;
- 1-based inclusive corners ``xmin ymin xmax ymax`` (FGVC-Aircraft's README: "the top-left
  pixel of an image has coordinate (1,1)"; Stanford Dogs' Pascal-VOC XML; Stanford Cars'
  MATLAB devkit): ``(xmin - 1, ymin - 1, xmax, ymax)``.

A box that leaves its image is a publisher's annotation slip, not a reason to refuse the
dataset (retrieval never uses boxes; OPA falls back to the whole image without one). So
:func:`fit_box` clips it and returns a *warning* naming the file and record: readers collect
those in :attr:`Catalog.warnings`, which ``dva data check`` lists and ``load_catalog`` lets
through. Up to :data:`EDGE_SLACK` pixels of overshoot are clipped silently: the conventions
above differ by one pixel and publishers do not always follow their own.
"""

from __future__ import annotations

from pathlib import Path

from dva.data.records import Box
from dva.data.tables import parse_float, read_table
from dva.errors import DataError

#: Overshoot (pixels) clipped without a warning: one-pixel convention mismatches.
EDGE_SLACK = 1.0


def xywh_box(x: float, y: float, w: float, h: float) -> Box:
    return (x, y, x + w, y + h)


def one_based_box(xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
    return (xmin - 1, ymin - 1, xmax, ymax)


def fit_box(box: Box, size: tuple[int, int] | None, where: str) -> tuple[Box | None, str | None]:
    """Check ``box`` against its image ``size`` (``(width, height)``, None if unknown).

    Returns the box to keep (clipped to the image, or None when nothing sensible is left) and
    a warning for anything beyond :data:`EDGE_SLACK`.
    """
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        return None, f"{where}: empty box {_fmt(box)} (x1 <= x0 or y1 <= y0); ignored"
    if size is None:
        return box, None
    width, height = size
    clipped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        return None, f"{where}: box {_fmt(box)} lies outside its {width}x{height} image; ignored"
    overshoot = max(-x0, -y0, x1 - width, y1 - height)
    if overshoot > EDGE_SLACK:
        return clipped, f"{where}: box {_fmt(box)} exceeds its {width}x{height} image; clipped to {_fmt(clipped)}"
    return clipped, None


def _fmt(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def read_xywh_boxes(path: Path, problems: list[str], sep: str | None = None) -> dict[str, tuple[int, Box]]:
    """A CUB-style ``bounding_boxes.txt`` (``<image id> <x> <y> <width> <height>``, also NABirds')
    as ``image id -> (line, (x0, y0, x1, y1))``; malformed lines go to ``problems``."""
    if not path.is_file():
        return {}
    boxes: dict[str, tuple[int, Box]] = {}
    for image_id, (line, values) in read_table(path, 5, sep, problems).items():
        try:
            boxes[image_id] = (line, xywh_box(*(parse_float(v, path, line, "box coordinate") for v in values)))
        except DataError as e:
            problems.append(str(e))
    return boxes
