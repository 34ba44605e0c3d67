"""Search an index by image or by embedding: the one object behind ``dva search`` and ``dva serve``.

::

    searcher = dva.Searcher("gallery_index")
    for match in searcher.search("query.jpg", k=5):
        print(match.score, match.label, match.path)

The model is rebuilt from the config recorded in the index (adapters merged), images go
through the same evaluation transform as the gallery did, and scores are cosine
similarities (inner products of L2-normalised embeddings).

``filter=`` restricts a search to images whose label or metadata match
(:mod:`dva.index.filters`): ``searcher.search("q.jpg", k=5, filter=["label in A,B", "year>=2000"])``.
Filtered results are exact in what they keep: every match passes every filter, and k of them
come back whenever k images pass (with a vector database backend, the database applies the
filters inside its search: :mod:`dva.index.vectordb`). A subset of up to :data:`EXACT_SUBSET_MAX` images is
searched exactly (one matrix product); a larger one goes through the approximate index with
an id selector, and a query that finds fewer than k there is searched exactly.

:meth:`Searcher.refresh` follows ``dva index`` updates of the directory while the searcher
lives (``dva serve`` calls it): a new committed version is loaded beside the one in use and
swapped in as one reference, so a search sees one version from its first line to its last.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image

from dva.data.images import load_image, to_rgb
from dva.errors import ConfigError, DataError
from dva.evaluate.embed import embedding_transform
from dva.index.calibrate import Calibration, check_threshold, load_calibration
from dva.index.faiss_index import search_parameters, search_selected
from dva.index.filters import FilterLike, parse_filters
from dva.index.model import IndexModel
from dva.index.rerank import DEFAULT_ALPHA, DEFAULT_RERANK_K, check_rerank, database_augmentation, query_expansion
from dva.index.store import MANIFEST, GalleryIndex
from dva.index.vectordb import VectorBackend
from dva.runtime import autocast, resolve_device

ImageLike = str | os.PathLike | Image.Image
#: Filtered subsets up to this size are searched exactly: at 768 floats that is ~60 MFLOP a
#: query, a few milliseconds, and HNSW's graph search degrades when a filter keeps few images.
EXACT_SUBSET_MAX = 20_000


@dataclass(frozen=True)
class _Loaded:
    """One version of the index with everything derived from its gallery.

    Kept together so that :meth:`Searcher.refresh` swaps them as one reference: a search takes
    the reference once and so never mixes one version's positions with another's vectors,
    metadata, calibration or DBA gallery. The filter caches live on the :class:`GalleryIndex`
    itself, so they go with it.
    """

    index: GalleryIndex
    #: ``dva calibrate``'s decision rule, or None: then matches carry ``is_match=None``.
    calibration: Calibration | None
    #: DBA's augmented gallery, an exact FAISS index per ``(n, alpha)``, built on first use.
    dba: dict[tuple[int, float], faiss.Index] = field(default_factory=dict)


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
        return {
            "id": self.id,
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "metadata": self.metadata,
            "is_match": self.is_match,
        }


class Searcher:
    """Top-k cosine search over an index directory written by ``dva index``.

    Safe to share between threads (the web server does): inference runs under a lock, one
    batch at a time, and FAISS searches are read-only. ``backend``: search a vector database
    holding this index's images instead of the FAISS file (:mod:`dva.index.vectordb`).
    :meth:`refresh` loads a newer version of the index directory without reloading the model.
    """

    def __init__(
        self,
        index_dir: str | Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int = 32,
        backend: VectorBackend | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        index = GalleryIndex.load(index_dir)
        self.backend = backend
        if backend is not None and backend.embed_dim != index.embed_dim:
            raise DataError(
                f"{index_dir}: {index.embed_dim}-d embeddings, the vector database "
                f"{backend.describe()['address']} holds {backend.embed_dim}-d ones"
            )
        self.model_info = IndexModel.from_index(index_dir)
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.model = self.model_info.load_model(self.device)
        if self.model.embed_dim != index.embed_dim:
            raise DataError(
                f"{index_dir}: the recorded model gives {self.model.embed_dim}-d embeddings, "
                f"the index holds {index.embed_dim}-d ones"
            )
        self.transform = embedding_transform(self.model, self.model_info.img_size, self.model_info.resize_size)
        self._lock = threading.Lock()
        self._loaded = _Loaded(index, load_calibration(index))
        self._dba_lock = threading.Lock()
        #: One refresh at a time: two would both load the new version.
        self._refresh_lock = threading.Lock()

    @property
    def index(self) -> GalleryIndex:
        """The version in use; a search holds its own reference, so read it once per use."""
        return self._loaded.index

    @property
    def calibration(self) -> Calibration | None:
        """``dva calibrate``'s decision rule, or None: then matches carry ``is_match=None``."""
        return self._loaded.calibration

    def refresh(self) -> bool:
        """Load the version the index directory commits now, if it is not the one in use; True when swapped.

        ``dva index`` updates a directory in place while it is searched; this is how a living
        searcher (``dva serve``) follows it without a restart. The check reads ``manifest.json``
        only (the commit point, a few KB); FAISS and the shards are opened only for a new version.
        The new version is loaded beside the old one, then swapped in as one reference under
        the DBA lock: a search in progress finishes on the version it started with, the next one
        sees the new version, its calibration, and empty DBA and filter caches. The model is
        not reloaded: an update cannot change it (``dva index`` refuses another model), so a
        changed fingerprint means the folder was rebuilt with another model and is a
        ``DataError``. Any error (a manifest written by hand, a file an update removed during
        the load) leaves the version in use untouched.
        """
        with self._refresh_lock:
            current = self._loaded.index
            manifest = _read_manifest(self.index_dir)
            if _identity(manifest) == _identity(current.manifest):
                return False
            self._check_model(current.manifest, manifest)
            index = GalleryIndex.load(self.index_dir)
            self._check_model(current.manifest, index.manifest)  # an update may have committed meanwhile
            loaded = _Loaded(index, load_calibration(index))
            with self._dba_lock:
                self._loaded = loaded
            return True

    def _check_model(self, loaded: dict[str, Any], committed: dict[str, Any]) -> None:
        """The model fingerprints of two manifests agree (then so do the embedding size and space)."""
        had, has = loaded.get("model") or {}, committed.get("model") or {}
        if has.get("fingerprint") != had.get("fingerprint"):
            raise DataError(
                f"{self.index_dir}: the index now records another model ({has.get('source', 'unknown')}) "
                f"than the one this searcher loaded ({had.get('source', 'unknown')}); restart to search it"
            )

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

        ``options`` are those of :meth:`search_embeddings` (``filter``, ``rerank``, ``rerank_k``,
        ``alpha``, ``threshold``).
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
        filter: FilterLike | Sequence[FilterLike] | None = None,  # noqa: A002 - the API's word for it
    ) -> list[list[Match]]:
        """Top-``k`` of each row of ``embeddings`` (``(n, D)``).

        ``rerank="aqe"`` expands each query with its ``rerank_k`` nearest gallery images
        (alpha-QE), ``"dba"`` searches the gallery with every vector augmented by its
        neighbours (DBA, computed on first use and cached); :mod:`dva.index.rerank`. The order
        then follows the re-ranked similarity, while ``score`` stays the plain cosine to the
        query, so it and ``is_match`` keep their meaning (scores may then not decrease).
        ``threshold`` overrides the calibrated one for ``is_match``. ``filter`` (a
        :class:`~dva.index.filters.Filter`, a string such as ``"label=Cardinal"``, or a list of
        them, ANDed) keeps only matching images; re-ranking then runs within them as well.
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
        loaded = self._loaded  # once: a refresh during this search does not mix two versions
        index = loaded.index
        if rerank is not None and self.backend is not None:
            raise ConfigError("re-ranking needs the index's own embeddings: not with a vector database backend")
        cut = loaded.calibration.threshold if loaded.calibration is not None else None
        if threshold is not None:
            cut = check_threshold(threshold)
        filters = parse_filters(filter)
        queries = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if self.backend is not None:  # filters go to the database: the top k among the images they keep
            hits = self.backend.search(queries, k, filters)
            return [[_to_match(i, row, s, cut) for i, s, row in row_hits] for row_hits in hits]
        if not len(index):  # every image was removed
            index.db.check_fields(filters)
            return [[] for _ in queries]
        if filters:
            allowed = index.select(filters)
            if not len(allowed):
                return [[] for _ in queries]
            scores, ids = self._filtered_search(index, queries, min(k, len(allowed)), allowed, rerank, rerank_k, alpha)
        elif rerank is None:
            scores, ids = index.faiss_index.search(queries, min(k, len(index)))
        else:
            ids = self._reranked_ids(loaded, queries, min(k, len(index)), rerank, rerank_k, alpha)
            scores = _cosines(index, queries, ids)
        return [
            [_match_at(index, i, s, cut) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)
        ]

    def _filtered_search(
        self,
        index: GalleryIndex,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray,
        rerank: str | None,
        rerank_k: int,
        alpha: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, positions)`` of the top-``k`` among the positions ``allowed`` (sorted)."""
        if rerank is not None:  # re-ranking within the subset: its neighbours are subset images too
            subset, flat = self._subset_index(index, allowed)
            local = self._reranked_local(queries, k, subset, flat, rerank, rerank_k, alpha)
            positions = np.where(local >= 0, allowed[np.maximum(local, 0)], -1)
            return _cosines(index, queries, positions), positions
        if len(allowed) <= EXACT_SUBSET_MAX and not index.spec.exact:
            return self._exact_on(index, queries, k, allowed)
        # A flat index with a selector is exact and copies nothing; HNSW/IVF visit kept images only.
        params = search_parameters(index.spec, index.selector(allowed))
        scores, positions = search_selected(index.faiss_index, queries, k, params)
        short = (positions < 0).any(axis=1)
        if short.any():  # the graph or the probed cells held fewer than k: search those exactly
            scores[short], positions[short] = self._exact_on(index, np.ascontiguousarray(queries[short]), k, allowed)
        return scores, positions

    def _exact_on(
        self, index: GalleryIndex, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        _, flat = self._subset_index(index, allowed)
        scores, local = flat.search(queries, k)
        return scores, allowed[local]

    def _subset_index(self, index: GalleryIndex, allowed: np.ndarray) -> tuple[np.ndarray, faiss.Index]:
        subset = np.ascontiguousarray(index.embeddings[allowed], dtype=np.float32)
        flat = faiss.IndexFlatIP(self.embed_dim)
        flat.add(subset)
        return subset, flat

    def _reranked_local(
        self, queries: np.ndarray, k: int, subset: np.ndarray, flat: faiss.Index, rerank: str, n: int, alpha: float
    ) -> np.ndarray:
        if rerank == "aqe":
            return flat.search(query_expansion(queries, subset, flat, n=n, alpha=alpha), k)[1]
        augmented = faiss.IndexFlatIP(self.embed_dim)
        augmented.add(database_augmentation(subset, flat, n=n, alpha=alpha))
        return augmented.search(queries, k)[1]

    def _reranked_ids(
        self, loaded: _Loaded, queries: np.ndarray, k: int, rerank: str, n: int, alpha: float
    ) -> np.ndarray:
        index = loaded.index
        if rerank == "aqe":
            expanded = query_expansion(queries, index.embeddings, index.faiss_index, n=n, alpha=alpha)
            return index.faiss_index.search(expanded, k)[1]
        key = (int(n), float(alpha))
        with self._dba_lock:  # the cache of the version this search holds: a refresh brings an empty one
            if key not in loaded.dba:
                augmented = database_augmentation(index.embeddings, index.faiss_index, n=n, alpha=alpha)
                flat = faiss.IndexFlatIP(self.embed_dim)
                flat.add(augmented)
                loaded.dba[key] = flat
            dba = loaded.dba[key]
        return dba.search(queries, k)[1]

    def match(self, image_id: int, score: float = float("nan"), threshold: float | None = None) -> Match:
        """The :class:`Match` of image ``image_id``; ``KeyError`` when the index has no such image."""
        if self.backend is None:
            index = self.index
            return _match_at(index, index.position(image_id), score, threshold)
        row = self.backend.get(image_id)
        if row is None:
            raise KeyError(f"no image {image_id} in {self.backend.describe()['factory']}")
        return _to_match(image_id, row, score, threshold)

    def has_image(self, image_id: int) -> bool:
        try:
            self.match(image_id)
        except KeyError:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        """What the index holds and how it searches (``GET /healthz``, ``dva search --json``)."""
        loaded = self._loaded  # one version's numbers, even during a refresh
        index = loaded.index
        return {
            "images": len(index) if self.backend is None else len(self.backend),
            "embed_dim": self.embed_dim,
            "version": index.version,
            "model": {k: v for k, v in index.manifest["model"].items() if k != "fingerprint"},
            "index": index.manifest["index"] if self.backend is None else self.backend.describe(),
            "calibration": None if loaded.calibration is None else loaded.calibration.to_dict(),
        }


def _cosines(index: GalleryIndex, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
    vectors = index.embeddings[np.maximum(positions, 0).ravel()].reshape(*positions.shape, -1)
    return np.einsum("qd,qkd->qk", queries, vectors)


def _match_at(index: GalleryIndex, position: int, score: float = float("nan"), threshold: float | None = None) -> Match:
    return _to_match(int(index.ids[position]), index.rows[position], score, threshold)


def _read_manifest(index_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of ``index_dir``, checked only as far as :meth:`Searcher.refresh` relies on it."""
    path = index_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), int):
        raise DataError(f"{path}: not a dva index manifest (no integer version)")
    return manifest


def _identity(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """What tells two committed versions apart: the version, and the creation time for a folder
    deleted and built again from version 1."""
    return manifest.get("version"), manifest.get("created")


def _to_match(image_id: int, row: dict[str, Any], score: float, threshold: float | None) -> Match:
    metadata = {key: value for key, value in row.items() if key not in ("path", "label")} if len(row) > 2 else {}
    return Match(
        image_id,
        row["path"],
        row.get("label"),
        score,
        metadata,
        None if threshold is None else bool(score >= threshold),
    )


def _as_image(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_image(image, shrink=True)
