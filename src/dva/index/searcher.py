"""Search an index by image or by embedding: the one object behind ``dva search`` and ``dva serve``.

::

    searcher = dva.Searcher("gallery_index")
    for match in searcher.search("query.jpg", k=5):
        print(match.score, match.label, match.path)

The model is rebuilt from the config recorded in the index (adapters merged), images go
through the same evaluation transform as the gallery did, and scores are cosine
similarities (inner products of L2-normalised embeddings).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np
import torch
from PIL import Image

from dva.data.images import load_image, to_rgb
from dva.errors import ConfigError, DataError
from dva.evaluate.embed import embedding_transform
from dva.index.calibrate import check_threshold, load_calibration
from dva.index.model import IndexModel
from dva.index.rerank import DEFAULT_ALPHA, DEFAULT_RERANK_K, check_rerank, database_augmentation, query_expansion
from dva.index.store import GalleryIndex
from dva.index.vectordb import VectorBackend
from dva.runtime import autocast, resolve_device

ImageLike = Union[str, os.PathLike, Image.Image]


@dataclass(frozen=True, slots=True)
class Match:
    """One gallery image returned for a query."""

    id: int
    path: str
    label: str | None
    #: Cosine similarity to the query, in [-1, 1].
    score: float
    #: The extra fields the gallery list gave this image.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: ``score >= threshold`` of the index's calibration (``dva calibrate``); None without one.
    is_match: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "label": self.label, "score": self.score, "metadata": self.metadata,
                "is_match": self.is_match}


class Searcher:
    """Top-k cosine search over an index directory written by ``dva index``.

    Safe to share between threads (the web server does): inference runs under a lock, one
    batch at a time, and FAISS searches are read-only. ``backend``: search a vector database
    holding this index's images instead of the FAISS file (:mod:`dva.index.vectordb`).
    """

    def __init__(
        self, index_dir: str | Path, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 32,
        backend: VectorBackend | None = None,
    ) -> None:
        self.index = GalleryIndex.load(index_dir)
        self.backend = backend
        if backend is not None and backend.embed_dim != self.index.embed_dim:
            raise DataError(f"{index_dir}: {self.index.embed_dim}-d embeddings, the vector database "
                            f"{backend.describe()['address']} holds {backend.embed_dim}-d ones")
        self.model_info = IndexModel.from_index(index_dir)
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.model = self.model_info.load_model(self.device)
        if self.model.embed_dim != self.index.embed_dim:
            raise DataError(
                f"{index_dir}: the recorded model gives {self.model.embed_dim}-d embeddings, "
                f"the index holds {self.index.embed_dim}-d ones"
            )
        self.transform = embedding_transform(self.model, self.model_info.img_size, self.model_info.resize_size)
        self._lock = threading.Lock()
        #: ``dva calibrate``'s decision rule, or None: then matches carry ``is_match=None``.
        self.calibration = load_calibration(self.index)
        #: DBA's augmented gallery, an exact FAISS index per ``(n, alpha)``, built on first use.
        self._dba: dict[tuple[int, float], faiss.Index] = {}
        self._dba_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index) if self.backend is None else len(self.backend)

    @property
    def embed_dim(self) -> int:
        return self.index.embed_dim

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """``(len(images), D)`` L2-normalised embeddings; paths that cannot be read raise ``DataError``."""
        tensors = [self.transform(_as_image(image)) for image in images]
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(tensors), self.batch_size):
                batch = torch.stack(tensors[start : start + self.batch_size]).to(self.device)
                with autocast(self.device, self.precision):
                    out.append(self.model(batch).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    def search(self, image: ImageLike, k: int = 10, **options: Any) -> list[Match]:
        """The ``k`` gallery images most similar to ``image`` (a path or a PIL image), best first.

        ``options`` are those of :meth:`search_embeddings` (``rerank``, ``rerank_k``, ``alpha``,
        ``threshold``).
        """
        return self.search_batch([image], k, **options)[0]

    def search_batch(self, images: Sequence[ImageLike], k: int = 10, **options: Any) -> list[list[Match]]:
        return self.search_embeddings(self.embed(images), k, **options)

    def search_embedding(self, embedding: Sequence[float] | np.ndarray, k: int = 10, **options: Any) -> list[Match]:
        """Search with a ``D``-vector (normalised here, so any positive scaling gives the same result)."""
        with np.errstate(over="ignore"):  # above float32's range is infinite, and refused below
            vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim != 1:
            raise DataError(f"an embedding is a vector of {self.embed_dim} numbers, got shape {vector.shape}")
        return self.search_embeddings(vector[None], k, **options)[0]

    def search_embeddings(
        self,
        embeddings: np.ndarray,
        k: int = 10,
        *,
        rerank: str | None = None,
        rerank_k: int = DEFAULT_RERANK_K,
        alpha: float = DEFAULT_ALPHA,
        threshold: float | None = None,
    ) -> list[list[Match]]:
        """Top-``k`` of each row of ``embeddings`` (``(n, D)``).

        ``rerank="aqe"`` expands each query with its ``rerank_k`` nearest gallery images
        (alpha-QE), ``"dba"`` searches the gallery with every vector augmented by its
        neighbours (DBA, computed on first use and cached); :mod:`dva.index.rerank`. The order
        then follows the re-ranked similarity, while ``score`` stays the plain cosine to the
        query, so it and ``is_match`` keep their meaning (scores may then not decrease).
        ``threshold`` overrides the calibrated one for ``is_match``.
        """
        # Few numpy calls: with HNSW a query takes well under a millisecond, so per-call
        # overhead here is what separates this from raw FAISS (bench/speed.py measures it).
        with np.errstate(over="ignore"):
            vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.embed_dim:
            raise DataError(f"embeddings must have shape (n, {self.embed_dim}), got {vectors.shape}")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        if not np.isfinite(vectors).all():
            raise DataError("embeddings contain NaN or infinite values")
        peaks = np.abs(vectors).max(axis=1, keepdims=True)
        if not peaks.all():
            raise DataError("an embedding of all zeros has no direction to search")
        vectors = vectors / peaks  # entries in [-1, 1]: the norm of a finite 1e38 vector cannot overflow
        check_rerank(rerank, rerank_k, alpha)
        if rerank is not None and self.backend is not None:
            raise ConfigError("re-ranking needs the index's own embeddings: not with a vector database backend")
        cut = self.calibration.threshold if self.calibration is not None else None
        if threshold is not None:
            cut = check_threshold(threshold)
        queries = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if self.backend is not None:
            return [[_to_match(i, row, s, cut) for i, s, row in hits] for hits in self.backend.search(queries, k)]
        if rerank is None:
            scores, ids = self.index.faiss_index.search(queries, min(k, len(self)))
        else:
            ids = self._reranked_ids(queries, min(k, len(self)), rerank, rerank_k, alpha)
            scores = np.einsum("qd,qkd->qk", queries, self.index.embeddings[np.maximum(ids, 0).ravel()].reshape(
                *ids.shape, -1))
        return [
            [self.match(i, s, cut) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]

    def _reranked_ids(self, queries: np.ndarray, k: int, rerank: str, n: int, alpha: float) -> np.ndarray:
        if rerank == "aqe":
            expanded = query_expansion(queries, self.index.embeddings, self.index.faiss_index, n=n, alpha=alpha)
            return self.index.faiss_index.search(expanded, k)[1]
        key = (int(n), float(alpha))
        with self._dba_lock:
            if key not in self._dba:
                augmented = database_augmentation(self.index.embeddings, self.index.faiss_index, n=n, alpha=alpha)
                flat = faiss.IndexFlatIP(self.embed_dim)
                flat.add(augmented)
                self._dba[key] = flat
            dba = self._dba[key]
        return dba.search(queries, k)[1]

    def match(self, image_id: int, score: float = float("nan"), threshold: float | None = None) -> Match:
        """Image ``image_id`` as a match; IndexError when the index does not hold it."""
        if self.backend is None:
            return _to_match(image_id, self.index.rows[image_id], score, threshold)
        row = self.backend.get(image_id)
        if row is None:
            raise IndexError(f"no image {image_id} in {self.backend.describe()['factory']}")
        return _to_match(image_id, row, score, threshold)

    def describe(self) -> dict[str, Any]:
        """What the index holds and how it searches (``GET /healthz``, ``dva search --json``)."""
        return {
            "images": len(self),
            "embed_dim": self.embed_dim,
            "version": self.index.version,
            "model": {k: v for k, v in self.index.manifest["model"].items() if k != "fingerprint"},
            "index": self.index.manifest["index"] if self.backend is None else self.backend.describe(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }


def _to_match(image_id: int, row: dict[str, Any], score: float, threshold: float | None) -> Match:
    metadata = {key: value for key, value in row.items() if key not in ("path", "label")} if len(row) > 2 else {}
    return Match(image_id, row["path"], row.get("label"), score, metadata,
                 None if threshold is None else bool(score >= threshold))


def _as_image(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_image(image, shrink=True)
