"""Weights on disk: safetensors files with a small, checked metadata header.

No pickle anywhere: a checkpoint is tensors plus string metadata, so loading one from a
stranger cannot run code. Every write is atomic (see :mod:`dva._io`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dva._io import atomic_write
from dva.errors import CheckpointError

FORMAT = "dva"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` with JSON-encoded ``metadata`` (values may be any JSON data)."""
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: _save_file(cpu, tmp, header))


def _save_file(tensors: dict[str, torch.Tensor], target: Path, header: dict[str, str]) -> None:
    try:
        save_file(tensors, str(target), metadata=header)
    except SafetensorError as e:  # a full disk, in safetensors' words: an OSError for atomic_write
        raise OSError(f"{e}") from e


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dva checkpoint (no 'format: {FORMAT}' in its metadata)")
    metadata = {k: json.loads(v) for k, v in header.items() if k != "format"}
    return tensors, metadata
