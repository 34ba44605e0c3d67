"""OPA's view rule, written once: which views an image gets from its box (docs/opa.md, "The view rule").

Training (:class:`~dva.opa.training.ObjectViews`), test-time OPA
(:mod:`dva.opa.test_time`) and the contact sheet (:mod:`dva.opa.sheet`) all ask one frozen
:class:`ViewPolicy`, so what the sheet counts is what the training log counts:

1. an image the box file does not list (``no_box``), whose detector found nothing
   (``no_detection``) or whose box scores below ``min_score`` (``low_score``) is not trusted:
   the original image stands in for the discriminative view, and there is no background view;
2. a trusted box gives the discriminative view (:func:`~dva.opa.views.discriminative_view`);
3. and, unless background views are off, a background view
   (:func:`~dva.opa.views.background_view`), except when the box covers ``max_area`` of the
   image or more (``large_box``): only trusted boxes make background views, since a wrong box
   would put the object itself into the background class.

The defaults are :class:`dva.config.OPAConfig`'s (the paper's: 0.5, 1.1, 3:4, 0.5), not
restated here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dva.config import OPAConfig, default_of
from dva.geometry import Size, area_fraction
from dva.opa.box_files import path_key
from dva.opa.detectors.base import Detection
from dva.opa.views import background_view, discriminative_view
from dva.view_kinds import BACKGROUND, DISCRIMINATIVE, ORIGINAL


class _NotListed(enum.Enum):
    NOT_LISTED = "not listed"


#: What :meth:`ViewPolicy.lookup` gives for an image the box file does not list (None would
#: mean "listed, but the detector found nothing").
NOT_LISTED = _NotListed.NOT_LISTED
#: A box file's answer for one image.
Lookup = Detection | None | _NotListed

# Outcomes: what the policy makes of one image's box.
NO_BOX = "no_box"
NO_DETECTION = "no_detection"
LOW_SCORE = "low_score"
LARGE_BOX = "large_box"
#: A trusted box, all three views.
ALL_VIEWS = "background"
#: A trusted box, background views switched off (test time, or the dva option ``background=false``).
DISCRIMINATIVE_ONLY = "discriminative"
#: Outcomes counted as events in the training log (``metrics.jsonl`` "events"): every fallback.
EVENTS = (NO_BOX, NO_DETECTION, LOW_SCORE, LARGE_BOX)


@dataclass(frozen=True)
class ViewPolicy:
    """OPA's view rule and its settings; frozen and picklable, so DataLoader workers receive it."""

    #: Boxes scoring less are not trusted: the original image stands in for the object views.
    min_score: float = default_of(OPAConfig, "min_score")
    #: The box is scaled by this about its centre before cropping (the whole object in it).
    enlarge: float = default_of(OPAConfig, "enlarge")
    #: The discriminative crop is padded on its short side to at least ``short:long``.
    aspect: tuple[int, int] = default_of(OPAConfig, "aspect")
    #: No background view when the box covers this fraction of the image or more.
    max_area: float = default_of(OPAConfig, "max_area")
    #: False: no background views at all (test time; the ``dva`` option ``background=false``).
    background: bool = True

    @classmethod
    def from_config(cls, opa: OPAConfig, *, background: bool = True) -> ViewPolicy:
        short, long = opa.aspect  # a list when the config was read from JSON
        return cls(opa.min_score, opa.enlarge, (short, long), opa.max_area, background)

    @staticmethod
    def lookup(boxes: Mapping[Path, Detection | None], path: str | os.PathLike[str]) -> Lookup:
        """``path``'s detection in ``boxes`` (keyed by :func:`~dva.opa.box_files.path_key`), or :data:`NOT_LISTED`."""
        return boxes.get(path_key(path), NOT_LISTED)

    def trusts(self, found: Lookup) -> bool:
        return isinstance(found, Detection) and found.score >= self.min_score

    def needs_image_size(self, found: Lookup) -> bool:
        """Whether :meth:`outcome` needs the image size for ``found`` (only the area rule does)."""
        return self.background and self.trusts(found)

    def outcome(self, found: Lookup, image_size: Size | None = None) -> str:
        """The outcome for an image with ``found`` as its box, ``image_size`` ``(width, height)`` upright.

        The size is needed only for a trusted box with background views on (the area rule).
        """
        if found is NOT_LISTED:
            return NO_BOX
        if found is None:
            return NO_DETECTION
        if found.score < self.min_score:
            return LOW_SCORE
        if not self.background:
            return DISCRIMINATIVE_ONLY
        if image_size is None:
            raise ValueError("the area rule needs the image size: pass image_size=(width, height)")
        return LARGE_BOX if area_fraction(found.box, *image_size) >= self.max_area else ALL_VIEWS

    def views(self, image: Image.Image, found: Lookup) -> tuple[dict[str, Image.Image], str]:
        """``image``'s views by kind (original, discriminative, maybe background) and its outcome."""
        outcome = self.outcome(found, image.size)
        if not self.trusts(found):
            return {ORIGINAL: image, DISCRIMINATIVE: image}, outcome
        assert isinstance(found, Detection)
        views = {
            ORIGINAL: image,
            DISCRIMINATIVE: discriminative_view(image, found.box, enlarge=self.enlarge, aspect=self.aspect),
        }
        if outcome == ALL_VIEWS:
            views[BACKGROUND] = background_view(image, found.box)
        return views, outcome
