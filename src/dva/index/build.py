"""``dva index``: embed a gallery and write (or grow) an index directory.

Building is incremental: images whose path is already in the index are not embedded
again, new ones are appended (ids of old images never change), and the FAISS index is
extended, or rebuilt from the stored embeddings when the gallery has grown into another
index type. Unreadable images are skipped and reported, never fatal, unless nothing at all
could be read. The embedding step can also be split over processes (:mod:`dva.index.shards`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dva import __version__
from dva._io import partial_dir
from dva.data.loaders import ImageDataset
from dva.distributed import shard_bounds
from dva.errors import ConfigError, DataError
from dva.evaluate.embed import Embeddings, embed_dataset, embedding_transform
from dva.index.faiss_index import DEFAULT_APPROX_THRESHOLD, build_index, plan_index, recall_vs_exact
from dva.index.gallery import GalleryItem, split_storable
from dva.index.model import IndexModel
from dva.index.store import GalleryIndex, is_index_dir, remove_stale_files, update_lock, write_version

#: Recall of approximate indexes is measured at build time for the manifest, like ``--check``.
RECALL_K = 10

#: The embedding step: ``(model, images to add) -> (embeddings, seconds)``.
Embedder = Callable[[IndexModel, Sequence[GalleryItem]], tuple[Embeddings, float]]


@dataclass
class IndexReport:
    """What one ``dva index`` did."""

    path: str
    version: int
    count: int
    added: int
    already_indexed: int
    #: ``(path, reason)`` of every image that could not be read; they are not in the index.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    embed_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_gallery(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None = None,
    index_type: str | None = None,
    approx_threshold: int | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> IndexReport:
    """Create the index ``out`` from ``items``, or add the new ones to the index already there.

    ``model`` is required for a new index; for an existing one the index's own model is used,
    and a different ``model`` is refused (its embeddings would not be comparable).
    ``index_type`` (auto, flat, hnsw, ivf) and ``approx_threshold`` default to the index's
    recorded settings, else to auto and :data:`DEFAULT_APPROX_THRESHOLD`.
    """
    embed = dict(batch_size=batch_size, num_workers=num_workers, device=device, precision=precision, progress=progress)
    return build_index_dir(
        out, items, model=model, index_type=index_type, approx_threshold=approx_threshold,
        embedder=lambda own, todo: embed_items(own, todo, **embed),
    )


def build_index_dir(
    out: str | Path,
    items: Sequence[GalleryItem],
    *,
    model: IndexModel | None,
    index_type: str | None,
    approx_threshold: int | None,
    embedder: Embedder,
) -> IndexReport:
    """:func:`index_gallery` with the embedding step given (the merge of sharded embeddings gives its own)."""
    out = Path(out)
    items, skipped = split_storable(items)
    if is_index_dir(out):
        with update_lock(out):
            report = _update(out, items, model, index_type, approx_threshold, embedder)
    else:
        _check_new_index(out, model)
        report = _create(
            out, items, model, index_type or "auto", approx_threshold or DEFAULT_APPROX_THRESHOLD, embedder, skipped
        )
    report.unreadable = skipped + report.unreadable
    return report


def pending_items(
    out: str | Path, items: Sequence[GalleryItem], model: IndexModel | None
) -> tuple[list[GalleryItem], IndexModel]:
    """The images an index run would embed into ``out`` (those it lacks), and the model that embeds them."""
    out = Path(out)
    items, _ = split_storable(items)  # as build_index_dir does: shard positions must agree
    if is_index_dir(out):
        index = GalleryIndex.load(out)
        return _new_items(index, items), _own_model(out, index, model)
    _check_new_index(out, model)
    return list(items), model


def _check_new_index(out: Path, model: IndexModel | None) -> None:
    if model is None:
        raise ConfigError(f"{out} is not an index yet: say which model embeds it (--run RUN_DIR or --frozen --backbone NAME)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not a dva index (no manifest.json); choose a new or empty folder")


def _own_model(out: Path, index: GalleryIndex, model: IndexModel | None) -> IndexModel:
    """The index's recorded model; another ``model`` would give incomparable embeddings."""
    if model is not None and model.fingerprint() != index.manifest["model"]["fingerprint"]:
        raise ConfigError(
            f"{out} was built with {index.manifest['model']['source']}; {model.source} gives other embeddings. "
            "Add images without --run/--frozen (the index's own model is used) or build a new index"
        )
    return IndexModel.from_index(out)


def _new_items(index: GalleryIndex, items: Sequence[GalleryItem]) -> list[GalleryItem]:
    return [item for item in items if str(item.path) not in index.ids_by_path]


