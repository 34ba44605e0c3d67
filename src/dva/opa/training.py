"""OPA in training: the view maker the trainer uses for methods with ``uses_opa`` (docs/opa.md).

Every training image contributes its original (for L_dist), its discriminative view and,
when made, its background view (for L_proxy), as :class:`~dva.opa.policy.ViewPolicy` rules.
Images the box file lacks, and boxes not trusted, fall back to the original image and are
counted in the epoch log (``metrics.jsonl`` "events", :data:`~dva.opa.policy.EVENTS`), never
silently:

- ``no_box``: the image is not in the box file;
- ``no_detection``: the detector found nothing in it;
- ``low_score``: its box scored below ``opa.min_score``;
- ``large_box``: the box covers ``opa.max_area`` or more, so no background view.

Test-time OPA (``dva eval --opa-test``) is :mod:`dva.opa.test_time`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dva.config import RunConfig
from dva.data.loaders import Views
from dva.data.records import ImageRecord, SplitSide
from dva.errors import ConfigError
from dva.models.methods import dpt_options
from dva.opa.box_files import load_boxes
from dva.opa.detectors import Detection
from dva.opa.policy import EVENTS, ViewPolicy


@dataclass(frozen=True)
class ObjectViews:
    """The :data:`~dva.data.loaders.ViewMaker` of OPA: original + discriminative (+ background) views.

    A picklable dataclass rather than a closure, so DataLoader workers can receive it.
    """

    #: Checked detections by :func:`~dva.opa.box_files.path_key` (None: the detector found nothing).
    boxes: dict[Path, Detection | None]
    policy: ViewPolicy = field(default_factory=ViewPolicy)

    def __call__(self, image: Image.Image, record: ImageRecord) -> Views:
        images, outcome = self.policy.views(image, self.policy.lookup(self.boxes, record.path))
        return Views(images, (outcome,) if outcome in EVENTS else ())


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
    return ObjectViews(
        {path: entry.detection for path, entry in boxes.entries.items()},
        ViewPolicy.from_config(opa, background=_trains_background(config)),
    )


def _trains_background(config: RunConfig) -> bool:
    options = dpt_options(config.model)
    return options.background if options is not None else True


def _detect_training_boxes(config: RunConfig, train_side: SplitSide, progress: bool) -> None:
    from dva.opa.detect import detect_boxes
    from dva.opa.detectors import create_detector

    opa = config.opa
    if not opa.boxes:
        raise ConfigError("opa.detector needs opa.boxes, the file its boxes are cached in")
    detector = create_detector(opa.detector, **opa.detector_options)
    detect_boxes(
        detector,
        {"train": train_side},
        opa.boxes,
        dataset=config.data.dataset,
        root=config.data.root,
        prompt=opa.prompt,
        progress=progress,
    )
