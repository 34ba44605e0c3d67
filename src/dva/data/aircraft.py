"""FGVC-Aircraft 2013b (Maji et al. 2013): 10,000 photos of 100 aircraft variants.

Layout of ``fgvc-aircraft-2013b.tar.gz`` (from its README)::

    ROOT/data/images/1025794.jpg                 (seven-digit image names)
    ROOT/data/variants.txt                       one variant name a line: the class order
    ROOT/data/images_variant_{train,val,test}.txt   <image name> <variant name, may hold spaces>
    ROOT/data/images_box.txt                     <image name> <xmin> <ymin> <xmax> <ymax>

The variant level (100 classes) is the paper's. Boxes are 1-based inclusive ("the top-left
pixel of an image has coordinate (1,1)"). Every image carries a 20-pixel copyright banner at
its bottom that the README asks users to crop; the paper does not say it did, and
torchvision's reader keeps it, so the banner is kept here too (boxes refer to the full image).

The paper evaluates on the whole set (``all``: 10,000, docs/datasets.md); ``closed`` is
the official trainval / test split (6,667 / 3,333); ``open`` halves the variants (5,000 / 5,000).
"""

from __future__ import annotations

from pathlib import Path

from dva.data.publisher_boxes import one_based_box
from dva.data.records import Box, Catalog, ImageRecord, duplicate_ids, empty_classes
from dva.data.registry import register_dataset
from dva.data.tables import find_root, parse_float, read_rows, read_table, require_files
from dva.errors import DataError

#: The variant list files (``images_variant_<name>.txt``) and whether their images train.
VARIANT_LISTS = (("train", True), ("val", True), ("test", False))


@register_dataset(
    "aircraft",
    description="FGVC-Aircraft 2013b: 10,000 photos of 100 aircraft variants (out-of-distribution test)",
    meta_category="airplane",
    expected_counts={"all": (0, 10000), "closed": (6667, 3333), "open": (5000, 5000)},
    homepage="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
)
def read_aircraft(root: Path) -> Catalog:
    root = find_root(root, "data/variants.txt", ("fgvc-aircraft-2013b",))
    data = root / "data" if (root / "data" / "variants.txt").is_file() else root  # or ROOT/data itself
    lists = [f"images_variant_{side}.txt" for side, _ in VARIANT_LISTS]
    require_files(data, ["variants.txt", *lists], "FGVC-Aircraft")
    problems: list[str] = []
    variants = [
        line.strip() for line in (data / "variants.txt").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    label_of = {name: i for i, name in enumerate(variants)}
    if len(label_of) != len(variants):
        problems.append(f"{data / 'variants.txt'}: a variant is listed twice")
    boxes = _read_boxes(data / "images_box.txt", problems)
    catalog = Catalog("aircraft", root, variants, [], problems)
    for side, is_train in VARIANT_LISTS:
        path = data / f"images_variant_{side}.txt"
        for line, (name, variant) in read_rows(path, 2, problems=problems):
            where = f"{path}:{line}"
            if variant not in label_of:
                problems.append(f"{where}: variant {variant!r} is not in variants.txt")
                continue
            image = data / "images" / f"{name}.jpg"
            if not image.is_file():
                problems.append(f"{where}: {image} does not exist")
                continue
            box = None
            if name in boxes:
                box = catalog.fitted_box(boxes[name][1], None, f"{data / 'images_box.txt'}:{boxes[name][0]}")
            catalog.records.append(ImageRecord(image, label_of[variant], name, is_train=is_train, box=box))
    problems += duplicate_ids(catalog) + empty_classes(catalog)
    return catalog


def _read_boxes(path: Path, problems: list[str]) -> dict[str, tuple[int, Box]]:
    """``image name -> (line, box)``; the file is optional (annotations-only archives have it)."""
    if not path.is_file():
        return {}
    boxes = {}
    for name, (line, values) in read_table(path, 5, problems=problems).items():
        try:
            boxes[name] = (line, one_based_box(*(parse_float(v, path, line, "box coordinate") for v in values)))
        except DataError as e:
            problems.append(str(e))
    return boxes
