"""What a dataset is, independent of how its publisher lays it out.

A reader turns a publisher's files into a :class:`Catalog` (every image with its class,
its official train/test flag and its ground-truth box when the dataset ships one); a split
turns the catalog into the train and test sides of an evaluation protocol.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dva.geometry import Box, Size, fit_box

__all__ = [
    "Box",
    "Catalog",
    "DataSplit",
    "ImageRecord",
    "SplitSide",
    "data_fingerprint",
    "duplicate_ids",
    "empty_classes",
]


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    #: Class index into the owning catalog's or split side's ``class_names``.
    label: int
    image_id: str
    #: The publisher's train/test flag (None when the dataset defines no official split).
    is_train: bool | None = None
    #: Ground-truth object box, when the dataset ships one, in the image's *stored* frame
    #: (:mod:`dva.data.publisher_boxes`; turned upright where the image is loaded).
    #: Clipped to the image where the publisher ships image sizes (NABirds, Stanford Dogs);
    #: elsewhere as annotated, which ``dva data check`` verifies against the image headers.
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
    #: Usable but suspicious annotations (boxes clipped or dropped, ...): listed by
    #: ``dva data check``, never fatal.
    warnings: list[str] = field(default_factory=list)
    #: Ground-truth boxes the reader clipped to their image (those past
    #: :data:`dva.geometry.EDGE_SLACK` are also in ``warnings``): a count a reader can check
    #: against the publisher's files (NABirds: 201).
    clipped_boxes: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fitted_box(self, box: Box, size: Size | None, where: str) -> Box | None:
        """``box`` fitted to its image (:func:`dva.geometry.fit_box`), its warning and clipping recorded here."""
        kept, warning = fit_box(box, size, where)
        if warning:
            self.warnings.append(warning)
        if kept is not None and kept != tuple(float(v) for v in box):
            self.clipped_boxes += 1
        return kept


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


def duplicate_ids(catalog: Catalog) -> list[str]:
    """Problems for image ids listed more than once (a merged or re-extracted copy)."""
    counts: dict[str, int] = {}
    for record in catalog.records:
        counts[record.image_id] = counts.get(record.image_id, 0) + 1
    return [f"{catalog.root}: image {i} is listed {n} times" for i, n in counts.items() if n > 1]


def empty_classes(catalog: Catalog) -> list[str]:
    """Problems for classes without any readable image (a partial download)."""
    used = {r.label for r in catalog.records}
    return [
        f"{catalog.root}: class {name!r} (index {i}) has no images"
        for i, name in enumerate(catalog.class_names)
        if i not in used
    ]


def data_fingerprint(split: DataSplit) -> str:
    """A short hash of the images a split holds: each side's image ids, class names and file sizes.

    Runs are named by their settings, not by where the data lives (a moved dataset keeps its
    runs), so two different collections under one dataset format (a re-encoded copy, a
    zoomed-out one, new photos under old names) would share run names. Training records this
    hash and reuse compares it (``Trainer.fit(resume=True)``, ``dva.reproduce.run_rows``): the
    same images elsewhere match, other images refuse to reuse the run. File sizes are read
    from the file system (a stat per image, no decoding), so the check costs little even on
    NABirds' 48,562 images; a missing file counts as size -1.
    """
    digest = hashlib.sha256()
    sides = [("train", split.train), ("test", split.test)] + ([("val", split.val)] if split.val is not None else [])
    for name, side in sides:
        for record in sorted(side.records, key=lambda r: r.image_id):
            try:
                size = os.stat(record.path).st_size
            except OSError:
                size = -1
            digest.update(f"{name}\t{record.image_id}\t{side.class_names[record.label]}\t{size}\n".encode())
    return digest.hexdigest()[:16]