def _create(
    out: Path,
    items: Sequence[GalleryItem],
    model: IndexModel,
    index_type: str,
    threshold: int,
    embedder: Embedder,
    skipped: Sequence[tuple[str, str]] = (),
) -> IndexReport:
    start = time.perf_counter()
    plan_index(0, index_type=index_type, approx_threshold=threshold)  # validate options before embedding
    # Built beside the target and renamed into place: a crash leaves no half-written index,
    # and the folder a killed run left is removed here.
    with partial_dir(out) as partial:
        model.save(partial)
        embeddings, seconds = embedder(model, items)
        if not len(embeddings.vectors):
            failures = [reason for _, reason in skipped] + [reason for _, reason in embeddings.failures]
            first = failures[0] if failures else "the gallery is empty"
            raise DataError(f"no image of the gallery could be read (first: {first})")
        rows = [_row(items[i]) for i in embeddings.indices]
        manifest = {
            "version": 1,
            "dva_version": __version__,
            "embed_dim": int(embeddings.vectors.shape[1]),
            "model": {**model.describe(), "fingerprint": model.fingerprint()},
            "settings": {"index_type": index_type, "approx_threshold": threshold},
        }
        manifest = _write(partial, manifest, embeddings.vectors, rows, None)
        try:
            if out.exists():
                out.rmdir()  # empty, checked above
            os.rename(partial, out)
        except OSError as e:
            raise ConfigError(f"{out}: could not move the new index into place ({e}); was it created meanwhile?") from None
    return IndexReport(
        str(out), 1, len(rows), len(rows), 0, _unreadable(items, embeddings), manifest["index"],
        seconds, time.perf_counter() - start,
    )


def _update(
    out: Path,
    items: Sequence[GalleryItem],
    model: IndexModel | None,
    index_type: str | None,
    threshold: int | None,
    embedder: Embedder,
) -> IndexReport:
    start = time.perf_counter()
    index = GalleryIndex.load(out)
    remove_stale_files(out, keep=set(index.manifest["files"].values()))  # what killed or failed runs left
    own = _own_model(out, index, model)
    settings = {
        "index_type": index_type or index.manifest["settings"]["index_type"],
        "approx_threshold": threshold or index.manifest["settings"]["approx_threshold"],
    }
    new = _new_items(index, items)
    embeddings, seconds = embedder(own, new)
    vectors = np.concatenate([np.asarray(index.embeddings), embeddings.vectors.reshape(-1, index.embed_dim)])
    rows = index.rows + [_row(new[i]) for i in embeddings.indices]
    unchanged = not len(embeddings.vectors) and settings == index.manifest["settings"]
    manifest = index.manifest
    if not unchanged:
        manifest = {**index.manifest, "version": index.version + 1, "settings": settings}
        manifest = _write(out, manifest, vectors, rows, index)
    return IndexReport(
        str(out), manifest["version"], len(rows), len(embeddings.vectors), len(items) - len(new),
        _unreadable(new, embeddings), manifest["index"], seconds, time.perf_counter() - start,
    )


def _write(
    path: Path, manifest: dict, vectors: np.ndarray, rows: list[dict], previous: GalleryIndex | None
) -> dict[str, Any]:
    """Choose the FAISS index for the new size, extend or rebuild it, measure recall, commit."""
    settings = manifest["settings"]
    spec = plan_index(len(vectors), index_type=settings["index_type"], approx_threshold=settings["approx_threshold"])
    if previous is not None and previous.spec == spec:
        faiss_index = previous.faiss_index
        faiss_index.add(np.ascontiguousarray(vectors[len(previous) :]))
    else:
        faiss_index = build_index(spec, vectors)
    recall = 1.0 if spec.exact else recall_vs_exact(faiss_index, vectors, k=RECALL_K)
    manifest = {**manifest, "index": {**spec.to_dict(), f"recall@{RECALL_K}": recall}}
    return write_version(path, manifest, vectors, rows, faiss_index)


def embed_items(
    model: IndexModel, items: Sequence[GalleryItem], *, shard: tuple[int, int] | None = None, **embed: Any
) -> tuple[Embeddings, float]:
    """Embed ``items`` (or shard ``(i, n)`` of them; positions stay those in ``items``), timed."""
    start = time.perf_counter()
    first, stop = shard_bounds(len(items), *shard) if shard else (0, len(items))
    if first == stop:  # nothing to embed: do not pay for building the model
        return Embeddings(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)), 0.0
    net = model.load_model()
    dataset = ImageDataset(
        [item.path for item in items], embedding_transform(net, model.img_size, model.resize_size)
    )
    embeddings = embed_dataset(net, dataset, desc="indexing", shard=shard, **embed)
    return embeddings, time.perf_counter() - start


def _row(item: GalleryItem) -> dict[str, Any]:
    return {"path": str(item.path), "label": item.label, **item.metadata}


def _unreadable(items: Sequence[GalleryItem], embeddings: Embeddings) -> list[tuple[str, str]]:
    return [(str(items[i].path), message) for i, message in embeddings.failures]
