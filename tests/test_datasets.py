"""The paper's six datasets, read from tiny fake copies in their publishers' exact formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.io
from conftest import write_cub
from layouts import (
    W,
    write_aircraft,
    write_cars_annos,
    write_cars_devkit,
    write_dogs,
    write_inat,
    write_nabirds,
)

from dva.data import get_dataset, load_catalog, make_split, read_catalog
from dva.data.check import check_dataset
from dva.data.jsonstream import iter_array_items
from dva.errors import DataError


def by_id(catalog):
    return {r.image_id: (r.label, r.is_train, r.box) for r in catalog.records}


def sizes(split):
    return (len(split.train), split.train.num_classes), (len(split.test), split.test.num_classes)


def test_paper_counts_are_recorded_for_every_dataset():
    # docs/datasets.md (and the OOD set sizes), so `dva data check` can spot partial copies
    assert get_dataset("cub").expected_counts == {"closed": (5994, 5794), "open": (5864, 5924), "all": (0, 11788)}
    assert get_dataset("cars").expected_counts == {"closed": (8144, 8041), "open": (8054, 8131), "all": (0, 16185)}
    assert get_dataset("dogs").expected_counts == {"closed": (12000, 8580), "open": (10651, 9929), "all": (0, 20580)}
    assert get_dataset("nabirds").expected_counts["all"] == (0, 48562)
    assert get_dataset("aircraft").expected_counts["all"] == (0, 10000)
    assert get_dataset("inat100").expected_counts["all"] == (0, 27105)


# --------------------------------------------------------------------------- Stanford Cars
def test_cars_annos_labels_boxes_and_splits(tmp_path):
    fake = write_cars_annos(tmp_path / "stanford_cars")
    catalog = load_catalog("cars", tmp_path)  # the suite's folder name is found from its parent
    assert catalog.root == tmp_path / "stanford_cars"
    assert catalog.class_names == fake.class_names
    assert by_id(catalog) == fake.expected  # 1-based classes and boxes shifted to 0-based edges
    assert sizes(make_split(catalog, "closed")) == ((8, 4), (8, 4))
    open_split = make_split(catalog, "open")
    assert open_split.test.class_names == fake.class_names[2:] and sizes(open_split) == ((8, 2), (8, 2))


@pytest.mark.parametrize("kaggle", [False, True])
def test_cars_devkit_layout(tmp_path, kaggle):
    fake = write_cars_devkit(tmp_path, kaggle=kaggle)
    catalog = load_catalog("cars", tmp_path)
    assert by_id(catalog) == fake.expected
    assert {r.path for r in catalog.records} == set(fake.paths.values())
    assert "cars_train/00001.jpg" in by_id(catalog) and "cars_test/00001.jpg" in by_id(catalog)  # same names, two sides


def test_cars_without_the_labelled_test_file_says_which_file(tmp_path):
    write_cars_devkit(tmp_path)
    (tmp_path / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat.*no class labels"):
        load_catalog("cars", tmp_path)


def test_mat_file_of_another_release_names_the_missing_field(tmp_path):
    write_cars_annos(tmp_path)
    data = scipy.io.loadmat(tmp_path / "cars_annos.mat")
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class"]  # no "test"
    old = np.empty(data["annotations"].shape, dtype=[(f, "O") for f in fields])
    for f in fields:
        old[f] = data["annotations"][f]
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": old, "class_names": data["class_names"]})
    with pytest.raises(DataError, match=r"cars_annos.mat: annotations\(1\) has no field 'test'"):
        load_catalog("cars", tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError, match="cars_annos.mat: cannot read the MATLAB file"):
        load_catalog("cars", tmp_path)


# --------------------------------------------------------------------------- Stanford Dogs
@pytest.mark.parametrize("lists_dir", [False, True])
def test_dogs_layout_official_lists_and_largest_box(tmp_path, lists_dir):
    fake = write_dogs(tmp_path, lists_dir=lists_dir)
    catalog = load_catalog("dogs", tmp_path)
    assert catalog.class_names == ["Breed_0", "Breed_1", "Breed_2", "Breed_3"]  # WordNet id stripped
    assert by_id(catalog) == fake.expected  # image 1 of each class: the larger of its two dogs
    closed = make_split(catalog, "closed")
    assert sizes(closed) == ((8, 4), (8, 4))
    assert all(r.path.stem.endswith(("_100", "_102")) for r in closed.train.records)  # train_list.mat's entries
    assert sizes(make_split(catalog, "open")) == ((8, 2), (8, 2))


def test_dogs_box_outside_its_image_is_clipped_with_a_warning(tmp_path):
    write_dogs(tmp_path)
    xml = tmp_path / "Annotation" / "n02085620-Breed_0" / "n02085620_100"
    xml.write_text(xml.read_text().replace("<xmax>20</xmax>", "<xmax>60</xmax>"))
    catalog = load_catalog("dogs", tmp_path)  # usable: boxes never block retrieval
    record = next(r for r in catalog.records if r.image_id.endswith("n02085620_100.jpg"))
    assert record.box == (4.0, 3.0, float(W), 18.0)
    assert len(catalog.warnings) == 1 and str(xml) in catalog.warnings[0] and "clipped" in catalog.warnings[0]


def test_dogs_lists_must_cover_file_list(tmp_path):
    write_dogs(tmp_path)
    data = scipy.io.loadmat(tmp_path / "file_list.mat")
    extra = np.concatenate([data["file_list"], np.array([["n02085620-Breed_0/n02085620_999.jpg"]], dtype=object)])
    scipy.io.savemat(tmp_path / "file_list.mat", {"file_list": extra})
    catalog = read_catalog("dogs", tmp_path)
    assert catalog.problems == [
        f"{tmp_path / 'file_list.mat'}: n02085620-Breed_0/n02085620_999.jpg is in neither "
        "train_list.mat nor test_list.mat"
    ]


# --------------------------------------------------------------------------- NABirds
def test_nabirds_classes_are_the_leaves_with_images(tmp_path):
    fake = write_nabirds(tmp_path / "nabirds")
    catalog = load_catalog("nabirds", tmp_path)  # finds the archive's nabirds/ folder
    assert catalog.class_names == fake.class_names  # not "Birds", "Perching Birds" nor the unused leaf
    assert by_id(catalog) == fake.expected and not catalog.warnings
    assert sizes(make_split(catalog, "all")) == ((0, 0), (16, 4))
    assert sizes(make_split(catalog, "closed")) == ((8, 4), (8, 4))


def test_nabirds_boxes_are_checked_against_sizes_txt(tmp_path):
    fake = write_nabirds(tmp_path)
    first, second = list(fake.expected)[:2]
    lines = (tmp_path / "sizes.txt").read_text().splitlines()
    lines[0] = f"{first} 15 30"  # box x: 3..23 leaves a 15-pixel-wide image by 8 pixels
    (tmp_path / "bounding_boxes.txt").write_text(
        (tmp_path / "bounding_boxes.txt").read_text().replace(f"{second} 3 4 20 15", f"{second} 50 40 5 5")
    )
    (tmp_path / "sizes.txt").write_text("\n".join(lines) + "\n")
    catalog = load_catalog("nabirds", tmp_path)
    boxes = {r.image_id: r.box for r in catalog.records}
    assert boxes[first] == (3.0, 4.0, 15.0, 19.0) and boxes[second] is None
    assert catalog.clipped_boxes == 1  # the first; the second, with nothing inside, is dropped
    assert check_dataset("nabirds", tmp_path, open_images=False)["clipped_boxes"] == 1
    assert catalog.warnings[0].startswith(
        f"{tmp_path / 'bounding_boxes.txt'}:1: box (3, 4, 23, 19) exceeds its 15x30 image"
    )
    assert catalog.warnings[1].startswith(f"{tmp_path / 'bounding_boxes.txt'}:2: box (50, 40, 55, 45) lies outside")


def test_nabirds_label_with_sub_classes_is_a_warning(tmp_path):
    write_nabirds(tmp_path)
    with open(tmp_path / "hierarchy.txt", "a") as f:
        f.write("1000 295\n")
    catalog = load_catalog("nabirds", tmp_path)
    assert catalog.warnings == [
        f"{tmp_path / 'hierarchy.txt'}: class 295 'Leaf bird 295 (Adult)' labels images but has sub-classes"
    ]


def test_every_problem_is_listed_with_file_and_line(tmp_path):
    fake = write_nabirds(tmp_path)
    ids = list(fake.expected)
    fake.paths[ids[3]].unlink()  # listed but missing
    images = (tmp_path / "images.txt").read_text().splitlines()
    (tmp_path / "images.txt").write_text("\n".join([*images, images[0]]) + "\n")  # duplicate id
    labels = (tmp_path / "image_class_labels.txt").read_text().splitlines()
    labels[5] = ids[5]  # no class
    (tmp_path / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    catalog = read_catalog("nabirds", tmp_path)
    assert len(catalog.problems) == 4, catalog.problems
    joined = "\n".join(catalog.problems)
    assert f"images.txt:17: id {ids[0]} already defined on line 1" in joined
    assert "image_class_labels.txt:6: expected 2 fields" in joined
    assert f"images.txt:4: {fake.paths[ids[3]]} does not exist" in joined
    assert f"images.txt:6: image {ids[5]} has no class" in joined
    with pytest.raises(DataError, match="4 problem"):
        load_catalog("nabirds", tmp_path)


def test_wrong_root_or_half_extracted_archive_names_what_is_missing(tmp_path):
    write_nabirds(tmp_path)
    (tmp_path / "train_test_split.txt").unlink()
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match="not a complete NABirds copy, missing classes.txt, train_test_split.txt"):
        load_catalog("nabirds", tmp_path)
    with pytest.raises(DataError, match="not a complete FGVC-Aircraft copy, missing variants.txt"):
        load_catalog("aircraft", tmp_path)


# --------------------------------------------------------------------------- FGVC-Aircraft
def test_aircraft_variants_sides_and_one_based_boxes(tmp_path):
    fake = write_aircraft(tmp_path / "fgvc-aircraft-2013b")
    catalog = load_catalog("aircraft", tmp_path)
    assert catalog.class_names == ["707-320", "A300B4", "Cessna 172", "F/A-18"]  # variants.txt order, spaces kept
    assert by_id(catalog) == fake.expected  # "1 1 40 30" covers the whole 40 x 30 image
    assert sizes(make_split(catalog, "closed")) == ((16, 4), (8, 4))  # train + val / test
    assert sizes(make_split(catalog, "all")) == ((0, 0), (24, 4))
    assert load_catalog("aircraft", tmp_path / "fgvc-aircraft-2013b" / "data").num_classes == 4  # data/ itself


def test_aircraft_unknown_variant_is_a_problem(tmp_path):
    write_aircraft(tmp_path)
    path = tmp_path / "data" / "images_variant_test.txt"
    path.write_text(path.read_text().replace("A300B4", "A300B5", 1))
    catalog = read_catalog("aircraft", tmp_path)
    assert catalog.problems == [f"{path}:3: variant 'A300B5' is not in variants.txt"]


# --------------------------------------------------------------------------- iNaturalist 2021
def test_inat_first_100_categories_by_id(tmp_path):
    fake = write_inat(tmp_path / "inat2021")  # 102 categories, listed in shuffled order
    catalog = load_catalog("inat100", tmp_path)
    assert catalog.class_names == fake.class_names  # ids 0..99, in id order
    assert by_id(catalog) == fake.expected  # categories 100, 101: not read, their images need not exist
    assert sizes(make_split(catalog, "all")) == ((0, 0), (100, 100))
    with pytest.raises(DataError, match="no official train/test split"):
        make_split(catalog, "closed")


def test_inat_mini_reads_train_mini_json(tmp_path):
    fake = write_inat(tmp_path, file="train_mini.json")
    assert by_id(load_catalog("inat100_mini", tmp_path)) == fake.expected
    with pytest.raises(DataError, match="train.json: missing"):
        load_catalog("inat100", tmp_path)


@pytest.mark.parametrize("chunk_chars", [1, 7, 4096])
def test_json_streaming_matches_json_load(tmp_path, chunk_chars):
    write_inat(tmp_path, num_categories=3, per_class=2)
    whole = json.loads((tmp_path / "train.json").read_text())
    streamed = list(iter_array_items(tmp_path / "train.json", ("images", "annotations"), chunk_chars=chunk_chars))
    assert [k for k, _ in streamed] == ["images"] * 6 + ["annotations"] * 6
    assert [item["file_name"] for k, item in streamed if k == "images"] == [i["file_name"] for i in whole["images"]]
    assert [item for k, item in streamed if k == "annotations"] == whole["annotations"]
    assert all(math.isnan(item["latitude"]) for k, item in streamed if k == "images")  # NaN, as iNat writes it


def test_truncated_json_names_the_file_and_offset(tmp_path):
    write_inat(tmp_path, num_categories=3)
    path = tmp_path / "train.json"
    path.write_text(path.read_text()[:1500])
    with pytest.raises(DataError, match=r"train.json: invalid JSON at character \d+.*truncated"):
        load_catalog("inat100", tmp_path)


# --------------------------------------------------------------------------- dva data check
def test_check_reads_headers_for_boxes_and_non_images(tmp_path):
    data = write_cub(tmp_path, num_classes=4, per_class=4, size=40)
    boxes = (tmp_path / "bounding_boxes.txt").read_text().replace("1 4.0 6.0 20.0 24.0", "1 30.0 6.0 20.0 24.0", 1)
    (tmp_path / "bounding_boxes.txt").write_text(boxes)
    data.paths[5].write_text("<html>not an image</html>")
    assert not read_catalog("cub", tmp_path).warnings  # loading stays fast: no image is opened
    report = check_dataset("cub", tmp_path)
    assert report["warnings"] == [
        f"{data.paths[0]} (image 1): box (30, 6, 50, 30) exceeds its 40x40 image; clipped to (30, 6, 40, 30)"
    ]
    assert len(report["problems"]) == 1 and report["problems"][0].startswith(f"{data.paths[5]}: not a readable image")
    assert report["splits"]["closed"]["train"] == {"images": 8, "classes": 4}
    assert report["matches_expected"] is False  # 16 images are not CUB's 11,788
    assert check_dataset("cub", tmp_path, open_images=False)["problems"] == []
