"""``dva export``: a trained run as a plain timm model, loadable without dva.

The adapters are merged into the frozen weights (PEFT's ``merge_and_unload``; for ICA
:func:`dva.models.ica.unload_ica`), so the result is an ordinary timm Vision Transformer with
the frozen model's inference cost. The folder follows timm's own Hub layout, written by timm's
``save_for_hf``::

    OUT/
      model.safetensors   the timm state dict (num_classes=0, global_pool="token")
      config.json         architecture, model_args (img_size, ...), pretrained_cfg with the
                          evaluation preprocessing (mean, std, crop_pct, squash resize), and a
                          "dva" section: the run it came from, the method, how to read the output
      model.onnx          (--onnx) images -> L2-normalised embeddings

and loads with timm alone::

    model = timm.create_model("local-dir:OUT", pretrained=True)
    # or: timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", img_size=S)
    #     + model.load_state_dict(safetensors.torch.load_file("OUT/model.safetensors"))
    embedding = torch.nn.functional.normalize(model(images), dim=-1)   # = the run's embedding
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import save_for_hf
from torch import nn

from dva import __version__
from dva._io import file_mode, partial_dir
from dva.data.transforms import default_resize
from dva.errors import ConfigError, MissingDependency
from dva.models.backbone import OFFLINE_BACKBONES
from dva.models.ica import unload_ica
from dva.models.methods import get_method
from dva.models.retrieval import RetrievalModel
from dva.runs import Run

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ONNX = "model.onnx"


def export_run(run_dir: str | Path, out: str | Path, *, weights: str | Path | None = None, onnx: bool = False) -> Path:
    """Write run ``run_dir`` (its ``model.safetensors``, or ``weights``) to ``out`` as a plain timm model."""
    run, out = Run(run_dir), Path(out)
    config = run.config
    method = get_method(config.model.method)
    if not method.mergeable:
        raise ConfigError(
            f"{run.path}: method {method.name!r} adds modules that cannot be merged into the backbone's weights, "
            "so it has no plain timm form; use the run itself (dva index / dva serve, dva.Run)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; choose a new folder")
    model = run.load_model(weights)
    backbone = plain_backbone(model, architecture(config.model.backbone), config.model.img_size)
    mean, std = model.normalization
    img_size = config.model.img_size
    resize = config.data.resize_size or default_resize(img_size)
    data_config = {
        "input_size": (3, img_size, img_size),
        "crop_pct": img_size / resize,
        "crop_mode": "squash",  # resize to resize x resize, then center crop (dva.data.transforms)
        "interpolation": "bilinear",
        "mean": tuple(mean),
        "std": tuple(std),
    }
    provenance = {
        "run": str(run.path.resolve()),
        "weights": str(Path(weights).resolve()) if weights else str(run.weights_path.resolve()),
        "backbone": config.model.backbone,
        "method": config.model.method,
        "dva_version": __version__,
        "embedding": "L2-normalise the model's output (the CLS token after the final norm)",
        "resize_size": resize,
    }
    # Written beside the target and renamed into place: a crash leaves no half-written export.
    with partial_dir(out) as partial:
        save_for_hf(
            backbone, str(partial), model_config={"dva": provenance}, data_config=data_config, safe_serialization=True
        )
        if onnx:
            export_onnx(backbone, partial / ONNX, img_size)
        for path in partial.iterdir():
            os.chmod(path, file_mode())  # some writers create 0600 files; an export is meant to be shared
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(partial, out)
    return out


def architecture(backbone: str) -> str:
    """The timm architecture a backbone name builds (offline weights name their architecture)."""
    offline = OFFLINE_BACKBONES.get(backbone)
    return offline.architecture if offline else timm.models.split_model_name_tag(backbone)[0]


def plain_backbone(model: RetrievalModel, arch: str, img_size: int) -> nn.Module:
    """The backbone with its adapters merged away, checked to be exactly what timm builds."""
    if not isinstance(model.head, nn.Identity):
        raise ConfigError(f"the model has a {type(model.head).__name__} head on the embedding, which timm cannot build")
    backbone = unload_ica(model.backbone)
    with torch.device("meta"):  # shapes only, no memory and no initialisation cost
        reference = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", img_size=img_size)
    ours, theirs = backbone.state_dict(), reference.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        extra = sorted(set(ours) - set(theirs))[:3]
        raise ConfigError(f"the adapted backbone is not a plain {arch} (extra weights: {extra}); it cannot be exported")
    return backbone


class _Embedder(nn.Module):
    """What ONNX users want: images in, L2-normalised embeddings out."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images), dim=-1)


def export_onnx(backbone: nn.Module, path: Path, img_size: int) -> None:
    """``images (N, 3, S, S)`` normalised as config.json says -> ``embeddings (N, D)``, L2-normalised."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter is built on it)
    except ImportError:
        raise MissingDependency("--onnx needs onnxscript (torch's ONNX exporter): pip install 'dva[export]'") from None
    example = torch.zeros(2, 3, img_size, img_size)  # batch 2: torch.export would fix a batch of 1 as a constant
    torch.onnx.export(
        _Embedder(backbone).eval(),
        (example,),
        str(path),
        dynamo=True,
        verbose=False,
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,  # one file (ONNX's 2 GB limit is above ViT-L's weights)
    )
