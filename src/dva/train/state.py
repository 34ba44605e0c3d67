"""Resumable training state as one safetensors file (no pickle).

The optimizer's ``state_dict`` is split into its tensors (moments, step counts) and its plain
data (param groups, hyper-parameters), which goes into the JSON metadata. One file written
atomically means a resume checkpoint is either the old one or the new one, never half of each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dva.checkpoint import load_tensors, save_tensors

OPTIM_PREFIX = "optimizer."
RNG_KEY = "rng.cpu"


@dataclass
class Position:
    """Where training stands: ``batch`` batches of ``epoch`` (0-based) are done."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    #: Running totals the epoch summary needs, so a mid-epoch resume reports the same numbers.
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    #: Distinct training images that failed to decode (the budget counts images, not epochs).
    decode_failures: int = 0
    events: dict[str, int] = field(default_factory=dict)
    #: Their failure messages (each names its file), so a resumed run knows them too.
    failed_images: list[str] = field(default_factory=list)


def save_training_state(
    path: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    position: Position,
    metadata: dict[str, Any],
) -> None:
    optim_tensors, optim_meta = _split_optimizer_state(optimizer.state_dict())
    tensors = {**trainable, **optim_tensors, RNG_KEY: torch.get_rng_state()}
    save_tensors(path, tensors, {**metadata, "position": asdict(position), "optimizer": optim_meta})


def load_training_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Position, dict[str, Any]]:
    """Return ``(trainable tensors, optimizer state_dict, position, metadata)``."""
    tensors, metadata = load_tensors(path)
    optim_tensors = {k: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}
    optimizer_state = _join_optimizer_state(optim_tensors, metadata.pop("optimizer"))
    position = Position(**metadata.pop("position"))
    if RNG_KEY in tensors:
        torch.set_rng_state(tensors[RNG_KEY])
    trainable = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX) and k != RNG_KEY}
    return trainable, optimizer_state, position, metadata


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIM_PREFIX}{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        param_id, key = name[len(OPTIM_PREFIX) :].split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
