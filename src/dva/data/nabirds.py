"""NABirds (Van Horn et al. 2015): 48,562 photos of North American birds, 555 visual classes.

Layout of ``nabirds.tar.gz`` (white-space separated text files, one record a line)::

    ROOT/images/0817/0000139e21dc4d0cbfe14cae3c85c829.jpg
    ROOT/images.txt              <image id> <path relative to images/>
    ROOT/image_class_labels.txt  <image id> <class id>
    ROOT/classes.txt             <class id> <class name, may hold spaces>   (all 1,011 hierarchy nodes)
    ROOT/hierarchy.txt           <child class id> <parent class id>
    ROOT/train_test_split.txt    <image id> <1 if training else 0>
    ROOT/bounding_boxes.txt      <image id> <x> <y> <width> <height>       (pixels)
    ROOT/sizes.txt               <image id> <width> <height>

Image ids are UUIDs (``0000139e-21dc-4d0c-bfe1-4cae3c85c829``); class ids are integers, 0
being the root "Birds". The classes are the leaf labels that images use (555 in the full
set), ordered by class id; a label that has children in ``hierarchy.txt`` is a warning.
Boxes are ``x y w h`` (as CUB's, by the same lab) and are fitted to ``sizes.txt``.

The paper evaluates on the whole set (``all``: 48,562 images, docs/datasets.md); the
official split (``closed``) is 23,929 / 24,633. Both verified against the real files.

Boxes are in the stored frame, as ``sizes.txt``; 201 of the real boxes reach past their
image and are clipped, counted in ``Catalog.clipped_boxes`` (docs/datasets.md, "Box coordinates").
"""

from __future__ import annotations

from pathlib import Path

from dva.data.cub import add_cub_style_records
from dva.data.publisher_boxes import read_xywh_boxes
from dva.data.records import Catalog, duplicate_ids
from dva.data.registry import register_dataset
from dva.data.tables import find_root, read_mapping, read_table, require_files

REQUIRED = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")


@register_dataset(
    "nabirds",
    description="NABirds: 48,562 photos of 555 North American bird classes (out-of-distribution test)",
    meta_category="bird",
    expected_counts={"all": (0, 48562), "closed": (23929, 24633)},
    homepage="https://dl.allaboutbirds.org/nabirds",
)
def read_nabirds(root: Path) -> Catalog:
    root = find_root(root, "images.txt", ("nabirds",))
    require_files(root, REQUIRED, "NABirds")
    problems: list[str] = []
    images = read_mapping(root / "images.txt", problems=problems)
    labels = read_mapping(root / "image_class_labels.txt", problems=problems)
    flags = read_mapping(root / "train_test_split.txt", problems=problems)
    classes = read_mapping(root / "classes.txt", problems=problems)
    sizes = _read_sizes(root / "sizes.txt", problems)
    boxes = read_xywh_boxes(root / "bounding_boxes.txt", problems)

    used_ids = sorted({cid for _, cid in labels.values() if cid in classes}, key=_class_key)
    label_of = {cid: i for i, cid in enumerate(used_ids)}
    catalog = Catalog("nabirds", root, [classes[cid][1] for cid in used_ids], [], problems)
    add_cub_style_records(catalog, images, labels, flags, boxes, label_of, sizes=sizes)
    catalog.warnings += _non_leaf_labels(root / "hierarchy.txt", used_ids, classes)
    problems += duplicate_ids(catalog)
    return catalog


def _class_key(class_id: str) -> tuple[int, str]:
    return (int(class_id), class_id) if class_id.isdigit() else (1 << 62, class_id)


def _read_sizes(path: Path, problems: list[str]) -> dict[str, tuple[int, int]]:
    if not path.is_file():
        return {}
    sizes = {}
    for image_id, (line, (w, h)) in read_table(path, 3, problems=problems).items():
        if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            problems.append(f"{path}:{line}: width and height must be positive integers, got {w!r} {h!r}")
            continue
        sizes[image_id] = (int(w), int(h))
    return sizes


def _non_leaf_labels(path: Path, used_ids: list[str], classes: dict[str, tuple[int, str]]) -> list[str]:
    """Warnings for image labels that have sub-classes (NABirds labels images with leaves only)."""
    if not path.is_file():
        return []
    warnings: list[str] = []  # a malformed hierarchy line only weakens this check
    parents = {parent for _, parent in read_mapping(path, problems=warnings).values()}
    return warnings + [
        f"{path}: class {cid} {classes[cid][1]!r} labels images but has sub-classes"
        for cid in used_ids
        if cid in parents
    ]
