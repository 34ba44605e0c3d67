"""Re-ranking by neighbourhood: alpha-query-expansion (alpha-QE) and database-side augmentation (DBA).

Both replace a vector by the weighted sum of itself and its top-``n`` neighbours, with
weights ``max(sim, 0) ** alpha`` (Radenović, Tolias and Chum, "Fine-tuning CNN image
retrieval with no human annotation", TPAMI 2018), then L2-normalise it:

- **alpha-QE** expands the *query* with its top-``n`` gallery neighbours, then searches again:
  images that look like the query's close neighbours move up.
- **DBA** replaces *every gallery vector* by the expansion of itself with its own top-``n``
  neighbours (once per gallery and ``(n, alpha)``; :class:`dva.Searcher` caches it), and the
  plain query searches those.

They help when a class has several close members to pull in (MAP@R), and barely move the
first match (Recall@1): docs/product.md measures both on cub100. Defaults are the
literature's (alpha 3, n within the 2-10 it uses), not tuned on any test set.

:func:`rerank_metrics` evaluates them with the paper's leave-one-out protocol: the query is
excluded from its own expansion neighbours and, for DBA, from every gallery vector's
neighbours (the gallery a query searches never contains it), so nothing of the query, its
label least of all, leaks into the ranking it is scored on.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch

from dva.errors import ConfigError
from dva.metrics import retrieval_metrics, scored_retrieval_metrics

RERANK_METHODS = ("aqe", "dba")
#: Neighbours per expansion: within the 2-10 of Radenović et al.; not tuned on a test set.
DEFAULT_RERANK_K = 5
#: The weight exponent of alpha-QE / DBA in Radenović et al.
DEFAULT_ALPHA = 3.0


def check_rerank(method: str | None, n: int, alpha: float) -> None:
    """Refuse an unknown method, ``n < 1`` or a negative / non-finite ``alpha`` (naming the option)."""
    if method is None:
        return
    if method not in RERANK_METHODS:
        raise ConfigError(f"rerank: choose from {', '.join(RERANK_METHODS)} (or none), got {method!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"rerank_k: the number of expansion neighbours must be at least 1, got {n!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"alpha: the weight exponent must be a finite number >= 0, got {alpha!r}")


def expansion_weights(sims: np.ndarray, alpha: float) -> np.ndarray:
    """``max(sim, 0) ** alpha``: dissimilar neighbours (negative cosine) add nothing."""
    return np.clip(sims, 0.0, None) ** alpha


def expand(vectors: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """``normalise(v + sum_j w_j x_j)`` for each row: ``vectors`` (m, D), ``neighbours`` (m, n, D),
    ``sims`` (m, n) (the vector's own weight is 1: its similarity to itself)."""
    weights = expansion_weights(sims, alpha).astype(np.float32)
    out = vectors + np.einsum("mn,mnd->md", weights, neighbours, dtype=np.float32)
    return _normalise(out)


def neighbours(
    index: faiss.Index, queries: np.ndarray, n: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(sims, ids)``, each ``(m, n)``, of the top-``n`` of ``index`` for each query, leaving out
    id ``exclude[i]`` for query ``i`` (a gallery vector is not its own neighbour). Missing
    neighbours (``n`` larger than the gallery) have id -1 and similarity 0, so weight 0."""
    extra = 0 if exclude is None else 1
    sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), n + extra)
    if exclude is not None:
        keep = ids != np.asarray(exclude)[:, None]
        # Each row keeps its first n ids that are not the excluded one (self may be missing
        # from an approximate index's answer; then the last one is dropped).
        order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
        sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        ids = np.where(np.take_along_axis(keep, order, 1), ids, -1)
    sims = np.where(ids >= 0, sims, 0.0).astype(np.float32)
    return sims, ids


def gather(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of ``vectors`` (``-1``: a zero row), shape ``ids.shape + (D,)``."""
    out = np.asarray(vectors[np.maximum(ids, 0).ravel()], dtype=np.float32).reshape(*ids.shape, -1)
    out[ids < 0] = 0.0
    return out


def query_expansion(
    queries: np.ndarray,
    gallery: np.ndarray,
    index: faiss.Index,
    *,
    n: int = DEFAULT_RERANK_K,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """alpha-QE: each (normalised) query expanded with its top-``n`` in ``index`` (over ``gallery``)."""
    sims, ids = neighbours(index, queries, n)
    return expand(queries, gather(gallery, ids), sims, alpha)


def database_augmentation(
    gallery: np.ndarray,
    index: faiss.Index | None = None,
    *,
    n: int = DEFAULT_RERANK_K,
    alpha: float = DEFAULT_ALPHA,
    block: int = 4096,
) -> np.ndarray:
    """DBA: every gallery vector expanded with its own top-``n`` (itself excluded).

    Neighbours come from ``index`` (the index's own FAISS index, approximate for large
    galleries) or an exact one built here. Costs one k-NN search per gallery vector and an
    ``(N, D)`` float32 copy.
    """
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    if index is None:
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
    out = np.empty_like(gallery)
    for start in range(0, len(gallery), block):
        rows = gallery[start : start + block]
        sims, ids = neighbours(index, rows, n, exclude=np.arange(start, start + len(rows)))
        out[start : start + len(rows)] = expand(rows, gather(gallery, ids), sims, alpha)
    return out


def rerank_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    method: str | None,
    *,
    n: int = DEFAULT_RERANK_K,
    alpha: float = DEFAULT_ALPHA,
    ks: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """Leave-one-out Recall@K and MAP@R (as :func:`dva.metrics.retrieval_metrics`) after re-ranking.

    Every item queries all the others. alpha-QE expands query ``i`` with its top-``n`` among
    the others. DBA compares query ``i`` with gallery vectors each augmented by its top-``n``
    among the items *other than i*: where ``i`` is one of item ``j``'s ``n`` neighbours, ``j``
    is augmented with its next neighbour instead (exact, for the ``N * n`` such pairs).
    Exact k-NN (FAISS flat); memory ``O(N * n * D)`` beyond the embeddings.
    """
    x = _normalise(np.ascontiguousarray(embeddings, dtype=np.float32))
    if method is None:
        return retrieval_metrics(x, labels, ks)
    check_rerank(method, n, alpha)
    count = len(x)
    if count < 2:
        raise ValueError("retrieval needs at least two embeddings")
    n = min(n, count - 2) if method == "dba" else min(n, count - 1)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    # n + 1 neighbours other than self: DBA needs the one that replaces an excluded query.
    sims, ids = neighbours(flat, x, n + 1, exclude=np.arange(count))
    if method == "aqe" or n < 1:
        queries = expand(x, gather(x, ids[:, :n]), sims[:, :n], alpha) if n >= 1 else x
        gallery_t = torch.from_numpy(x)
        queries_t = torch.from_numpy(queries)
        return scored_retrieval_metrics(lambda start, stop: queries_t[start:stop] @ gallery_t.T, labels, ks)
    weights = expansion_weights(sims, alpha).astype(np.float32)  # (N, n + 1)
    augmented = x + np.einsum("mn,mnd->md", weights[:, :n], gather(x, ids[:, :n]))  # not normalised yet
    gallery_t = torch.from_numpy(_normalise(augmented))
    # For query i = ids[j, t] (t < n): item j without i = augmented_j - w_jt x_i + w_jn x_(ids[j, n]).
    j_idx = np.repeat(np.arange(count), n)
    i_idx = ids[:, :n].ravel()
    t_idx = np.tile(np.arange(n), count)
    fixed = np.empty(len(j_idx), np.float32)
    for start in range(0, len(j_idx), 65536):
        sl = slice(start, start + 65536)
        j, i, t = j_idx[sl], i_idx[sl], t_idx[sl]
        without = augmented[j] - weights[j, t, None] * x[i] + weights[j, n, None] * gather(x, ids[j, n])
        fixed[sl] = np.einsum("md,md->m", _normalise(without), x[i])
    order = np.argsort(i_idx, kind="stable")
    i_sorted, j_sorted, fixed_sorted = i_idx[order], j_idx[order], fixed[order]
    x_t = torch.from_numpy(x)

    def scores(start: int, stop: int) -> torch.Tensor:
        block = x_t[start:stop] @ gallery_t.T
        lo, hi = np.searchsorted(i_sorted, [start, stop])
        rows = torch.from_numpy(i_sorted[lo:hi] - start)
        block[rows, torch.from_numpy(j_sorted[lo:hi])] = torch.from_numpy(fixed_sorted[lo:hi])
        return block

    return scored_retrieval_metrics(scores, labels, ks)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
