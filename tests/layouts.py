"""Tiny fake copies of the publishers' layouts, written in their exact file formats.

``.mat`` files are written with ``scipy.io.savemat`` as the MATLAB originals hold them: struct
arrays of shape 1 x N whose fields are 1 x 1 arrays of the original integer types, cell
arrays of strings as object arrays (1 x K for class names, N x 1 for Dogs' lists). Images are
small non-square JPEGs (width != height catches swapped sizes); each writer returns what a
reader should find, for the tests to compare.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

W, H = 40, 30  # every fake image is 40 x 30


@dataclass
class Fake:
    root: Path
    class_names: list[str]
    #: image id -> (label, is_train, box as the catalog should hold it)
    expected: dict[str, tuple[int, bool | None, tuple | None]] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


def write_image(path: Path, label: int, index: int, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label * 100 + index)
    colour = np.array([(label * 67) % 200 + 28, (label * 131 + 40) % 200 + 28, (label * 29 + 90) % 200 + 28])
    pixels = colour + rng.normal(0, 25, (size[1], size[0], 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def _u8(v: int) -> np.ndarray:
    return np.array([[v]], dtype=np.uint8 if v < 256 else np.uint16)


def _struct_array(rows: list[dict], fields: list[str]) -> np.ndarray:
    out = np.empty((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        out[0, i] = tuple(row[f] for f in fields)
    return out


def _cells(values: list[str], column: bool = False) -> np.ndarray:
    out = np.empty((len(values), 1) if column else (1, len(values)), dtype=object)
    out.flat[:] = values
    return out


# --------------------------------------------------------------------------- Stanford Cars
CARS_FIELDS = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
DEVKIT_FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def write_cars_annos(root: Path, num_classes: int = 4, per_class: int = 4) -> Fake:
    """``cars_annos.mat`` + ``car_ims/``: every other image of a class is a test image."""
    names = [f"Make{c} Model {2000 + c}" for c in range(num_classes)]
    fake = Fake(root, names)
    rows = []
    for c in range(num_classes):
        for i in range(per_class):
            n = len(rows) + 1
            rel = f"car_ims/{n:06d}.jpg"
            fake.paths[rel] = write_image(root / rel, c, i)
            test = i % 2
            rows.append(
                {
                    "relative_im_path": rel,
                    "bbox_x1": _u8(2),
                    "bbox_y1": _u8(3),
                    "bbox_x2": _u8(30),
                    "bbox_y2": _u8(25),
                    "class": _u8(c + 1),
                    "test": _u8(test),
                }
            )
            fake.expected[rel] = (c, not test, (1.0, 2.0, 30.0, 25.0))
    scipy.io.savemat(
        root / "cars_annos.mat", {"annotations": _struct_array(rows, CARS_FIELDS), "class_names": _cells(names)}
    )
    return fake


def write_cars_devkit(root: Path, num_classes: int = 4, per_class: int = 4, kaggle: bool = False) -> Fake:
    """``cars_train/``, ``cars_test/`` (doubled when ``kaggle``) and ``devkit/``."""
    names = [f"Make{c} Model {2000 + c}" for c in range(num_classes)]
    fake = Fake(root, names)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    sides: dict[str, list[dict]] = {"cars_train": [], "cars_test": []}
    for c in range(num_classes):
        for i in range(per_class):
            side = "cars_train" if i % 2 == 0 else "cars_test"
            fname = f"{len(sides[side]) + 1:05d}.jpg"
            folder = root / side / side if kaggle else root / side
            fake.paths[f"{side}/{fname}"] = write_image(folder / fname, c, i)
            sides[side].append(
                {
                    "bbox_x1": _u8(1),
                    "bbox_y1": _u8(1),
                    "bbox_x2": _u8(40),
                    "bbox_y2": _u8(30),
                    "class": _u8(c + 1),
                    "fname": fname,
                }
            )
            fake.expected[f"{side}/{fname}"] = (c, side == "cars_train", (0.0, 0.0, 40.0, 30.0))
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cells(names)})
    scipy.io.savemat(
        root / "devkit" / "cars_train_annos.mat", {"annotations": _struct_array(sides["cars_train"], DEVKIT_FIELDS)}
    )
    scipy.io.savemat(
        root / "devkit" / "cars_test_annos_withlabels.mat",
        {"annotations": _struct_array(sides["cars_test"], DEVKIT_FIELDS)},
    )
    # the devkit's unlabelled test file, which must not be mistaken for the labelled one
    unlabelled = [{k: v for k, v in r.items() if k != "class"} for r in sides["cars_test"]]
    scipy.io.savemat(
        root / "devkit" / "cars_test_annos.mat",
        {"annotations": _struct_array(unlabelled, [f for f in DEVKIT_FIELDS if f != "class"])},
    )
    return fake


# --------------------------------------------------------------------------- Stanford Dogs
def write_dogs(root: Path, num_classes: int = 4, per_class: int = 4, lists_dir: bool = False) -> Fake:
    """``Images/``, ``Annotation/`` (VOC XML) and the three list files; image 1 of each class has two dogs."""
    folders = [f"n0{2085620 + c}-Breed_{c}" for c in range(num_classes)]
    fake = Fake(root, [f"Breed_{c}" for c in range(num_classes)])
    lists: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}
    for c, folder in enumerate(folders):
        for i in range(per_class):
            stem = f"{folder.split('-')[0]}_{100 + i}"
            file, annotation = f"{folder}/{stem}.jpg", f"{folder}/{stem}"
            fake.paths[file] = write_image(root / "Images" / file, c, i)
            boxes = [(5, 4, 20, 18)] + ([(2, 2, 39, 29)] if i == 1 else [])  # 1-based inclusive
            objects = "".join(
                f"<object><name>Breed_{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
                f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                for b in boxes
            )
            xml = (
                f"<annotation><folder>{folder.split('-')[0][1:]}</folder><filename>{stem}</filename>"
                f"<source><database>ImageNet database</database></source>"
                f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size><segment>0</segment>{objects}</annotation>"
            )
            (root / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / annotation).write_text(xml)
            side = "train" if i % 2 == 0 else "test"
            lists[side].append((file, annotation, c + 1))
            largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            fake.expected[file] = (
                c,
                side == "train",
                (largest[0] - 1.0, largest[1] - 1.0, float(largest[2]), float(largest[3])),
            )
    where = root / "lists" if lists_dir else root
    where.mkdir(parents=True, exist_ok=True)
    for side, entries in (*lists.items(), ("file", lists["train"] + lists["test"])):
        scipy.io.savemat(
            where / f"{side}_list.mat",
            {
                "file_list": _cells([e[0] for e in entries], column=True),
                "annotation_list": _cells([e[1] for e in entries], column=True),
                "labels": np.array([[float(e[2])] for e in entries]),
            },
        )
    return fake


# --------------------------------------------------------------------------- NABirds
def write_nabirds(root: Path, num_leaves: int = 4, per_class: int = 4) -> Fake:
    """Class 0 "Birds" > 1 "Perching Birds" > leaves 295, 296, ...; plus an unused leaf 999."""
    leaves = [295 + k for k in range(num_leaves)]
    classes = {
        0: "Birds",
        1: "Perching Birds",
        **{cid: f"Leaf bird {cid} (Adult)" for cid in leaves},
        999: "Unused leaf",
    }
    fake = Fake(root, [classes[cid] for cid in leaves])
    hierarchy = [(1, 0), *((cid, 1) for cid in leaves), (999, 1)]
    images, labels, split, boxes, sizes = [], [], [], [], []
    for k, cid in enumerate(leaves):
        for i in range(per_class):
            image_id = str(uuid.UUID(int=cid * 1000 + i))
            rel = f"{cid:04d}/{image_id.replace('-', '')}.jpg"
            fake.paths[image_id] = write_image(root / "images" / rel, k, i)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            split.append(f"{image_id} {1 if i % 2 == 0 else 0}")
            boxes.append(f"{image_id} 3 4 20 15")
            sizes.append(f"{image_id} {W} {H}")
            fake.expected[image_id] = (k, i % 2 == 0, (3.0, 4.0, 23.0, 19.0))
    files = {
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": split,
        "bounding_boxes.txt": boxes,
        "sizes.txt": sizes,
        "classes.txt": [f"{cid} {name}" for cid, name in classes.items()],
        "hierarchy.txt": [f"{child} {parent}" for child, parent in hierarchy],
    }
    for name, lines in files.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return fake


# --------------------------------------------------------------------------- FGVC-Aircraft
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F/A-18", "Yak-42", "DHC-8-300"]


def write_aircraft(root: Path, num_variants: int = 4, per_class: int = 6) -> Fake:
    """``data/`` of fgvc-aircraft-2013b: per variant, images cycle through train, val and test."""
    variants = AIRCRAFT_VARIANTS[:num_variants]
    fake = Fake(root, variants)
    data = root / "data"
    sides: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    boxes = []
    for c, variant in enumerate(variants):
        for i in range(per_class):
            name = f"{1000000 + c * 100 + i:07d}"
            fake.paths[name] = write_image(data / "images" / f"{name}.jpg", c, i)
            side = ("train", "val", "test")[i % 3]
            sides[side].append(f"{name} {variant}")
            boxes.append(f"{name} 1 1 40 30")
            fake.expected[name] = (c, side != "test", (0.0, 0.0, 40.0, 30.0))
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    for side, lines in sides.items():
        (data / f"images_variant_{side}.txt").write_text("\n".join(lines) + "\n")
    (data / "images_variant_trainval.txt").write_text("\n".join(sides["train"] + sides["val"]) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return fake


# --------------------------------------------------------------------------- iNaturalist 2021
def write_inat(root: Path, num_categories: int = 102, per_class: int = 1, file: str = "train.json") -> Fake:
    """A COCO-style iNat2021 file with ``num_categories`` categories, listed in shuffled id order.

    Only the first 100 categories' images exist on disk (as when users extract only those
    folders); the latitude of every image is NaN, as the README warns it can be.
    """
    rng = np.random.default_rng(0)
    order = rng.permutation(num_categories)
    categories = [
        {
            "id": int(cid),
            "name": f"Genus{cid} species{cid}",
            "common_name": f"Critter {cid}",
            "supercategory": "Animalia",
            "kingdom": "Animalia",
            "phylum": "Chordata",
            "class": "Aves",
            "order": "O",
            "family": "F",
            "genus": f"Genus{cid}",
            "specific_epithet": f"species{cid}",
            "image_dir_name": f"{cid:05d}_Animalia_Chordata_Aves_O_F_Genus{cid}_species{cid}",
        }
        for cid in order
    ]
    fake = Fake(root, [f"Genus{cid} species{cid}" for cid in range(min(100, num_categories))])
    images, annotations = [], []
    for cid in order:
        for i in range(per_class):
            image_id = int(cid) * 10 + i + 7
            rel = (
                f"train/{int(cid):05d}_Animalia_Chordata_Aves_O_F_Genus{cid}_species{cid}/{uuid.UUID(int=image_id)}.jpg"
            )
            if cid < 100:
                fake.paths[str(image_id)] = write_image(root / rel, int(cid), i, (16, 12))
                fake.expected[str(image_id)] = (int(cid), None, None)
            images.append(
                {
                    "id": image_id,
                    "width": 16,
                    "height": 12,
                    "file_name": rel,
                    "license": 1,
                    "rights_holder": "someone",
                    "date": "2020-01-01",
                    "latitude": math.nan,
                    "longitude": -71.5,
                    "location_uncertainty": 10,
                }
            )
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": int(cid)})
    document = {
        "info": {
            "year": 2021,
            "version": "1",
            "description": "fake",
            "contributor": "tests",
            "url": "",
            "date_created": "x",
        },
        "images": images,
        "categories": categories,
        "annotations": annotations,
        "licenses": [{"id": 1, "name": "CC BY", "url": ""}],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / file).write_text(json.dumps(document, indent=1))
    return fake
