"""Stanford Cars (Krause et al. 2013): 16,185 images of 196 car models.

Two publisher layouts are read, whichever the root holds (the first wins):

1. ``cars_annos.mat`` + ``car_ims/`` (the all-in-one release used by metric-learning code).
   ``annotations`` is a 1 x 16,185 struct array with fields ``relative_im_path``
   (``"car_ims/000001.jpg"``, relative to the root), ``bbox_x1``, ``bbox_y1``, ``bbox_x2``,
   ``bbox_y2``, ``class`` (1-based) and ``test`` (1 = test image); ``class_names`` is a
   1 x 196 cell array (or, when absent, ``devkit/cars_meta.mat``'s).
2. The devkit release: ``cars_train/``, ``cars_test/``, ``devkit/cars_meta.mat``
   (``class_names``), ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat``
   (in ``devkit/`` or the root; the devkit's own ``cars_test_annos.mat`` has no ``class``).
   ``annotations`` fields: ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class``
   (1-based), ``fname`` (``"00001.jpg"`` in its side's folder). The Kaggle copy's doubled
   ``cars_train/cars_train/`` folders are accepted.

The devkit README describes the box fields as "min/max x-value of the bounding box, in
pixels"; being MATLAB annotations they are read as 1-based inclusive corners
(:func:`dva.data.publisher_boxes.one_based_box`). Image sizes are not shipped: ``dva data check``
checks the boxes against the image headers.

Closed split: the official 8,144 / 8,041; open: classes 1-98 (8,054) / 99-196 (8,131)
(docs/datasets.md; verified against the real devkit files).
Boxes are in the stored frame of the image (docs/datasets.md, "Box coordinates").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dva.data.matfile import read_mat, string_list, struct_rows
from dva.data.publisher_boxes import one_based_box
from dva.data.records import Catalog, ImageRecord, duplicate_ids, empty_classes
from dva.data.registry import register_dataset
from dva.data.tables import find_root
from dva.errors import DataError

BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
#: Folders a root may hold the dataset in (the suite's conventional name, a common one).
TOP_FOLDERS = ("stanford_cars", "cars196")


@register_dataset(
    "cars",
    description="Stanford Cars: 16,185 photos of 196 car models (cars_annos.mat or devkit layout)",
    meta_category="car",
    expected_counts={"closed": (8144, 8041), "open": (8054, 8131), "all": (0, 16185)},
    homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
)
def read_cars(root: Path) -> Catalog:
    root = find_root(root, "cars_annos.mat", TOP_FOLDERS)
    if (root / "cars_annos.mat").is_file():
        return _read_annos_layout(root)
    root = find_root(root, "devkit/cars_train_annos.mat", TOP_FOLDERS)
    if (root / "devkit" / "cars_train_annos.mat").is_file():
        return _read_devkit_layout(root)
    raise DataError(
        f"{root}: not a Stanford Cars copy: expected cars_annos.mat with car_ims/, or cars_train/, cars_test/ "
        "and devkit/cars_train_annos.mat"
    )


def _read_annos_layout(root: Path) -> Catalog:
    path = root / "cars_annos.mat"
    data = read_mat(path, ["annotations"])
    rows = struct_rows(data, "annotations", ("relative_im_path", *BOX_FIELDS, "class", "test"), path)
    if "class_names" in data:
        class_names = string_list(data, "class_names", path)
    else:
        meta = root / "devkit" / "cars_meta.mat"
        class_names = string_list(read_mat(meta, ["class_names"]), "class_names", meta)
    catalog = Catalog("cars", root, class_names, [])
    for index, row in enumerate(rows, start=1):
        where = f"{path}: annotations({index})"
        rel = str(row["relative_im_path"])
        test = _flag(row["test"], where, catalog)
        if test is not None:
            _add_record(catalog, root / rel, rel, row, not test, where)
    return _finish(catalog)


def _read_devkit_layout(root: Path) -> Catalog:
    meta = root / "devkit" / "cars_meta.mat"
    catalog = Catalog("cars", root, string_list(read_mat(meta, ["class_names"]), "class_names", meta), [])
    for side, path, is_train in (
        ("cars_train", root / "devkit" / "cars_train_annos.mat", True),
        ("cars_test", _find_test_annos(root), False),
    ):
        folder = root / side / side if (root / side / side).is_dir() else root / side  # Kaggle's doubled folder
        rows = struct_rows(read_mat(path, ["annotations"]), "annotations", (*BOX_FIELDS, "class", "fname"), path)
        for index, row in enumerate(rows, start=1):
            fname = str(row["fname"])
            _add_record(catalog, folder / fname, f"{side}/{fname}", row, is_train, f"{path}: annotations({index})")
    return _finish(catalog)


def _find_test_annos(root: Path) -> Path:
    for candidate in (root / "devkit" / "cars_test_annos_withlabels.mat", root / "cars_test_annos_withlabels.mat"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root}: missing cars_test_annos_withlabels.mat (in devkit/ or the root): the devkit's "
        "cars_test_annos.mat has no class labels, the labelled test file is a separate download"
    )


def _add_record(catalog: Catalog, path: Path, image_id: str, row: dict[str, Any], is_train: bool, where: str) -> None:
    try:
        class_id = int(row["class"])
        box = one_based_box(*(float(row[f]) for f in BOX_FIELDS))
    except (TypeError, ValueError):
        catalog.problems.append(f"{where}: class and box fields must be numbers, got {row!r}")
        return
    if not 1 <= class_id <= catalog.num_classes:
        catalog.problems.append(
            f"{where}: class {class_id} is outside 1..{catalog.num_classes} (the class_names count)"
        )
        return
    if not path.is_file():
        catalog.problems.append(f"{where}: {path} does not exist")
        return
    kept = catalog.fitted_box(box, None, f"{where} ({image_id})")
    catalog.records.append(ImageRecord(path, class_id - 1, image_id, is_train=is_train, box=kept))


def _flag(value: Any, where: str, catalog: Catalog) -> bool | None:
    """The ``test`` field as a bool; anything but 0/1 is a problem (None)."""
    try:
        flag = int(value)
    except (TypeError, ValueError):
        flag = -1
    if flag not in (0, 1):
        catalog.problems.append(f"{where}: test must be 0 or 1, got {value!r}")
        return None
    return bool(flag)


def _finish(catalog: Catalog) -> Catalog:
    catalog.problems += duplicate_ids(catalog) + empty_classes(catalog)
    return catalog
