"""Evaluation protocols (docs/datasets.md; paper Sec. 4.1.1).

- ``closed``: the publisher's official train/test split; both sides share the classes.
- ``open``: classes split in two halves by class index (first half trains, second tests),
  so every test class is unseen in training.
- ``all``: every image is a test image (out-of-distribution evaluation: NABirds, Aircraft, iNat).

A validation side can be carved from the last training classes (open-set style), for
choosing hyper-parameters without ever looking at the test classes.
"""

from __future__ import annotations

from dva.data.records import Catalog, DataSplit, ImageRecord, SplitSide
from dva.errors import DataError

PROTOCOLS = ("open", "closed", "all")


def make_split(catalog: Catalog, protocol: str, *, val_classes: int = 0) -> DataSplit:
    if protocol == "open":
        n_train = catalog.num_classes // 2
        train = _side(catalog, [r for r in catalog.records if r.label < n_train])
        test = _side(catalog, [r for r in catalog.records if r.label >= n_train])
    elif protocol == "closed":
        missing = [r.image_id for r in catalog.records if r.is_train is None]
        if missing:
            raise DataError(f"{catalog.root}: {catalog.name} has no official train/test split; use --split open")
        train = _side(catalog, [r for r in catalog.records if r.is_train])
        test = _side(catalog, [r for r in catalog.records if not r.is_train])
        _check_same_classes(catalog, train, test)
    elif protocol == "all":
        train = SplitSide([], [])
        test = _side(catalog, list(catalog.records))
    else:
        raise DataError(f"unknown split {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol != "all" and not len(train):
        raise DataError(f"{catalog.root}: the {protocol} split of {catalog.name} has no training images")
    if not len(test):
        raise DataError(f"{catalog.root}: the {protocol} split of {catalog.name} has no test images")
    split = DataSplit(catalog.name, protocol, train, test)
    if val_classes:
        split.train, split.val = carve_validation(split.train, val_classes)
    return split


def carve_validation(side: SplitSide, num_classes: int) -> tuple[SplitSide, SplitSide]:
    """Move the last ``num_classes`` classes of ``side`` into a validation side."""
    if not 2 <= num_classes < side.num_classes:
        raise DataError(
            f"val_classes must be between 2 and {side.num_classes - 1} (the training side has "
            f"{side.num_classes} classes), got {num_classes}"
        )
    cut = side.num_classes - num_classes
    train = [r for r in side.records if r.label < cut]
    val = [_relabel(r, r.label - cut) for r in side.records if r.label >= cut]
    return SplitSide(train, side.class_names[:cut]), SplitSide(val, side.class_names[cut:])


def _side(catalog: Catalog, records: list[ImageRecord]) -> SplitSide:
    """Renumber the labels of ``records`` to 0..k-1, keeping the catalog's class order."""
    labels = sorted({r.label for r in records})
    new_label = {old: new for new, old in enumerate(labels)}
    return SplitSide([_relabel(r, new_label[r.label]) for r in records], [catalog.class_names[i] for i in labels])


def _relabel(record: ImageRecord, label: int) -> ImageRecord:
    return ImageRecord(record.path, label, record.image_id, record.is_train, record.box)


def _check_same_classes(catalog: Catalog, train: SplitSide, test: SplitSide) -> None:
    only_train = sorted(set(train.class_names) - set(test.class_names))
    only_test = sorted(set(test.class_names) - set(train.class_names))
    if only_train or only_test:
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train[:5])}")
        if only_test:
            parts.append(f"only in test: {', '.join(only_test[:5])}")
        raise DataError(f"{catalog.root}: the closed split needs every class on both sides ({'; '.join(parts)})")
