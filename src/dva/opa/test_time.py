"""OPA at test time (``dva eval --opa-test``, the paper's "Base + ICA + OPA" row of Table 8).

The test images are replaced by their discriminative views, by the same
:class:`~dva.opa.policy.ViewPolicy` as training with background views off: untrusted or
missing boxes keep the original image, and the counts of each outcome are reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dva.config import RunConfig
from dva.data.records import SplitSide
from dva.opa.box_files import load_boxes
from dva.opa.detectors import Detection
from dva.opa.policy import ViewPolicy
from dva.view_kinds import DISCRIMINATIVE


@dataclass(frozen=True)
class DiscriminativeViews:
    """``(image, path) -> view``: the test-time OPA of ``dva eval --opa-test``."""

    boxes: dict[Path, Detection | None]
    policy: ViewPolicy = field(default_factory=lambda: ViewPolicy(background=False))

    def __call__(self, image: Image.Image, path: Path) -> Image.Image:
        images, _ = self.policy.views(image, self.policy.lookup(self.boxes, path))
        return images[DISCRIMINATIVE]


def discriminative_views(
    path: str | Path, side: SplitSide, config: RunConfig, *, root: str, dataset: str
) -> tuple[DiscriminativeViews, dict[str, int]]:
    """The test-time view function for ``side`` and what it will do (counts of each outcome:
    ``discriminative``, ``no_box``, ``no_detection``, ``low_score``)."""
    boxes = load_boxes(path, side.records, root=root, dataset=dataset, what="test")
    detections = {p: e.detection for p, e in boxes.entries.items()}
    policy = ViewPolicy.from_config(config.opa, background=False)
    counts = Counter(policy.outcome(policy.lookup(detections, r.path)) for r in side.records)
    return DiscriminativeViews(detections, policy), dict(counts)
