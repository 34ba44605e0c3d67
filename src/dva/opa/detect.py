"""Run a detector over a split's images once, into a resumable box cache (``dva detect``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from dva.data.images import ImageDecodeError, load_image
from dva.data.records import SplitSide
from dva.data.registry import get_dataset
from dva.errors import ConfigError
from dva.opa.box_files import BoxCache
from dva.opa.detectors import CLASS_PLACEHOLDER, Detector, prompt_text

#: The split sides ``dva detect`` can be asked for (FGVC-Aircraft's reader has its own, other sides).
DETECTABLE_SIDES = ("train", "test")


def default_prompt(dataset: str) -> str:
    """The dataset's meta-category ("bird", "car", ...): class-agnostic, so usable on test images."""
    return get_dataset(dataset).meta_category


def detect_boxes(
    detector: Detector,
    sides: Mapping[str, SplitSide],
    out: str | os.PathLike[str],
    *,
    dataset: str,
    root: str | os.PathLike[str],
    prompt: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Detect the images of ``sides`` (``{"train": split.train, ...}``) that ``out`` lacks; append their boxes.

    ``prompt`` is a template: ``"{class}"`` prompts each image with its class name (the
    paper's choice for training images), anything else is used as it is; default: the
    dataset's meta-category. Test images are never prompted with their class: a retrieval
    system does not know it. Returns counts for the report.
    """
    unknown = sorted(set(sides) - set(DETECTABLE_SIDES))
    if unknown:
        raise ConfigError(f"unknown side(s) {', '.join(unknown)}; choose from {', '.join(DETECTABLE_SIDES)}")
    template = prompt or default_prompt(dataset)
    if detector.uses_prompt and "test" in sides and CLASS_PLACEHOLDER in template:
        raise ConfigError(
            f"prompt {template!r} would give the detector each test image's class name, which retrieval does "
            f"not know at test time; use a meta-category such as {default_prompt(dataset)!r}"
        )
    cache = BoxCache.open(
        out,
        detector=detector.name,
        settings=detector.settings(),
        prompt=template if detector.uses_prompt else None,
        dataset=dataset,
        root=root,
    )
    items = [(record, side.class_names[record.label]) for side in sides.values() for record in side.records]
    missing = [item for item in items if item[0].path not in cache]
    todo = missing[:limit] if limit is not None else missing
    found = failed = 0
    start = time.perf_counter()
    for record, class_name in tqdm(todo, desc=f"detecting ({detector.name})", unit="img", disable=not progress):
        try:
            image = load_image(record.path)
        except ImageDecodeError as e:  # not cached: it is tried again next time
            print(f"warning: skipped {e}", file=sys.stderr)
            failed += 1
            continue
        detection = detector.detect(image, prompt_text(template, class_name), record=record)
        cache.add(record.path, detection, image.size)
        found += detection is not None
    seconds = time.perf_counter() - start
    detected = len(todo) - failed
    return {
        "out": str(cache.path),
        "detector": detector.name,
        "settings": detector.settings(),
        "prompt": template if detector.uses_prompt else None,
        "images": len(items),
        "already_cached": len(items) - len(missing),
        "detected_now": detected,
        "with_box": found,
        "without_box": detected - found,
        "decode_failures": failed,
        "seconds_per_image": round(seconds / detected, 4) if detected else None,
    }
