"""What a dataset is, independent of how its publisher lays it out.

A reader turns a publisher's files into a :class:`Catalog` (every image with its class,
its official train/test flag and its ground-truth box when the dataset ships one); a split
turns the catalog into the train and test sides of an evaluation protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: ``(x0, y0, x1, y1)`` in pixels of the original image.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    #: Class index into the owning catalog's or split side's ``class_names``.
    label: int
    image_id: str
    #: The publisher's train/test flag (None when the dataset defines no official split).
    is_train: bool | None = None
    #: Ground-truth object box, when the dataset ships one.
    box: Box | None = None


@dataclass
class Catalog:
    """Every image of a dataset as its publisher describes it."""

    name: str
    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    #: Everything wrong that the reader found (missing files, bad lines, ...), each naming the
    #: file and line. ``load_catalog`` raises on them; ``dva data check`` lists them all.
    problems: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class SplitSide:
    """One side (train, test or validation) of a split, labels renumbered from 0."""

    records: list[ImageRecord]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> dict[str, int]:
        return {"images": len(self.records), "classes": self.num_classes}


@dataclass
class DataSplit:
    dataset: str
    protocol: str
    train: SplitSide
    test: SplitSide
    #: Classes carved out of the training side for hyper-parameter choice (may be empty).
    val: SplitSide | None = None
