"""The CUB-200-2011, NABirds and Stanford Cars readers on the publishers' real annotation files.

``../shared/data/annotations/`` holds the files as published (no images). Each test links
them into ``tmp_path``, puts a placeholder JPEG at every path they name (hard links to one
tiny file: ~50,000 links take about a second), and checks the published counts
(docs/datasets.md). Without the annotations the tests skip, saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SHARED
from PIL import Image

from dva.data import load_catalog, make_split
from dva.data.matfile import read_mat, struct_rows

ANNOTATIONS = SHARED / "data" / "annotations"


def annotations(name: str) -> Path:
    folder = ANNOTATIONS / name
    if not folder.is_dir():
        pytest.skip(f"the publishers' annotation files are not at {folder} (../shared beside the repository)")
    return folder


def link_files(source: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(source / name)


def placeholders(paths: list[Path], tmp_path: Path) -> None:
    """One tiny JPEG, hard-linked at every path (folders created as needed)."""
    original = tmp_path / "placeholder.jpg"
    Image.new("RGB", (8, 8), (90, 120, 60)).save(original)
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        os.link(original, path)


def listed_paths(images_txt: Path, root: Path) -> list[Path]:
    return [root / "images" / line.split()[1] for line in images_txt.read_text().splitlines() if line.strip()]


def counts(side) -> tuple[int, int]:
    return len(side), side.num_classes


def test_cub_200_2011_published_counts(tmp_path):
    source = annotations("CUB_200_2011")
    root = tmp_path / "CUB_200_2011"
    link_files(
        source,
        root,
        ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt"],
    )
    placeholders(listed_paths(source / "images.txt", root), tmp_path)

    catalog = load_catalog("cub", tmp_path)
    assert (len(catalog.records), catalog.num_classes) == (11788, 200)
    assert catalog.class_names[0] == "Black_footed_Albatross" and catalog.class_names[-1] == "Common_Yellowthroat"
    assert all(r.box is not None for r in catalog.records)  # every image has its box (sizes unknown: kept)
    assert catalog.clipped_boxes == 0 and catalog.warnings == []
    open_split = make_split(catalog, "open")  # first 100 classes train, last 100 test
    assert (counts(open_split.train), counts(open_split.test)) == ((5864, 100), (5924, 100))
    closed = make_split(catalog, "closed")
    assert (len(closed.train), len(closed.test)) == (5994, 5794)


@pytest.mark.slow  # 48,562 links and lines: ~5 s on an idle machine, 20 s on a busy one
def test_nabirds_published_counts_and_boxes_clipped_to_sizes_txt(tmp_path):
    source = annotations("nabirds")
    root = tmp_path / "nabirds"
    link_files(
        source,
        root,
        [
            "images.txt",
            "image_class_labels.txt",
            "train_test_split.txt",
            "classes.txt",
            "hierarchy.txt",
            "bounding_boxes.txt",
            "sizes.txt",
        ],
    )
    placeholders(listed_paths(source / "images.txt", root), tmp_path)

    catalog = load_catalog("nabirds", tmp_path)
    assert (len(catalog.records), catalog.num_classes) == (48562, 555)  # the leaf classes images use
    assert len(make_split(catalog, "all").test) == 48562
    closed = make_split(catalog, "closed")
    assert (len(closed.train), len(closed.test)) == (23929, 24633)
    # 201 boxes reach past the size sizes.txt gives: all clipped to their image; the 183 that
    # overshoot by more than the one-pixel slack are also named in the warnings
    assert catalog.clipped_boxes == 201
    clipped = [w for w in catalog.warnings if "exceeds its" in w]
    assert len(clipped) == 183 and all("bounding_boxes.txt:" in w and "clipped to" in w for w in clipped)
    sizes = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in (source / "sizes.txt").open()}
    assert all(
        0 <= r.box[0] < r.box[2] <= sizes[r.image_id][0] and 0 <= r.box[1] < r.box[3] <= sizes[r.image_id][1]
        for r in catalog.records
    )


def test_stanford_cars_published_counts(tmp_path):
    source = annotations("stanford_cars")
    root = tmp_path / "stanford_cars"
    link_files(source / "devkit", root / "devkit", ["cars_meta.mat", "cars_train_annos.mat"])
    link_files(source, root, ["cars_test_annos_withlabels.mat"])
    paths = []
    for side, mat in (
        ("cars_train", source / "devkit" / "cars_train_annos.mat"),
        ("cars_test", source / "cars_test_annos_withlabels.mat"),
    ):
        rows = struct_rows(read_mat(mat, ["annotations"]), "annotations", ("fname",), mat)
        paths += [root / side / str(row["fname"]) for row in rows]
    placeholders(paths, tmp_path)

    catalog = load_catalog("cars", tmp_path)
    assert (len(catalog.records), catalog.num_classes) == (16185, 196)
    assert catalog.class_names[0] == "AM General Hummer SUV 2000"
    open_split = make_split(catalog, "open")  # classes 1-98 train, 99-196 test
    assert (counts(open_split.train), counts(open_split.test)) == ((8054, 98), (8131, 98))
    closed = make_split(catalog, "closed")
    assert (len(closed.train), len(closed.test)) == (8144, 8041)
