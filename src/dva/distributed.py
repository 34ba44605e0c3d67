"""Several processes, one job: PyTorch's own distributed engine (``torchrun`` + ``torch.distributed``).

``torchrun --nproc-per-node N -m dva train ...`` starts N processes and gives each ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in its environment;
:func:`init_distributed` joins them into a process group (NCCL on GPUs, gloo on CPU). Without
those variables every helper here is a no-op, so single-process code runs unchanged.

Why the loss needs :func:`all_gather_rows`: Proxy-Anchor normalises by the proxies that have
positives *in the batch* and sums inside a log over the batch, so the loss of a global batch
is not the mean of per-rank losses. Each rank therefore gathers every rank's embeddings, with
their gradient, and computes the loss of the whole global batch (docs/method.md section 4).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_gather_single
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and reports; the others only compute."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> DistInfo:
    """The process group this process belongs to, if any."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun prepared (once per process) and choose this rank's device.

    On CUDA each rank takes GPU ``LOCAL_RANK`` whatever index ``device`` names: N processes
    on one GPU would only contend for it.
    """
    if not dist.is_initialized():
        if not launched_by_torchrun():
            return DistInfo(), device
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    info = current()
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return info, device


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``module``'s trainable parameters.

    DDP averages gradients over ranks. With the loss computed on the gathered global batch
    that average is exactly the single-process gradient: the backward of
    :func:`all_gather_rows` sums, on each rank, the identical gradients that all ``W`` ranks
    computed for its rows (a factor ``W``), and the average divides it out again.
    """
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), the other ranks then run it and find its result."""
    info = current()
    if info.enabled and not info.is_main:
        dist.barrier()
    yield
    if info.enabled and info.is_main:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank received Ctrl-C)."""
    if not current().enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_rows(tensor: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; rank ``r`` holds ``sizes[r]`` rows.

    Collectives need equal shapes, so rows are padded to ``max(sizes)`` and cut again. The
    gradient flows back to each rank's own rows, summed over the ranks' losses (see
    :func:`wrap_ddp`); a tensor that requires grad must do so on every rank, as every rank
    joins the backward collective.
    """
    if len(sizes) == 1:
        return tensor
    longest = max(sizes)
    pad = longest - tensor.shape[0]
    padded = torch.cat([tensor, tensor.new_zeros(pad, *tensor.shape[1:])]) if pad else tensor.contiguous()
    gathered = all_gather_single(padded, 0, dist.group.WORLD)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])


def shard_bounds(num_items: int, shard: int, num_shards: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` of shard ``shard`` of ``num_shards``.

    No overlap, no gap, sizes differ by at most 1.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return num_items * shard // num_shards, num_items * (shard + 1) // num_shards
