"""The box cache (resume, refusal of other settings, interrupted writes) and box-file checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dva.data import load_catalog, make_split
from dva.data.records import ImageRecord
from dva.errors import ConfigError, DataError
from dva.opa import Detection, Detector, detect_boxes, read_box_file
from dva.opa.box_files import load_boxes


class CountingDetector(Detector):
    """A detector that boxes the image's left half and remembers every prompt it was given."""

    name = "counting"

    def __init__(self, setting: int = 1) -> None:
        self.setting = setting
        self.prompts: list[str] = []

    def settings(self):
        return {"setting": self.setting}

    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        self.prompts.append(prompt)
        return Detection((0.0, 0.0, image.width / 2, float(image.height)), 0.75)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def split(cub_root):
    return make_split(load_catalog("cub", cub_root.root), "open")


def test_cache_records_the_detector_and_resumes_where_it_stopped(cub_root, split, tmp_path):
    out = tmp_path / "boxes.jsonl"
    first = CountingDetector()
    report = detect_boxes(
        first, {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=5, progress=False
    )
    assert report["detected_now"] == 5 and report["images"] == 24
    header, *records = lines(out)
    assert header["detector"] == "counting" and header["settings"] == {"setting": 1} and header["prompt"] == "bird"
    assert records[0] == {
        "path": "images/001.Species_0/0000.jpg",
        "box": [0.0, 0.0, 20.0, 40.0],
        "score": 0.75,
        "size": [40, 40],
    }

    second = CountingDetector()
    report = detect_boxes(second, {"train": split.train}, out, dataset="cub", root=cub_root.root, progress=False)
    assert report["already_cached"] == 5 and report["detected_now"] == 19 and len(second.prompts) == 19
    _, *records = lines(out)
    assert len({r["path"] for r in records}) == len(records) == 24
    again = detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, progress=False
    )
    assert again["detected_now"] == 0 and len(lines(out)) == 25


def test_cache_from_other_settings_is_refused_and_left_intact(cub_root, split, tmp_path):
    out = tmp_path / "boxes.jsonl"
    detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=2, progress=False
    )
    before = out.read_bytes()
    refused = r"made by another detector or settings \(settings: file has \{'setting': 1\}"
    with pytest.raises(ConfigError, match=refused):
        detect_boxes(
            CountingDetector(setting=2), {"train": split.train}, out, dataset="cub", root=cub_root.root, progress=False
        )
    with pytest.raises(ConfigError, match="prompt: file has 'bird', asked 'a bird'"):
        detect_boxes(
            CountingDetector(),
            {"train": split.train},
            out,
            dataset="cub",
            root=cub_root.root,
            prompt="a bird",
            progress=False,
        )
    assert out.read_bytes() == before


def test_a_line_cut_off_by_an_interruption_is_detected_again(cub_root, split, tmp_path):
    out = tmp_path / "boxes.jsonl"
    detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=3, progress=False
    )
    with open(out, "a") as f:
        f.write('{"path": "images/001.Species_0/0006.jp')  # the crash happened mid-line
    assert read_box_file(out).truncated and len(read_box_file(out)) == 3
    report = detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, progress=False
    )
    assert report["detected_now"] == 21 and len(lines(out)) == 25  # every line parses


def test_a_hand_edited_last_line_without_newline_is_kept_apart(cub_root, split, tmp_path):
    out = tmp_path / "boxes.jsonl"
    detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=2, progress=False
    )
    out.write_text(out.read_text().rstrip("\n"))
    detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=1, progress=False
    )
    assert len(lines(out)) == 4


def test_class_name_prompts_for_training_but_never_for_test_images(cub_root, split, tmp_path):
    detector = CountingDetector()
    detect_boxes(
        detector,
        {"train": split.train},
        tmp_path / "a.jsonl",
        dataset="cub",
        root=cub_root.root,
        prompt="a photo of a {class}",
        limit=1,
        progress=False,
    )
    assert detector.prompts == ["a photo of a species 0"]
    with pytest.raises(ConfigError, match="class name.*not know at test time"):
        detect_boxes(
            detector,
            {"train": split.train, "test": split.test},
            tmp_path / "b.jsonl",
            dataset="cub",
            root=cub_root.root,
            prompt="{class}",
            progress=False,
        )


