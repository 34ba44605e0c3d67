"""Object-Perceptual Adaptation (docs/opa.md; paper Sec. 3.2.1): object views for training.

A detector finds each training image's main object once (``dva detect`` -> a box cache);
training then sees, besides the original image, a discriminative view (the object without
its background) and a background view (the background without its object, one extra class).
Nothing here is needed at inference: DPT moves what the views teach into the encoder.

Where things live: :mod:`~dva.opa.policy` (the view rule and its settings),
:mod:`~dva.opa.views` (the two views as pure image functions), :mod:`~dva.opa.box_files`
(box caches and users' box files), :mod:`~dva.opa.training` (the training view maker),
:mod:`~dva.opa.test_time` (``dva eval --opa-test``), :mod:`~dva.opa.sheet` (``dva views``),
:mod:`~dva.opa.detect` (``dva detect``); box geometry is :mod:`dva.geometry`.

::

    from dva.opa import ViewPolicy, create_detector
    detector = create_detector("saliency")
    found = detector.detect(image, "bird")
    views, outcome = ViewPolicy().views(image, found)  # views["discriminative"], maybe views["background"]
"""

from dva.opa.box_files import BoxCache, BoxEntry, BoxFile, load_boxes, read_box_file
from dva.opa.detect import detect_boxes
from dva.opa.detectors import Detection, Detector, create_detector, list_detectors, register_detector
from dva.opa.policy import ViewPolicy
from dva.opa.views import background_view, discriminative_view

__all__ = [
    "BoxCache",
    "BoxEntry",
    "BoxFile",
    "Detection",
    "Detector",
    "ViewPolicy",
    "background_view",
    "create_detector",
    "detect_boxes",
    "discriminative_view",
    "list_detectors",
    "load_boxes",
    "read_box_file",
    "register_detector",
]
