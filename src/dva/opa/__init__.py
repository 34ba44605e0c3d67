"""Object-Perceptual Adaptation (METHOD.md 3; paper Sec. 3.2.1): object views for training.

A detector finds each training image's main object once (``dva detect`` -> a box cache);
training then sees, besides the original image, a discriminative view (the object without
its background) and a background view (the background without its object, one extra class).
Nothing here is needed at inference: DPT moves what the views teach into the encoder.

::

    from dva.opa import create_detector, discriminative_view, background_view
    detector = create_detector("saliency")
    found = detector.detect(image, "bird")
    crop = discriminative_view(image, found.box, found.score)
"""

from dva.opa.boxes import BoxCache, BoxEntry, BoxFile, read_box_file
from dva.opa.detect import detect_boxes
from dva.opa.detectors import Detection, Detector, create_detector, list_detectors, register_detector
from dva.opa.views import background_view, discriminative_view

__all__ = [
    "BoxCache",
    "BoxEntry",
    "BoxFile",
    "Detection",
    "Detector",
    "background_view",
    "create_detector",
    "detect_boxes",
    "discriminative_view",
    "list_detectors",
    "read_box_file",
    "register_detector",
]
