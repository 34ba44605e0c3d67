"""Object finders for OPA, chosen by name: groundingdino, owlv2, dataset, boxes, saliency."""

from dva.opa.detectors.base import (
    CLASS_PLACEHOLDER,
    Detection,
    Detector,
    create_detector,
    detector_options,
    get_detector_info,
    list_detectors,
    prompt_text,
    register_detector,
)

__all__ = [
    "CLASS_PLACEHOLDER",
    "Detection",
    "Detector",
    "create_detector",
    "detector_options",
    "get_detector_info",
    "list_detectors",
    "prompt_text",
    "register_detector",
]
