"""Stanford Dogs (Khosla et al. 2011): 20,580 ImageNet images of 120 dog breeds.

Layout, as the three archives (``images.tar``, ``annotation.tar``, ``lists.tar``) extract
into one folder::

    ROOT/Images/n02085620-Chihuahua/n02085620_10074.jpg
    ROOT/Annotation/n02085620-Chihuahua/n02085620_10074     (Pascal-VOC XML, no extension)
    ROOT/train_list.mat, test_list.mat, file_list.mat       (or ROOT/lists/*.mat)

Each list holds ``file_list`` (N x 1 cell, ``"n02085620-Chihuahua/n02085620_10074.jpg"``
relative to ``Images/``), ``annotation_list`` (N x 1 cell, relative to ``Annotation/``) and
``labels`` (N x 1 double, 1-based, in synset-folder order). Class names are the folder names
without the WordNet id (``"Chihuahua"``). ``file_list.mat`` (all 20,580), when present, must
be exactly the union of the two others.

Each XML holds ``<size><width>/<height>`` and one ``<object><bndbox>`` per dog with 1-based
inclusive ``xmin, ymin, xmax, ymax`` (Pascal VOC). The largest box is kept as the main
object (OPA uses one box per image); boxes are checked against the shipped size. The
``Annotation/`` archive is optional: without it the records have no box.

Closed split: the official lists, 12,000 / 8,580 (docs/datasets.md keeps them, although the
paper's prose describes a class split); open: classes 1-60 (10,651) / 61-120 (9,929).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from dva.data.matfile import number_list, read_mat, string_list
from dva.data.publisher_boxes import one_based_box
from dva.data.records import Box, Catalog, ImageRecord, duplicate_ids, empty_classes
from dva.data.registry import register_dataset
from dva.data.tables import find_root, require_files
from dva.errors import DataError
from dva.geometry import fit_box

LIST_VARIABLES = ("file_list", "annotation_list", "labels")


@register_dataset(
    "dogs",
    description="Stanford Dogs: 20,580 photos of 120 dog breeds (Images/, Annotation/, *_list.mat)",
    meta_category="dog",
    expected_counts={"closed": (12000, 8580), "open": (10651, 9929), "all": (0, 20580)},
    homepage="http://vision.stanford.edu/aditya86/ImageNetDogs/",
)
def read_dogs(root: Path) -> Catalog:
    root = find_root(root, "Images", ("stanford_dogs", "StanfordDogs"))
    lists = root / "lists" if (root / "lists" / "train_list.mat").is_file() else root
    require_files(lists, ("train_list.mat", "test_list.mat"), "Stanford Dogs (lists.tar)")
    entries: list[tuple[str, str, int, bool, str]] = []  # file, annotation, label, is_train, where
    for name, is_train in (("train_list.mat", True), ("test_list.mat", False)):
        path = lists / name
        data = read_mat(path, LIST_VARIABLES)
        files, annotations = string_list(data, "file_list", path), string_list(data, "annotation_list", path)
        labels = number_list(data, "labels", path)
        if not len(files) == len(annotations) == len(labels):
            raise DataError(
                f"{path}: file_list, annotation_list and labels differ in length "
                f"({len(files)}, {len(annotations)}, {len(labels)})"
            )
        entries += [
            (f, a, int(y), is_train, f"{path}: entry {i}")
            for i, (f, a, y) in enumerate(zip(files, annotations, labels, strict=True), start=1)
        ]

    class_folders: dict[int, set[str]] = {}
    for file, _, label, _, _ in entries:
        class_folders.setdefault(label, set()).add(file.split("/")[0])
    num_classes = max(class_folders, default=0)
    class_names = [_breed(min(class_folders.get(i, {f"class {i}"}))) for i in range(1, num_classes + 1)]
    catalog = Catalog("dogs", root, class_names, [])
    for label, folders in sorted(class_folders.items()):
        if label < 1 or len(folders) > 1:
            catalog.problems.append(
                f"{lists}: label {label} names folders {', '.join(sorted(folders))}; expected one folder per label 1..N"
            )

    has_boxes = (root / "Annotation").is_dir()
    for file, annotation, label, is_train, where in entries:
        path = root / "Images" / file
        if not path.is_file():
            catalog.problems.append(f"{where}: {path} does not exist")
            continue
        box = _read_box(root / "Annotation" / annotation, catalog.warnings) if has_boxes else None
        catalog.records.append(ImageRecord(path, label - 1, file, is_train=is_train, box=box))
    _check_file_list(lists / "file_list.mat", entries, catalog)
    catalog.problems += duplicate_ids(catalog) + empty_classes(catalog)
    return catalog


def _breed(folder: str) -> str:
    """``"n02085620-Chihuahua"`` -> ``"Chihuahua"``."""
    return folder.split("-", 1)[1] if "-" in folder else folder


def _read_box(path: Path, warnings: list[str]) -> Box | None:
    """The largest ``<bndbox>`` of a VOC XML file, fitted to its ``<size>``."""
    if not path.is_file():
        warnings.append(f"{path}: annotation file missing; no box")
        return None
    try:
        tree = ET.parse(path).getroot()
        width, height = (int(float(tree.findtext(f"size/{k}", "0"))) for k in ("width", "height"))
        boxes = [
            one_based_box(*(float(b.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")))
            for b in tree.iter("bndbox")
        ]
    except (ET.ParseError, ValueError) as e:
        warnings.append(f"{path}: unreadable annotation ({e}); no box")
        return None
    if not boxes:
        warnings.append(f"{path}: no <bndbox>; no box")
        return None
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    box, warning = fit_box(largest, (width, height) if width > 0 and height > 0 else None, str(path))
    if warning:
        warnings.append(warning)
    return box


def _check_file_list(path: Path, entries: list[tuple[str, str, int, bool, str]], catalog: Catalog) -> None:
    """``file_list.mat`` lists every image once: the train and test lists must cover it exactly."""
    if not path.is_file():
        return
    every = string_list(read_mat(path, ["file_list"]), "file_list", path)
    listed = {e[0] for e in entries}
    catalog.problems += [
        f"{path}: {f} is in neither train_list.mat nor test_list.mat" for f in every if f not in listed
    ]
    known = set(every)
    catalog.problems += [f"{e[4]}: {e[0]} is not in {path.name}" for e in entries if e[0] not in known]
