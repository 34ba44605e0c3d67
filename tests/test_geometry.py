"""Box geometry and the one orientation rule: publishers' boxes (stored frame) follow an EXIF-rotated image."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_cub
from PIL import Image

from dva.data import load_catalog, make_split
from dva.data.images import load_image
from dva.errors import DataError
from dva.geometry import EDGE_SLACK, clip_box, fit_box, read_image_header, upright_box

RED, GREY = (220, 30, 30), (128, 128, 128)


def with_orientation(image: Image.Image, path, orientation: int, **save) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)


def red_bounds(image: Image.Image) -> tuple[int, int, int, int]:
    """The pixel-edge box around the red pixels of ``image``."""
    a = np.asarray(image).astype(int)
    ys, xs = np.nonzero((a[..., 0] > 150) & (a[..., 1] < 100))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_box_turns_a_stored_box_as_load_image_turns_the_pixels(tmp_path, orientation):
    stored, box = (60, 40), (10, 5, 25, 30)
    image = Image.new("RGB", stored, GREY)
    image.paste(RED, box)
    with_orientation(image, tmp_path / "a.png", orientation)  # PNG: lossless, the red edges exact

    header = read_image_header(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert header.stored_size == stored and header.orientation == orientation
    assert header.size == loaded.size == ((40, 60) if orientation >= 5 else (60, 40))
    assert header.upright_box(box) == red_bounds(loaded)
    assert upright_box(box, stored, orientation) == header.upright_box(box)


def test_ground_truth_box_lands_on_the_object_of_an_exif_rotated_jpeg(tmp_path):
    """Publishers annotate stored pixels; training crops the upright image: the box must turn with it."""
    from dva.opa import ViewPolicy, create_detector, detect_boxes, load_boxes

    data = write_cub(tmp_path / "CUB_200_2011", num_classes=2, per_class=4)
    # image 1 becomes an 80x40 photo stored sideways (EXIF 6: shown rotated 90 degrees clockwise, 40x80),
    # its bird a red patch at stored x 30..60, y 2..20, annotated there as CUB annotates (x y w h)
    photo = Image.new("RGB", (80, 40), GREY)
    photo.paste(RED, (30, 2, 60, 20))
    with_orientation(photo, data.paths[0], 6, quality=95)
    lines = (data.root / "bounding_boxes.txt").read_text().splitlines()
    lines[0] = "1 30.0 2.0 30.0 18.0"
    (data.root / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")

    split = make_split(load_catalog("cub", data.root), "closed")
    record = next(r for r in split.train.records if r.path == data.paths[0])
    assert record.box == (30.0, 2.0, 60.0, 20.0)  # the catalog keeps the publisher's (stored) frame
    boxes = tmp_path / "boxes.jsonl"
    detect_boxes(
        create_detector("dataset"), {"train": split.train}, boxes, dataset="cub", root=data.root, progress=False
    )
    entry = load_boxes(boxes, split.train.records, root=str(data.root), dataset="cub").get(record.path)
    assert entry.size == (40, 80) and entry.box == (20.0, 30.0, 38.0, 60.0)  # turned upright

    views, outcome = ViewPolicy().views(load_image(record.path), entry.detection)
    crop = np.asarray(views["discriminative"]).astype(int)
    shown = crop[crop.sum(axis=2) > 30]  # leave out the black aspect padding
    red = (shown[:, 0] > 150) & (shown[:, 1] < 100) & (shown[:, 2] < 100)
    assert red.mean() > 0.7, f"the crop shows the background, not the object ({red.mean():.0%} red)"
    assert outcome == "background"


def test_boxes_are_clipped_with_one_tolerance():
    assert clip_box((-3.0, 2.0, 50.0, 20.0), 40, 30) == (0.0, 2.0, 40.0, 20.0)
    with pytest.raises(ValueError, match="no area inside the 40x30 image"):
        clip_box((41.0, 0.0, 50.0, 10.0), 40, 30)
    # a publisher's slip is clipped; a warning only past the slack
    assert fit_box((0.0, 0.0, 40.0 + EDGE_SLACK, 30.0), (40, 30), "f:1") == ((0.0, 0.0, 40.0, 30.0), None)
    kept, warning = fit_box((0.0, 0.0, 45.0, 30.0), (40, 30), "f:2")
    assert kept == (0.0, 0.0, 40.0, 30.0) and warning.startswith("f:2: box (0, 0, 45, 30) exceeds its 40x30 image")
    assert fit_box((5.0, 5.0, 5.0, 9.0), (40, 30), "f:3")[0] is None


def test_an_unreadable_header_names_the_file(tmp_path):
    (tmp_path / "page.jpg").write_text("<html>not found</html>")
    with pytest.raises(DataError, match=r"page.jpg: not a readable image"):
        read_image_header(tmp_path / "page.jpg")
