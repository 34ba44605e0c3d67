"""Boxes that are looked up rather than detected: a dataset's ground truth, or a user's box file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from dva.data.records import ImageRecord
from dva.errors import ConfigError
from dva.geometry import clip_box, read_image_header
from dva.opa.detectors.base import Detection, Detector, register_detector


def _require_record(detector: Detector, record: ImageRecord | None) -> ImageRecord:
    if record is None:
        raise ValueError(f"the {detector.name!r} detector looks boxes up by image record; pass record=")
    return record


@register_detector(
    "dataset", description="ground-truth boxes the dataset ships (CUB's bounding_boxes.txt, ...), score 1"
)
class DatasetBoxes(Detector):
    """The record's ground-truth box, turned into the frame of the loaded image.

    Publishers annotate the pixels as stored; ``image`` is upright (EXIF orientation applied
    by ``load_image``), so the box is turned by the file's orientation before it is clipped
    (docs/datasets.md, "Box coordinates"). Clipping the stored-frame box against the upright
    image would put it, silently, in the wrong place on every rotated photo.
    """

    uses_prompt = False

    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        record = _require_record(self, record)
        if record.box is None:
            return None
        box = read_image_header(record.path).upright_box(record.box)
        return Detection(clip_box(box, image.width, image.height), 1.0)


@register_detector("boxes", description="a box file you supply (CSV or JSON lines: path, x0, y0, x1, y1, score)")
class BoxFileDetector(Detector):
    """Reads ``box_file`` once; relative image paths in it are relative to ``data_root``."""

    uses_prompt = False

    def __init__(self, *, box_file: str | None = None, data_root: str | None = None) -> None:
        from dva.opa.box_files import read_box_file

        if not box_file:
            raise ConfigError("the 'boxes' detector needs a box file (--box-file FILE)")
        self.path = Path(box_file).expanduser().resolve()
        self.boxes = read_box_file(self.path, root=data_root)

    def settings(self) -> dict[str, Any]:
        return {"box_file": str(self.path)}

    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        entry = self.boxes.get(_require_record(self, record).path)
        return None if entry is None else entry.checked(image.width, image.height).detection
