"""FAISS indexes over L2-normalised embeddings, where inner product is cosine similarity.

Exact search (``IndexFlatIP``) costs one matrix product per query and is the default: at
100k images of 768 floats a query takes milliseconds. Past a size threshold the index
becomes approximate, chosen by size as FAISS's own guidelines suggest: HNSW (no training,
incremental adds) up to ten times the threshold, IVF (a k-means coarse quantizer with
``nlist`` of about ``4 * sqrt(N)`` cells, of which ``nprobe`` are visited) beyond. Every
parameter is recorded in the index manifest, and :func:`recall_vs_exact` measures what
the approximation costs against exact search on the stored embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from dva.errors import ConfigError

#: Galleries with at least this many images get an approximate index (``--approx-threshold``).
DEFAULT_APPROX_THRESHOLD = 100_000
#: From ``threshold * IVF_FACTOR`` images on, IVF replaces HNSW (HNSW's build time grows too much).
IVF_FACTOR = 10
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
#: k-means wants about 39 training points per cell; more than 256 per cell adds nothing.
IVF_MIN_POINTS_PER_CELL = 39
IVF_MAX_POINTS_PER_CELL = 256


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index, with the parameters that decide its speed and recall."""

    type: str
    params: dict[str, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.type == "flat"

    @property
    def factory_string(self) -> str:
        """The ``faiss.index_factory`` description of this index."""
        if self.type == "flat":
            return "Flat"
        if self.type == "hnsw":
            return f"HNSW{self.params['M']},Flat"
        return f"IVF{self.params['nlist']},Flat"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "factory": self.factory_string, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IndexSpec:
        return cls(raw["type"], dict(raw.get("params", {})))


def plan_index(
    num_vectors: int, *, index_type: str = "auto", approx_threshold: int = DEFAULT_APPROX_THRESHOLD
) -> IndexSpec:
    """Choose the index for a gallery of ``num_vectors`` images (``index_type`` forces one)."""
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"index type: choose from {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if approx_threshold < 1:
        raise ConfigError(f"approx threshold must be at least 1, got {approx_threshold}")
    if index_type == "auto":
        if num_vectors < approx_threshold:
            index_type = "flat"
        else:
            index_type = "hnsw" if num_vectors < approx_threshold * IVF_FACTOR else "ivf"
    if index_type == "flat":
        return IndexSpec("flat")
    if index_type == "hnsw":
        return IndexSpec("hnsw", {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH})
    # A power of two near 4*sqrt(N) keeps the plan stable as a gallery grows, so incremental
    # adds reuse the trained quantizer until the size changes enough to retrain.
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(num_vectors), 1)))
    while nlist > 1 and nlist * IVF_MIN_POINTS_PER_CELL > num_vectors:
        nlist //= 2
    return IndexSpec("ivf", {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 32))})


