"""iNaturalist 2021, first 100 categories (the paper's out-of-distribution "iNat2021" set).

The paper uses "the 27,105 images from the first 100 subcategories in its training set"
(docs/datasets.md): the images of ``train.json`` whose ``category_id`` is among the 100
smallest category ids (0-99 in the release), classes ordered by id. ``inat100_mini`` reads
``train_mini.json`` the same way (50 images a category, 5,000 images), for users who
downloaded the 42 GB mini set instead of the 224 GB full one; its numbers are not the paper's.

Layout (``train.tar.gz`` and ``train.json.tar.gz`` extracted side by side)::

    ROOT/train.json          (or train_mini.json)
    ROOT/train/00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris/<uuid>.jpg

The JSON follows COCO with the README's extra fields: ``images`` (``id``, ``file_name``
relative to ROOT, ``width``, ``height``, ...), ``annotations`` (``id``, ``image_id``,
``category_id``), ``categories`` (``id``, ``name`` = scientific name, ``common_name``,
``image_dir_name``, taxonomy). It is streamed (:mod:`dva.data.jsonstream`), never loaded
whole. Only the 100 categories' image folders are needed on disk. There are no boxes.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

from dva.data.jsonstream import iter_array_items
from dva.data.records import Catalog, ImageRecord, duplicate_ids, empty_classes
from dva.data.registry import register_dataset
from dva.data.tables import find_root, require_file
from dva.errors import DataError

NUM_CATEGORIES = 100
TOP_FOLDERS = ("inat2021",)


@register_dataset(
    "inat100",
    description="iNaturalist 2021 train.json, first 100 categories: 27,105 photos (out-of-distribution test)",
    meta_category="organism",
    expected_counts={"all": (0, 27105)},
    homepage="https://github.com/visipedia/inat_comp/tree/master/2021",
)
def read_inat100(root: Path) -> Catalog:
    root = find_root(root, "train.json", TOP_FOLDERS)
    return read_inat_first_categories("inat100", root, root / "train.json")


@register_dataset(
    "inat100_mini",
    description="iNaturalist 2021 train_mini.json, first 100 categories: 5,000 photos (not the paper's set)",
    meta_category="organism",
    expected_counts={"all": (0, 5000), "open": (2500, 2500)},
    homepage="https://github.com/visipedia/inat_comp/tree/master/2021",
)
def read_inat100_mini(root: Path) -> Catalog:
    root = find_root(root, "train_mini.json", TOP_FOLDERS)
    return read_inat_first_categories("inat100_mini", root, root / "train_mini.json")


def read_inat_first_categories(name: str, root: Path, path: Path, num_categories: int = NUM_CATEGORIES) -> Catalog:
    """Two streaming passes: categories and annotations first, then the images they select."""
    require_file(path, "iNaturalist annotation file (train.json or train_mini.json)")
    categories: dict[int, dict[str, Any]] = {}
    image_ids, category_ids = array("q"), array("q")  # 16 bytes an annotation, 43 MB for 2.7M
    for key, item in iter_array_items(path, ("categories", "annotations")):
        try:
            if key == "categories":
                categories[int(item["id"])] = item
            else:
                image_ids.append(int(item["image_id"]))
                category_ids.append(int(item["category_id"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: a {key} entry lacks an integer 'id'/'image_id'/'category_id': {item!r}") from None
    if not categories:
        raise DataError(f"{path}: no categories (is this a test.json, which has no labels?)")
    chosen = sorted(categories)[:num_categories]
    label_of = {cid: i for i, cid in enumerate(chosen)}
    wanted: dict[int, int] = {}  # image id -> label
    problems: list[str] = []
    for image_id, category_id in zip(image_ids, category_ids, strict=True):
        if category_id in label_of:
            if image_id in wanted:
                problems.append(f"{path}: image {image_id} has more than one annotation")
            wanted[image_id] = label_of[category_id]
    del image_ids, category_ids

    class_names = [str(categories[cid].get("name", cid)) for cid in chosen]
    catalog = Catalog(name, root, class_names, [], problems)
    found = 0
    for _, item in iter_array_items(path, ("images",)):
        image_id = item.get("id") if isinstance(item, dict) else None
        if image_id not in wanted:
            continue
        found += 1
        image = root / str(item.get("file_name", ""))
        if image.is_file():
            catalog.records.append(ImageRecord(image, wanted[image_id], str(image_id)))
        else:
            problems.append(f"{path}: image {image_id}: {image} does not exist")
        if found == len(wanted):
            break  # the rest of the file holds nothing we need
    if found < len(wanted):
        problems.append(f"{path}: {len(wanted) - found} annotated image ids have no entry in 'images'")
    problems += duplicate_ids(catalog) + empty_classes(catalog)
    return catalog
