"""Sharded indexing: several processes embed one slice of the gallery each, one merge builds the index.

::

    torchrun --nproc-per-node 4 -m dva index --images G --out IDX --run RUN   # 4 shards, rank 0 merges
    dva index --images G --out IDX --run RUN --shard 0/4      # ... 1/4, 2/4, 3/4: e.g. a cluster job array
    dva index --images G --out IDX --run RUN --merge-shards   # then the same command merges them

Shard ``i`` of ``n`` embeds the ``i``-th contiguous slice (:func:`dva.distributed.shard_bounds`) of
the images the index lacks and writes their embeddings and positions, atomically, to
``IDX.shards/shard-0000i-of-0000n.safetensors``. The merge checks that all ``n`` shards are there,
made by the index's model for the same list of images, and that every position was embedded or
reported unreadable exactly once; it then builds (or grows) the index exactly as one process
would have: same rows, same order, same ids. The shard folder is removed after a merge.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dva.checkpoint import load_tensors, save_tensors
from dva.errors import ConfigError, DataError
from dva.evaluate.embed import Embeddings
from dva.index.build import IndexReport, build_index_dir, embed_items, pending_items
from dva.index.gallery import GalleryItem
from dva.index.model import IndexModel

_SHARD_FILE = re.compile(r"shard-(\d+)-of-(\d+)\.safetensors")


def shard_dir(out: str | Path) -> Path:
    """Where the shards of index ``out`` wait for their merge: beside it, so ``out`` stays a valid index."""
    out = Path(out)
    return out.parent / f"{out.name}.shards"


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``: the second of four shards."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def embed_shard(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    shard: tuple[int, int],
    model: IndexModel | None = None,
    **embed: Any,
) -> Path:
    """Embed shard ``(i, n)`` of the images index ``out`` lacks; return the shard file written."""
    todo, own = pending_items(out, items, model)
    embeddings, seconds = embed_items(own, todo, shard=shard, **embed)
    path = shard_dir(out) / f"shard-{shard[0]:05d}-of-{shard[1]:05d}.safetensors"
    tensors = {
        "vectors": torch.from_numpy(np.ascontiguousarray(embeddings.vectors)),
        "positions": torch.from_numpy(embeddings.indices),
    }
    metadata = {
        "shard": shard[0],
        "num_shards": shard[1],
        "images": len(todo),
        "images_digest": _digest(todo),
        "model": own.fingerprint(),
        "failures": embeddings.failures,
        "seconds": seconds,
    }
    return save_tensors(path, tensors, metadata)


def merge_shards(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None = None,
    index_type: str | None = None,
    approx_threshold: int | None = None,
) -> IndexReport:
    """Build or grow index ``out`` from the shard files of ``items`` (checked), then remove them."""
    directory = shard_dir(out)
    report = build_index_dir(
        out,
        items,
        model=model,
        index_type=index_type,
        approx_threshold=approx_threshold,
        embedder=lambda own, todo: read_shards(directory, own, todo),
    )
    shutil.rmtree(directory)
    return report


def index_gallery_distributed(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None = None,
    device: str = "auto",
    index_type: str | None = None,
    approx_threshold: int | None = None,
    **embed: Any,
) -> IndexReport | None:
    """:func:`dva.index.index_gallery` for a process of a ``torchrun`` launch.

    Every rank embeds its shard of the images index ``out`` lacks (one GPU each); after a
    barrier, rank 0 merges the shards into the index one process would have built and returns
    its report; the other ranks return None. Outside torchrun it runs as a world of one.
    """
    from dva.distributed import barrier, init_distributed
    from dva.runtime import resolve_device

    info, rank_device = init_distributed(resolve_device(device))
    embed_shard(out, items, shard=(info.rank, info.world_size), model=model, device=rank_device, **embed)
    barrier()  # every shard is written
    if not info.is_main:
        return None
    return merge_shards(out, items, model=model, index_type=index_type, approx_threshold=approx_threshold)


def read_shards(directory: Path, model: IndexModel, todo: Sequence[GalleryItem]) -> tuple[Embeddings, float]:
    """The embeddings of ``todo`` joined from ``directory``'s shards, and the slowest shard's seconds."""
    files = sorted(p for p in directory.glob("shard-*-of-*.safetensors") if _SHARD_FILE.fullmatch(p.name))
    if not files:
        raise DataError(f"{directory}: no shard files; embed them first with --shard I/N (or under torchrun)")
    splits = {int(_SHARD_FILE.fullmatch(p.name)[2]) for p in files}
    if len(splits) > 1:
        raise DataError(
            f"{directory}: shards of different splits ({', '.join(map(str, sorted(splits)))} "
            "shards) lie together; delete the stale ones"
        )
    num_shards = splits.pop()
    present = {int(_SHARD_FILE.fullmatch(p.name)[1]) for p in files}
    missing = sorted(set(range(num_shards)) - present)
    if missing:
        raise DataError(
            f"{directory}: shard(s) {', '.join(map(str, missing))} of {num_shards} missing; "
            f"embed them with --shard I/{num_shards}"
        )
    digest, fingerprint = _digest(todo), model.fingerprint()
    parts, seconds = [], 0.0
    for path in files:
        tensors, meta = load_tensors(path)
        if meta["model"] != fingerprint:
            raise DataError(f"{path}: embedded with another model than the index's; embed the shards again")
        if meta["images_digest"] != digest or meta["images"] != len(todo):
            raise DataError(
                f"{path}: embedded for another list of images ({meta['images']} to add, now "
                f"{len(todo)}): the gallery or the index changed since; embed the shards again"
            )
        positions = tensors["positions"].numpy()
        failures = [(int(i), str(message)) for i, message in meta["failures"]]
        parts.append(Embeddings(tensors["vectors"].numpy(), np.full(len(positions), -1), positions, failures))
        seconds = max(seconds, float(meta["seconds"]))
    try:
        embeddings = Embeddings.concat(parts)
    except ValueError as e:
        raise DataError(f"{directory}: {e}") from None
    covered = len(embeddings.indices) + len(embeddings.failures)
    if covered != len(todo):
        raise DataError(f"{directory}: the shards hold {covered} of the {len(todo)} images; embed them again")
    return embeddings, seconds


def _digest(items: Sequence[GalleryItem]) -> str:
    """Identifies the list of images to embed: shards of different lists must not be merged."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(str(item.path).encode() + b"\n")
    return digest.hexdigest()