def build_index(spec: IndexSpec, vectors: np.ndarray, *, ids: np.ndarray | None = None, seed: int = 0) -> faiss.Index:
    """A FAISS index of ``spec`` holding ``vectors`` with ids ``0..N-1`` (their positions), or
    with ``ids`` (an ``IDMap2`` around it: the snapshots of :mod:`dva.index.store`)."""
    vectors = _as_matrix(vectors)
    prefix = "IDMap2," if ids is not None else ""
    index = faiss.index_factory(vectors.shape[1], prefix + spec.factory_string, faiss.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        faiss.downcast_index(_inner(index)).hnsw.efConstruction = spec.params["ef_construction"]
    if spec.type == "ivf":
        nlist = spec.params["nlist"]
        if len(vectors) < nlist:
            raise ConfigError(f"an IVF index with {nlist} cells needs at least {nlist} images, got {len(vectors)}")
        sample = len(vectors)
        if sample > nlist * IVF_MAX_POINTS_PER_CELL:
            sample = nlist * IVF_MAX_POINTS_PER_CELL
        rows = np.random.default_rng(seed).choice(len(vectors), sample, replace=False)
        index.train(vectors[np.sort(rows)])
    if ids is None:
        index.add(vectors)
    else:
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    apply_search_params(index, spec)
    return index


def ids_to_positions(snapshot: faiss.Index, ids: np.ndarray, vectors: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """Bring a snapshot (labels = image ids, taken at an older version) up to date, labelled by
    position: remove the vectors of ids no longer in ``ids``, relabel, add the missing ones.

    ``ids`` are the sorted ids of the current version, ``vectors`` their vectors. Costs the
    snapshot's difference from now, which :data:`dva.index.store.SNAPSHOT_SLACK` bounds.
    """
    # No downcast_index here: a second wrapper of the same object would let the first one,
    # the owner, free it. faiss.read_index already returns the most derived class.
    if not isinstance(snapshot, faiss.IndexIDMap2):
        raise ValueError("a snapshot is an IDMap2 index")
    labels = faiss.vector_to_array(snapshot.id_map)
    positions = np.searchsorted(ids, labels)
    live = (
        (positions < len(ids)) & (ids[np.minimum(positions, max(len(ids) - 1, 0))] == labels)
        if len(ids)
        else np.zeros(len(labels), bool)
    )
    if not live.all():
        if spec.type == "hnsw":  # HNSW cannot delete (writers re-snapshot it instead): rebuild here
            return build_index(spec, vectors, ids=np.arange(len(ids)))
        snapshot.remove_ids(faiss.IDSelectorBatch(labels[~live]))
        labels, positions = labels[live], positions[live]
    faiss.copy_array_to_vector(positions.astype(np.int64), snapshot.id_map)
    missing = np.setdiff1d(np.arange(len(ids)), positions, assume_unique=True)
    if len(missing):
        snapshot.add_with_ids(np.ascontiguousarray(vectors[missing]), missing.astype(np.int64))
    snapshot.construct_rev_map()
    return snapshot


def search_parameters(spec: IndexSpec, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters that keep only ``selector``'s labels, with the spec's own knobs."""
    if spec.type == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=spec.params["ef_search"])
    if spec.type == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=spec.params["nprobe"])
    return faiss.SearchParameters(sel=selector)


def search_selected(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k, params=params)``, through the SWIG method itself.

    ``faiss.contrib.torch_utils`` (imported by pytorch-metric-learning) replaces
    ``Index.search`` for every index with a version that has no ``params``; ``search_c`` is
    the untouched C++ call both versions wrap.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty((len(queries), k), dtype=np.float32)
    labels = np.empty((len(queries), k), dtype=np.int64)
    index.search_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(labels), params)
    return scores, labels


def _inner(index: faiss.Index) -> faiss.Index:
    """The index an ``IDMap``/``IDMap2`` wraps (or ``index`` itself); ``index`` must outlive it."""
    return faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index


def apply_search_params(index: faiss.Index, spec: IndexSpec) -> None:
    """Set the query-time knobs (``efSearch``, ``nprobe``) recorded in ``spec``."""
    if spec.type == "hnsw":
        _inner(index).hnsw.efSearch = spec.params["ef_search"]
    elif spec.type == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.params["nprobe"]


def recall_vs_exact(
    index: faiss.Index,
    vectors: np.ndarray,
    *,
    k: int = 10,
    num_queries: int = 1000,
    seed: int = 0,
    ids: np.ndarray | None = None,
) -> float:
    """Mean fraction of the exact top-``k`` that ``index`` also returns, over stored vectors as queries.

    ``index`` labels vector ``i`` as ``ids[i]`` when given (a snapshot), else as ``i``."""
    vectors = _as_matrix(vectors)
    if len(vectors) == 0:
        return 1.0
    k = min(k, len(vectors))
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), min(num_queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    if ids is not None:
        truth = np.asarray(ids)[truth]
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True))
    return hits / (len(queries) * k)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    return matrix if matrix.ndim == 2 else matrix.reshape(len(matrix), -1)  # (0, D) has no -1 to infer
