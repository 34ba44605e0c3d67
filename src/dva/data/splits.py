"""Evaluation protocols (docs/datasets.md; paper Sec. 4.1.1).

- ``closed``: the publisher's official train/test split; both sides share the classes.
- ``open``: classes split in two halves by class index (first half trains, second tests),
  so every test class is unseen in training.
- ``all``: every image is a test image (out-of-distribution evaluation: NABirds, Aircraft, iNat).

A validation side can be carved from the training classes (open-set style), for choosing
hyper-parameters without ever looking at the test classes. By default it is the last N training
classes; ``val_fold=k`` takes the k-th block of N counted from the end instead, so that folds
0..(n/N - 1) hold every training class out once (class-level cross-validation: every training
image becomes a validation query once, still without a test image; docs/opa.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dva.data.records import Catalog, DataSplit, ImageRecord, SplitSide
from dva.errors import DataError

if TYPE_CHECKING:
    from dva.config import DataConfig

PROTOCOLS = ("open", "closed", "all")


def make_split(catalog: Catalog, protocol: str, *, val_classes: int = 0, val_fold: int = 0) -> DataSplit:
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
        split.train, split.val = carve_validation(split.train, val_classes, fold=val_fold)
    elif val_fold:
        raise DataError(f"val_fold={val_fold} needs val_classes (the size of each fold)")
    return split


#: The ``DataConfig`` fields :func:`split_from_config` reads (besides the catalog's dataset and root).
SPLIT_FIELDS = ("split", "val_classes", "val_fold")


def split_key(data: DataConfig) -> tuple[object, ...]:
    """What decides the split ``data`` names: a cache key for anything computed from that split
    (``dva reproduce`` caches data fingerprints by it), which changes when a split field does."""
    return (data.dataset, data.root, *(getattr(data, name) for name in SPLIT_FIELDS))


def split_from_config(catalog: Catalog, data: DataConfig) -> DataSplit:
    """The split a run's ``data`` config names: its protocol, validation classes and fold.

    Training and everything that must see the same images as training (``dva reproduce``'s
    data fingerprints) go through here, so a new ``DataConfig`` field that changes the split
    is read in one place (and named in :data:`SPLIT_FIELDS`, which cache keys read).
    """
    return make_split(catalog, data.split, val_classes=data.val_classes, val_fold=data.val_fold)


def carve_validation(side: SplitSide, num_classes: int, *, fold: int = 0) -> tuple[SplitSide, SplitSide]:
    """Move a block of ``num_classes`` classes of ``side`` into a validation side.

    Fold 0 is the last block, fold 1 the block before it, and so on; the classes left for
    training are renumbered 0..k-1 in their original order, the validation classes 0..N-1.
    """
    if not 2 <= num_classes < side.num_classes:
        raise DataError(
            f"val_classes must be between 2 and {side.num_classes - 1} (the training side has "
            f"{side.num_classes} classes), got {num_classes}"
        )
    folds = side.num_classes // num_classes
    if not 0 <= fold < folds:
        raise DataError(
            f"val_fold must be between 0 and {folds - 1} ({side.num_classes} training classes in blocks "
            f"of val_classes={num_classes}), got {fold}"
        )
    end = side.num_classes - fold * num_classes
    start = end - num_classes
    held_out = range(start, end)
    train = [
        _relabel(r, r.label if r.label < start else r.label - num_classes)
        for r in side.records
        if r.label not in held_out
    ]
    val = [_relabel(r, r.label - start) for r in side.records if r.label in held_out]
    names = side.class_names
    return SplitSide(train, names[:start] + names[end:]), SplitSide(val, names[start:end])


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
