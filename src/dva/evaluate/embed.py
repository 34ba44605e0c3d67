"""Batched embedding extraction: inference mode, DataLoader workers, unreadable files skipped.

A large gallery can be split into contiguous shards embedded by separate processes
(``shard=(i, n)``, e.g. one per GPU under torchrun); :meth:`Embeddings.concat` joins the
shards back into exactly what one process would have produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from dva.data.loaders import ImageDataset, ImageView, collate_images
from dva.data.records import ImageRecord
from dva.data.transforms import eval_transform
from dva.distributed import shard_bounds
from dva.models.retrieval import RetrievalModel
from dva.runtime import autocast, resolve_device


@dataclass
class Embeddings:
    #: ``(N, D)`` float32, L2-normalised, one row per image that decoded (4 * N * D bytes:
    #: 149 MB for NABirds' 48,562 images at D = 768).
    vectors: np.ndarray
    labels: np.ndarray
    #: Positions, in the input list, of the rows of ``vectors``.
    indices: np.ndarray
    #: ``(position, message)`` of the images that could not be decoded.
    failures: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """Join shards of one dataset, rows in position order; a position seen twice is an error."""
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        seen = np.concatenate([indices, [i for p in parts for i, _ in p.failures]]).astype(np.int64)
        if len(np.unique(seen)) != len(seen):
            raise ValueError("shards overlap: some positions were embedded twice")
        # Empty shards may not know the embedding width: their (0, 0) blocks are left out.
        vectors = [p.vectors for p in parts if len(p.indices)] or [parts[0].vectors]
        return cls(
            np.concatenate(vectors)[order],
            np.concatenate([p.labels for p in parts])[order],
            indices[order],
            sorted(f for p in parts for f in p.failures),
        )


def embedding_transform(model: RetrievalModel, img_size: int, resize_size: int | None = None):
    mean, std = model.normalization
    return eval_transform(img_size, mean, std, resize_size)


@torch.inference_mode()
def embed_dataset(
    model: RetrievalModel,
    dataset: ImageDataset,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = True,
    desc: str = "embedding",
    shard: tuple[int, int] | None = None,
) -> Embeddings:
    """Embed ``dataset`` (or, with ``shard=(i, n)``, its ``i``-th of ``n`` contiguous slices;
    ``indices`` stay positions in the whole ``dataset``)."""
    device = resolve_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    if shard is not None:
        dataset = Subset(dataset, range(*shard_bounds(len(dataset), *shard)))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    # One float32 (N, D) array filled in place: peak memory is the gallery itself (no list of
    # batches to concatenate). Rows of undecodable images are skipped, so the result is a
    # prefix of it, returned as a view.
    dim = model.embed_dim
    vectors = np.empty((len(dataset), dim), np.float32)
    labels = np.empty(len(dataset), np.int64)
    indices = np.empty(len(dataset), np.int64)
    failures: list[tuple[int, str]] = []
    filled = 0
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            failures.extend(batch.failures)
            n = len(batch.indices)
            if n:
                with autocast(device, precision):
                    out = model(batch.images.to(device, non_blocking=True))
                vectors[filled : filled + n] = out.float().cpu().numpy()
                labels[filled : filled + n] = batch.labels.numpy()
                indices[filled : filled + n] = batch.indices.numpy()
                filled += n
            bar.update(n + len(batch.failures))
    return Embeddings(vectors[:filled], labels[:filled], indices[:filled], failures)


def embed_records(
    model: RetrievalModel,
    records: Sequence[ImageRecord],
    *,
    img_size: int,
    resize_size: int | None = None,
    view: ImageView | None = None,
    **kwargs,
) -> Embeddings:
    """Embed ``records``; ``view`` replaces each decoded image first (e.g. OPA's discriminative view)."""
    dataset = ImageDataset.from_records(records, embedding_transform(model, img_size, resize_size), view)
    return embed_dataset(model, dataset, **kwargs)
