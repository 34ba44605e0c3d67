"""Dataset layouts, splits and robust decoding, on real files written to disk."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import CUB100, class_image, write_cub
from PIL import Image

from dva.data import ImageDecodeError, load_catalog, load_image, make_split, read_catalog
from dva.errors import DataError


def test_official_cub_layout(cub_root):
    catalog = load_catalog("cub", cub_root.root.parent)  # the archive's parent folder works too
    assert catalog.num_classes == 6 and len(catalog.records) == 48
    assert catalog.class_names[0] == "Species_0"  # "001." prefix stripped
    first = catalog.records[0]
    assert first.path == cub_root.paths[0] and first.label == 0 and first.is_train is True
    assert first.box == (4.0, 6.0, 24.0, 30.0)  # x, y, w, h -> x0, y0, x1, y1


def test_cub100_layout_and_its_inverted_flag(cub100_like):
    catalog = load_catalog("cub100", cub100_like.root)
    closed = make_split(catalog, "closed")
    assert len(closed.train) == len(closed.test) == 24
    # write_cub marks even images for training ("0" in cub100's convention)
    assert all(int(r.path.stem) % 2 == 0 for r in closed.train.records)


@pytest.mark.skipif(not CUB100.is_dir(), reason="shared cub100 data not present")
def test_real_cub100_counts_match_the_spec():
    catalog = load_catalog("cub100", CUB100)
    open_split, closed = make_split(catalog, "open"), make_split(catalog, "closed")
    assert (len(open_split.train), len(open_split.test)) == (2949, 2953)
    assert (open_split.train.num_classes, open_split.test.num_classes) == (50, 50)
    assert (len(closed.train), len(closed.test)) == (2999, 2903)
    assert open_split.test.class_names[0] == catalog.class_names[50]


def test_open_split_divides_classes_in_halves_and_renumbers(cub_root):
    split = make_split(load_catalog("cub", cub_root.root), "open")
    assert split.train.class_names == ["Species_0", "Species_1", "Species_2"]
    assert split.test.class_names == ["Species_3", "Species_4", "Species_5"]
    assert {r.label for r in split.test.records} == {0, 1, 2}
    assert len(split.train) == len(split.test) == 24


def test_validation_classes_are_carved_from_training_only(cub_root):
    split = make_split(load_catalog("cub", cub_root.root), "open", val_classes=2)
    assert split.train.class_names == ["Species_0"]
    assert split.val.class_names == ["Species_1", "Species_2"]
    assert {r.label for r in split.val.records} == {0, 1}
    assert split.test.class_names == ["Species_3", "Species_4", "Species_5"]
    with pytest.raises(DataError, match="val_classes"):
        make_split(load_catalog("cub", cub_root.root), "open", val_classes=3)


def test_validation_folds_hold_out_each_block_of_classes_once():
    from dva.data.records import ImageRecord, SplitSide
    from dva.data.splits import carve_validation

    names = [f"c{i}" for i in range(6)]
    side = SplitSide([ImageRecord(Path(f"{c}-{k}.jpg"), c, f"{c}-{k}") for c in range(6) for k in range(2)], names)
    held_out = []
    for fold in range(3):
        train, val = carve_validation(side, 2, fold=fold)
        held_out += val.class_names
        assert not set(train.class_names) & set(val.class_names) and len(train) + len(val) == len(side)
        # labels still index each side's own class names, renumbered 0..k-1
        for part in (train, val):
            assert sorted({r.label for r in part.records}) == list(range(part.num_classes))
            assert all(part.class_names[r.label] == f"c{r.path.stem.split('-')[0]}" for r in part.records)
    assert held_out == ["c4", "c5", "c2", "c3", "c0", "c1"]  # fold 0 is the last block, as val_classes alone
    with pytest.raises(DataError, match="val_fold must be between 0 and 2"):
        carve_validation(side, 2, fold=3)


def test_a_validation_fold_needs_a_fold_size(cub_root):
    with pytest.raises(DataError, match="val_fold=1 needs val_classes"):
        make_split(load_catalog("cub", cub_root.root), "open", val_fold=1)


def test_the_split_cache_key_names_every_field_the_split_reads(cub_root):
    """``dva reproduce`` caches data fingerprints by ``split_key``: a field that changes the split
    but is missing from the key would answer one fold's runs with another fold's images."""
    from dva.config import DataConfig
    from dva.data import SPLIT_FIELDS, split_from_config, split_key

    class ReadRecorder:
        def __init__(self, data: DataConfig) -> None:
            self.data, self.read = data, set()

        def __getattr__(self, name):
            self.read.add(name)
            return getattr(self.data, name)

    data = DataConfig(dataset="cub", root=str(cub_root.root), split="open", val_classes=2, val_fold=0)
    recorder = ReadRecorder(data)
    split = split_from_config(load_catalog("cub", cub_root.root), recorder)
    assert recorder.read <= set(SPLIT_FIELDS) and split.val.class_names == ["Species_1", "Species_2"]
    assert split_key(data) != split_key(dataclasses.replace(data, val_classes=0))
    assert split_key(data) == split_key(dataclasses.replace(data, num_workers=7))


def test_folder_layout_with_train_and_test(tmp_path):
    for side in ("train", "test"):
        for c in ("b_cls", "a_cls"):
            (tmp_path / side / c).mkdir(parents=True)
            class_image(0, 0).save(tmp_path / side / c / "x.png")
    (tmp_path / "train" / "a_cls" / "notes.txt").write_text("not an image")
    catalog = load_catalog("folder", tmp_path)
    assert catalog.class_names == ["a_cls", "b_cls"]
    split = make_split(catalog, "closed")
    assert len(split.train) == len(split.test) == 2


def test_missing_annotation_file_names_the_file(cub_root):
    (cub_root.root / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match="not a complete cub copy, missing image_class_labels.txt"):
        load_catalog("cub", cub_root.root)


def test_malformed_line_names_file_and_line(cub_root):
    path = cub_root.root / "train_test_split.txt"
    lines = path.read_text().splitlines()
    lines[4] = "5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_test_split.txt:5: expected 2 fields"):
        load_catalog("cub", cub_root.root)


def test_duplicate_id_is_refused(cub_root):
    path = cub_root.root / "images.txt"
    path.write_text(path.read_text() + "1 Species_0/0000.jpg\n")
    with pytest.raises(DataError, match=r"images.txt:49: id 1 already defined on line 1"):
        load_catalog("cub", cub_root.root)


def test_every_problem_is_collected_not_just_the_first(cub_root):
    cub_root.paths[0].unlink()
    cub_root.paths[9].unlink()
    catalog = read_catalog("cub", cub_root.root)
    assert len(catalog.problems) == 2 and all("does not exist" in p for p in catalog.problems)
    with pytest.raises(DataError, match="2 problem"):
        load_catalog("cub", cub_root.root)


def test_empty_class_is_reported(cub_root):
    with open(cub_root.root / "classes.txt", "a") as f:
        f.write("7 007.Ghost_species\n")
    catalog = read_catalog("cub", cub_root.root)
    assert any("Ghost_species" in p and "no images" in p for p in catalog.problems)


def test_class_on_one_side_only_of_closed_split(tmp_path):
    ds = write_cub(tmp_path / "c", num_classes=2, per_class=4)
    split_file = ds.root / "train_test_split.txt"
    lines = split_file.read_text().splitlines()
    lines = [f"{line.split()[0]} 1" if int(line.split()[0]) <= 4 else line for line in lines]  # class 0: all train
    split_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="only in train: Species_0"):
        make_split(load_catalog("cub", ds.root), "closed")


def test_wrong_root_is_clear(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_catalog("cub", tmp_path / "nope")
    with pytest.raises(DataError, match="not a complete cub copy, missing images.txt, image_class_labels.txt"):
        load_catalog("cub", tmp_path)


# --------------------------------------------------------------------------- decoding
def _save(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def test_decoding_handles_cmyk_grayscale_alpha_and_16_bit(tmp_path):
    rgb = class_image(1, 1, 24)
    cmyk = _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg")
    gray = _save(rgb.convert("L"), tmp_path / "gray.png")
    alpha = Image.new("RGBA", (24, 24), (255, 0, 0, 0))  # fully transparent red
    rgba = _save(alpha, tmp_path / "alpha.png")
    deep = _save(Image.fromarray(np.full((24, 24), 65535, dtype=np.uint16)), tmp_path / "deep.png")
    for path in (cmyk, gray, rgba, deep):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (24, 24)
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # composited on white, red stays hidden
    assert load_image(deep).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped to garbage


def test_truncated_and_non_images_raise_naming_the_file(tmp_path):
    buffer = io.BytesIO()
    class_image(0, 0, 64).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(ImageDecodeError, match=path.name):
            load_image(path)


def test_decompression_bomb_is_refused(tmp_path):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        load_image(path, max_pixels=5000)
