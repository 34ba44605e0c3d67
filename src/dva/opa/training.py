"""OPA in training and, for the ablation, at test time.

Training (METHOD.md 3-4): every training image contributes its original (for L_dist), its
discriminative view and, when made, its background view (for L_proxy); the trainer calls
:func:`object_view_maker` for methods with ``uses_opa``. Images the box file lacks, and boxes
not trusted, fall back to the original image and are counted in the epoch log
(``metrics.jsonl`` "events"), never silently:

- ``no_box``: the image is not in the box file;
- ``no_detection``: the detector found nothing in it;
- ``low_score``: its box scored below ``opa.min_score``;
- ``large_box``: the box covers ``opa.max_area`` or more, so no background view.

At test time (``dva eval --opa-test``, the paper's "Base + ICA + OPA" row of Table 8) the
test images are replaced by their discriminative views: :func:`discriminative_views`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dva.config import RunConfig
from dva.data.loaders import Views
from dva.data.records import ImageRecord, SplitSide
from dva.errors import ConfigError, DataError
from dva.losses.dpt import BACKGROUND, DISCRIMINATIVE, ORIGINAL
from dva.models.methods import dpt_options
from dva.opa.boxes import BoxFile, check_box_file, path_key, read_box_file
from dva.opa.detectors import Detection
from dva.opa.views import background_view, discriminative_view

NO_BOX = "no_box"
NO_DETECTION = "no_detection"
LOW_SCORE = "low_score"
LARGE_BOX = "large_box"


@dataclass(frozen=True)
class ObjectViews:
    """The :data:`~dva.data.loaders.ViewMaker` of OPA: original + discriminative (+ background) views.

    A picklable dataclass rather than a closure, so DataLoader workers can receive it.
    """

    #: Checked detections by :func:`~dva.opa.boxes.path_key` (None: the detector found nothing).
    boxes: dict[Path, Detection | None]
    min_score: float = 0.5
    enlarge: float = 1.1
    aspect: tuple[int, int] = (3, 4)
    max_area: float = 0.5
    #: False: no background views at all (the ``dva`` option ``background=false``).
    background: bool = True

    def __call__(self, image: Image.Image, record: ImageRecord) -> Views:
        key = path_key(record.path)
        if key not in self.boxes:
            return Views({ORIGINAL: image, DISCRIMINATIVE: image}, (NO_BOX,))
        detection = self.boxes[key]
        if detection is None or detection.score < self.min_score:
            return Views({ORIGINAL: image, DISCRIMINATIVE: image}, (NO_DETECTION if detection is None else LOW_SCORE,))
        images = {
            ORIGINAL: image,
            DISCRIMINATIVE: discriminative_view(
                image, detection.box, detection.score,
                min_score=self.min_score, enlarge=self.enlarge, aspect=self.aspect,
            ),
        }
        # Background views use trusted boxes only: a wrong box would put the object itself
        # into the background class.
        if not self.background:
            return Views(images)
        background = background_view(image, detection.box, max_area=self.max_area)
        if background is None:
            return Views(images, (LARGE_BOX,))
        images[BACKGROUND] = background
        return Views(images)


def object_view_maker(config: RunConfig, train_side: SplitSide, *, progress: bool = True) -> ObjectViews:
    """OPA's views for ``train_side``, from ``config.opa.boxes`` (detected first if ``opa.detector`` is set)."""
    opa = config.opa
    if opa.detector:
        _detect_training_boxes(config, train_side, progress)
    elif not opa.boxes:
        raise ConfigError(
            f"method {config.model.method!r} trains on object views and needs boxes: pass --boxes FILE "
            "(made by `dva detect`) or --detector NAME to detect them first; --method ica trains without"
        )
    boxes = load_boxes(opa.boxes, train_side.records, root=config.data.root, dataset=config.data.dataset)
    _report(boxes, train_side.records, "training")
    return ObjectViews(
        {path: entry.detection for path, entry in boxes.entries.items()},
        min_score=opa.min_score,
        enlarge=opa.enlarge,
        aspect=tuple(opa.aspect),
        max_area=opa.max_area,
        background=_trains_background(config),
    )


def _trains_background(config: RunConfig) -> bool:
    options = dpt_options(config.model)
    return options.background if options is not None else True


def load_boxes(path: str | Path, records: Sequence[ImageRecord], *, root: str, dataset: str) -> BoxFile:
    """Read a box file for ``records`` and check it: existing images, boxes that fit, the right dataset.

    The returned file holds only the entries of ``records``, each clipped to its image.
    """
    boxes = read_box_file(path, root=root)
    if boxes.header is not None and boxes.header.get("dataset") not in (None, dataset):
        raise ConfigError(f"{boxes.path}: boxes were detected on dataset {boxes.header['dataset']!r}, not {dataset!r}")
    if boxes.truncated:
        print(f"warning: {boxes.path}: ignored its last line, cut off by an interrupted write", file=sys.stderr)
    checked = check_box_file(boxes, [r.path for r in records])
    if not checked:
        raise DataError(
            f"{boxes.path}: has boxes for none of the {len(records)} images asked for (first: {records[0].path}); "
            "was it made for another split or --data root? (`dva detect --include-test` adds the test images)"
        )
    return BoxFile(boxes.path, boxes.header, checked)


def _report(boxes: BoxFile, records: Sequence[ImageRecord], what: str) -> None:
    missing = [r.path for r in records if r.path not in boxes]
    if missing:
        print(
            f"warning: {boxes.path}: no box for {len(missing)} of {len(records)} {what} images (first: {missing[0]}); "
            f"they use the original image and are counted as {NO_BOX!r}",
            file=sys.stderr,
        )


def _detect_training_boxes(config: RunConfig, train_side: SplitSide, progress: bool) -> None:
    from dva.opa.detect import detect_boxes
    from dva.opa.detectors import create_detector

    opa = config.opa
    if not opa.boxes:
        raise ConfigError("opa.detector needs opa.boxes, the file its boxes are cached in")
    detector = create_detector(opa.detector, **opa.detector_options)
    detect_boxes(
        detector, {"train": train_side}, opa.boxes, dataset=config.data.dataset, root=config.data.root,
        prompt=opa.prompt, progress=progress,
    )


@dataclass(frozen=True)
class DiscriminativeViews:
    """``(image, path) -> view``: the test-time OPA of ``dva eval --opa-test``."""

    boxes: dict[Path, Detection | None]
    min_score: float = 0.5
    enlarge: float = 1.1
    aspect: tuple[int, int] = (3, 4)

    def __call__(self, image: Image.Image, path: Path) -> Image.Image:
        detection = self.boxes.get(path_key(path))
        if detection is None:
            return image
        return discriminative_view(
            image, detection.box, detection.score, min_score=self.min_score, enlarge=self.enlarge, aspect=self.aspect
        )


def discriminative_views(
    path: str | Path, side: SplitSide, config: RunConfig, *, root: str, dataset: str
) -> tuple[DiscriminativeViews, dict[str, int]]:
    """The test-time view function for ``side`` and what it will do (counts of each fallback)."""
    boxes = load_boxes(path, side.records, root=root, dataset=dataset)
    _report(boxes, side.records, "test")
    detections = {p: e.detection for p, e in boxes.entries.items()}
    counts = Counter(
        NO_BOX if r.path not in boxes
        else NO_DETECTION if boxes.get(r.path).box is None
        else LOW_SCORE if boxes.get(r.path).score < config.opa.min_score
        else "discriminative"
        for r in side.records
    )
    views = DiscriminativeViews(detections, config.opa.min_score, config.opa.enlarge, tuple(config.opa.aspect))
    return views, dict(counts)
