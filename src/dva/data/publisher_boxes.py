"""Ground-truth boxes as publishers write them, turned into dva's ``(x0, y0, x1, y1)``.

Every box in a catalog is in pixel *edges* of the image **as stored on disk** (the stored
frame of :mod:`dva.geometry`; EXIF orientation is applied later, where the image is loaded:
:meth:`dva.geometry.ImageHeader.upright_box`). Publishers use two conventions:

- ``x y width height`` with a 0-based corner (CUB-200-2011, NABirds): ``(x, y, x + w, y + h)``;
- 1-based inclusive corners ``xmin ymin xmax ymax`` (FGVC-Aircraft's README: "the top-left
  pixel of an image has coordinate (1,1)"; Stanford Dogs' Pascal-VOC XML; Stanford Cars'
  MATLAB devkit): ``(xmin - 1, ymin - 1, xmax, ymax)``.

A box that leaves its image is a publisher's annotation slip, not a reason to refuse the
dataset: :func:`dva.geometry.fit_box` clips it and returns a *warning* naming the file and
record; readers collect those in :attr:`Catalog.warnings` and count them in
:attr:`Catalog.clipped_boxes` (docs/datasets.md, "Box coordinates").
"""

from __future__ import annotations

from pathlib import Path

from dva.data.tables import parse_float, read_table
from dva.errors import DataError
from dva.geometry import Box


def xywh_box(x: float, y: float, w: float, h: float) -> Box:
    return (x, y, x + w, y + h)


def one_based_box(xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
    return (xmin - 1, ymin - 1, xmax, ymax)


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
