"""CUB-200-2011 (official layout) and the 100-species ``cub100`` subset in ``shared/data``.

Both share one layout (images.txt, image_class_labels.txt, train_test_split.txt,
classes.txt, optional bounding_boxes.txt; image paths relative to ``images/``); the official
files are 1-based and space separated, cub100's are 0-based and comma separated.
"""

from __future__ import annotations

import re
from pathlib import Path

from dva.data.records import Box, Catalog, ImageRecord
from dva.data.registry import register_dataset
from dva.data.tables import parse_float, parse_int, read_mapping, read_rows


@register_dataset(
    "cub",
    description="CUB-200-2011: 11,788 photos of 200 bird species (official layout)",
    meta_category="bird",
    expected_counts={"closed": (5994, 5794), "open": (5864, 5924)},
    homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
)
def read_cub(root: Path) -> Catalog:
    if (root / "CUB_200_2011" / "images.txt").is_file():  # the archive's top folder
        root = root / "CUB_200_2011"
    return read_cub_layout("cub", root, sep=None)


@register_dataset(
    "cub100",
    description="100-species subset of CUB-200-2011 shipped in shared/data/cub100",
    meta_category="bird",
    expected_counts={"closed": (2999, 2903), "open": (2949, 2953)},
)
def read_cub100(root: Path) -> Catalog:
    # cub100's train_test_split.txt marks 2,903 images "1" and 2,999 images "0", while both of
    # its READMEs give 2,999 training and 2,903 test images: its flag means "is test". We follow
    # the documented counts (also the project spec's: closed = 2,999 / 2,903).
    return read_cub_layout("cub100", root, sep=",", train_flag="0")


def read_cub_layout(name: str, root: Path, sep: str | None, train_flag: str = "1") -> Catalog:
    images = read_mapping(root / "images.txt", sep)
    labels = read_mapping(root / "image_class_labels.txt", sep)
    flags = read_mapping(root / "train_test_split.txt", sep)
    classes = read_mapping(root / "classes.txt", sep)
    boxes = _read_boxes(root / "bounding_boxes.txt", sep)
    problems: list[str] = []

    class_ids = sorted(classes, key=lambda k: parse_int(k, root / "classes.txt", classes[k][0], "class id"))
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [_clean_class_name(classes[cid][1]) for cid in class_ids]

    records: list[ImageRecord] = []
    for image_id, (line, rel_path) in images.items():
        where = f"{root / 'images.txt'}:{line}"
        if image_id not in labels:
            problems.append(f"{where}: image {image_id} has no class in image_class_labels.txt")
            continue
        class_line, class_id = labels[image_id]
        if class_id not in label_of:
            problems.append(f"{root / 'image_class_labels.txt'}:{class_line}: class {class_id} is not in classes.txt")
            continue
        flag = flags.get(image_id)
        if flag is None or flag[1] not in ("0", "1"):
            problems.append(f"{root / 'train_test_split.txt'}: image {image_id} needs a 0/1 flag, got {flag and flag[1]!r}")
            continue
        path = root / "images" / rel_path
        if not path.is_file():
            problems.append(f"{where}: {path} does not exist")
            continue
        records.append(ImageRecord(path, label_of[class_id], image_id, is_train=flag[1] == train_flag, box=boxes.get(image_id)))

    for image_id, (line, _) in labels.items():
        if image_id not in images:
            problems.append(f"{root / 'image_class_labels.txt'}:{line}: image {image_id} is not in images.txt")
    used = {r.label for r in records}
    for cid in class_ids:
        if label_of[cid] not in used:
            problems.append(f"{root / 'classes.txt'}:{classes[cid][0]}: class {classes[cid][1]!r} has no images")
    return Catalog(name, root, class_names, records, problems)


def _read_boxes(path: Path, sep: str | None) -> dict[str, Box]:
    """``bounding_boxes.txt``: ``<image id> <x> <y> <width> <height>`` -> ``(x0, y0, x1, y1)``."""
    if not path.is_file():
        return {}
    boxes: dict[str, Box] = {}
    for line, fields in read_rows(path, 5, sep):
        x, y, w, h = (parse_float(v, path, line, "box coordinate") for v in fields[1:])
        boxes[fields[0]] = (x, y, x + w, y + h)
    return boxes


def _clean_class_name(raw: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black_footed_Albatross"``."""
    return re.sub(r"^\d+\.", "", raw)