def write(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_box_files_naming_missing_images_are_refused(cub_root, split, tmp_path):
    boxes = write(
        tmp_path / "b.jsonl",
        {"path": "images/001.Species_0/0000.jpg", "box": [1, 1, 9, 9]},
        {"path": "images/nope/0001.jpg", "box": [1, 1, 9, 9]},
    )
    message = r"(?s)1 of its 2 images do not exist.*b.jsonl:2: .*nope/0001.jpg does not exist"
    with pytest.raises(DataError, match=message):
        load_boxes(boxes, split.train.records, root=str(cub_root.root), dataset="cub")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"path": "images/001.Species_0/0000.jpg", "box": [1, 1, 9, 9]}\n{"format": "dva-boxes", "version": 1}\n',
            r"b.jsonl:2: unexpected header",
        ),
        (
            '{"path": "images/001.Species_0/0000.jpg", "box": [1, 1, 9, 9]}\n[1, 2, 3, 4]\n',
            r"b.jsonl:2: expected a JSON object",
        ),
        ('{"path": "images/001.Species_0/0000.jpg", "box": [1, 1, 9, 9]}\n{"path": \n', r"b.jsonl:2: not valid JSON"),
    ],
)
def test_malformed_box_file_lines_are_refused_naming_the_line(cub_root, split, tmp_path, text, message):
    boxes = tmp_path / "b.jsonl"
    boxes.write_text(text)
    with pytest.raises(DataError, match=message):
        load_boxes(boxes, split.train.records, root=str(cub_root.root), dataset="cub")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"box": [0, 0, 50, 20]}, r"b.jsonl:1: box \[0.0, 0.0, 50.0, 20.0\] lies outside the 40x40 image"),
        ({"box": [5, 5, 5, 20]}, r"b.jsonl:1: box \[5.0, 5.0, 5.0, 20.0\] has zero area"),
        ({"box": [1, 1, 9, 9], "size": [80, 80]}, r"b.jsonl:1: boxes were found in a 80x80 image .* stale"),
        ({"box": [1, 1, 9, 9], "score": 3}, r"b.jsonl:1: score 3.0 is not in \[0, 1\]"),
        ({"x0": 1, "y0": 1, "x1": 9}, r"b.jsonl:1: needs \"box\" or x0, y0, x1, y1 \(missing y1\)"),
    ],
)
def test_bad_boxes_are_refused_naming_file_and_line(cub_root, split, tmp_path, row, message):
    boxes = write(tmp_path / "b.jsonl", {"path": "images/001.Species_0/0000.jpg", **row})
    with pytest.raises(DataError, match=message):
        load_boxes(boxes, split.train.records, root=str(cub_root.root), dataset="cub")


def test_user_csv_without_header_or_scores_and_boxes_slightly_outside(cub_root, split, tmp_path):
    boxes = tmp_path / "user.csv"
    boxes.write_text("images/001.Species_0/0000.jpg,-0.5,2,40.6,30\nimages/001.Species_0/0002.jpg,1,2,3,4,0.2\n")
    loaded = load_boxes(boxes, split.train.records, root=str(cub_root.root), dataset="cub")
    assert loaded.get(split.train.records[0].path).box == (0.0, 2.0, 40.0, 30.0)
    assert loaded.get(split.train.records[0].path).score == 1.0  # no score: a box the user vouches for
    assert len(loaded) == 2


def test_box_file_for_another_dataset_or_split_is_refused(cub_root, split, tmp_path):
    out = tmp_path / "boxes.jsonl"
    detect_boxes(
        CountingDetector(), {"train": split.train}, out, dataset="cub", root=cub_root.root, limit=2, progress=False
    )
    with pytest.raises(ConfigError, match="detected on dataset 'cub', not 'cub100'"):
        load_boxes(out, split.train.records, root=str(cub_root.root), dataset="cub100")
    with pytest.raises(DataError, match="boxes for none of the 24 images.*--include-test"):
        load_boxes(out, split.test.records, root=str(cub_root.root), dataset="cub")
