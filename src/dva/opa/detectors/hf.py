"""Open-vocabulary detectors from Hugging Face transformers: GroundingDINO (the paper's) and OWLv2.

Both go through transformers' zero-shot detection classes (``AutoProcessor`` +
``AutoModelForZeroShotObjectDetection``) and its own post-processing; boxes come back
normalised and are mapped to the original image here, explicitly, because the two models
normalise differently:

- GroundingDINO resizes the image keeping its aspect ratio: a box is relative to the image.
- OWLv2 pads the image to a square (bottom and right) before resizing: a box is relative to
  the padded square, so both axes scale by the longer side, and a box reaching into the
  padding is clipped to the image.

Weights come from the Hub (or any local folder saved with ``save_pretrained``); they are
needed only by ``dva detect`` / OPA training, never at inference.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from dva.data.records import ImageRecord
from dva.errors import ConfigError, MissingDependency
from dva.geometry import clip_box
from dva.opa.detectors.base import Detection, Detector, register_detector
from dva.runtime import resolve_device

GROUNDING_DINO_MODELS = {"tiny": "IDEA-Research/grounding-dino-tiny", "base": "IDEA-Research/grounding-dino-base"}
OWLV2_MODELS = {"base": "google/owlv2-base-patch16-ensemble", "large": "google/owlv2-large-patch14-ensemble"}


class _ZeroShotDetector(Detector):
    """Shared loading, inference and box selection; subclasses say how text goes in and boxes come out."""

    aliases: dict[str, str] = {}

    def __init__(self, model: str, box_threshold: float, device: str) -> None:
        self.model_id = self.aliases.get(model, model)
        self.box_threshold = box_threshold
        self.device = resolve_device(device)
        self.processor, self.model = _load(self.model_id, self.device)

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_id, "box_threshold": self.box_threshold}

    def detect(self, image: Image.Image, prompt: str, *, record: ImageRecord | None = None) -> Detection | None:
        inputs = self.processor(images=image, text=self.format_prompt(prompt), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        result = self.post_process(outputs, inputs)
        return self.best(result["scores"], result["boxes"], image.width, image.height)

    def format_prompt(self, prompt: str) -> Any:
        raise NotImplementedError

    def post_process(self, outputs: Any, inputs: Any) -> dict[str, torch.Tensor]:
        """transformers' post-processing, boxes left normalised (``target_sizes=None``)."""
        raise NotImplementedError

    def to_pixels(self, boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Normalised ``(x0, y0, x1, y1)`` -> pixels of the original image."""
        raise NotImplementedError

    def best(self, scores: torch.Tensor, boxes: torch.Tensor, width: int, height: int) -> Detection | None:
        """The highest-scoring box, clipped to the image (None when nothing passed the threshold)."""
        if not len(scores):
            return None
        i = int(scores.argmax())
        pixels = self.to_pixels(boxes[i : i + 1].float().cpu(), width, height)[0].tolist()
        try:
            box = clip_box(pixels, width, height)
        except ValueError:  # the box lies entirely outside the image
            return None
        return Detection(box, float(scores[i]))


@register_detector(
    "groundingdino", description="GroundingDINO via transformers (the paper's detector; tiny or base weights)"
)
class GroundingDINODetector(_ZeroShotDetector):
    """The prompt is lower-cased and ends with a period, as GroundingDINO was trained with."""

    aliases = GROUNDING_DINO_MODELS

    def __init__(
        self,
        *,
        model: str = GROUNDING_DINO_MODELS["tiny"],
        box_threshold: float = 0.25,
        text_threshold: float = 0.25,
        device: str = "auto",
    ) -> None:
        self.text_threshold = text_threshold
        super().__init__(model, box_threshold, device)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "text_threshold": self.text_threshold}

    def format_prompt(self, prompt: str) -> str:
        return grounding_prompt(prompt)

    def post_process(self, outputs: Any, inputs: Any) -> dict[str, torch.Tensor]:
        return self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold
        )[0]

    def to_pixels(self, boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype)


@register_detector(
    "owlv2", description="OWLv2 via transformers (open-vocabulary; its scores run lower than GroundingDINO's)"
)
class OWLv2Detector(_ZeroShotDetector):
    aliases = OWLV2_MODELS

    def __init__(self, *, model: str = OWLV2_MODELS["base"], box_threshold: float = 0.1, device: str = "auto") -> None:
        super().__init__(model, box_threshold, device)

    def format_prompt(self, prompt: str) -> list[list[str]]:
        return [[prompt.strip().rstrip(".").lower()]]

    def post_process(self, outputs: Any, inputs: Any) -> dict[str, torch.Tensor]:
        return self.processor.post_process_grounded_object_detection(outputs, threshold=self.box_threshold)[0]

    def to_pixels(self, boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return boxes * max(width, height)  # relative to the zero-padded square


def grounding_prompt(prompt: str) -> str:
    """GroundingDINO's text format: lower case, one space between words, ending with a period."""
    text = " ".join(prompt.lower().split()).rstrip(".").strip()
    if not text:
        raise ConfigError("the detector prompt is empty")
    return text + "."


def _load(model_id: str, device: torch.device) -> tuple[Any, torch.nn.Module]:
    try:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
    except ImportError:
        raise MissingDependency(
            "the groundingdino and owlv2 detectors need transformers: pip install 'dva[detect]'"
        ) from None
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(model_id)
    except OSError as e:
        raise ConfigError(
            f"cannot load detector weights {model_id!r} ({str(e).splitlines()[0]}); on a machine without the "
            "Hugging Face Hub, download them elsewhere (`hf download MODEL --local-dir DIR`) and pass --model DIR"
        ) from None
    return processor, model.to(device).eval()
