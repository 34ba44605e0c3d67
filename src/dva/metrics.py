"""Retrieval metrics as pure functions (no model, no training imports).

Protocol (docs/method.md section 6, the paper's Sec. 4.1.2): every embedding queries all *other*
embeddings by cosine similarity. Recall@K is 1 for a query when any of its K nearest
neighbours shares its label. MAP@R (Musgrave et al. 2020) averages, over queries, the
precision at each relevant rank within the first R results, R being the number of other
items of the query's class; queries whose class has no other item are left out of MAP@R.

Similarities are computed a block of queries at a time, so 100,000 x 768 embeddings never
build an N x N matrix: memory stays O(N * block), time O(N^2 * D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor

#: Upper bound on the number of similarity entries held at once (256 MiB in float32).
MAX_BLOCK_ENTRIES = 1 << 26


def recall_at_k(embeddings: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[int, float]:
    """Recall@K for each K in ``ks``, as fractions in [0, 1]."""
    return _retrieval(embeddings, labels, ks, with_map=False)[0]


def map_at_r(embeddings: ArrayLike, labels: ArrayLike) -> float:
    """Mean Average Precision at R."""
    return _retrieval(embeddings, labels, (), with_map=True)[1]


def retrieval_metrics(embeddings: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """``{"recall@1": .., "recall@2": .., ..., "map@r": ..}`` in one pass over the data."""
    recalls, mapr = _retrieval(embeddings, labels, ks, with_map=True)
    return {**{f"recall@{k}": v for k, v in recalls.items()}, "map@r": mapr}


def _as_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    return t.detach().to("cpu", dtype)


def _retrieval(
    embeddings: ArrayLike, labels: ArrayLike, ks: Sequence[int], *, with_map: bool
) -> tuple[dict[int, float], float]:
    x = _as_tensor(embeddings, torch.float32)
    y = _as_tensor(labels, torch.long).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected (N, D) embeddings and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if n < 2:
        raise ValueError("retrieval needs at least two embeddings")
    if any(k < 1 for k in ks):
        raise ValueError(f"K must be >= 1, got {list(ks)}")
    x = F.normalize(x, dim=1)
    return _ranked(lambda start, stop: x[start:stop] @ x.T, y, ks, with_map=with_map)


def scored_retrieval_metrics(
    scores: Callable[[int, int], torch.Tensor], labels: ArrayLike, ks: Sequence[int] = (1, 2, 4, 8)
) -> dict[str, float]:
    """:func:`retrieval_metrics` for any similarity, not only cosine of the embeddings.

    ``scores(start, stop)`` returns the ``(stop - start, N)`` similarities of queries
    ``start..stop-1`` to all N items as a new float32 tensor, modified here (re-ranking,
    :mod:`dva.index.rerank`, changes the similarities);
    each query's own entry is excluded here, exactly as in the plain protocol.
    """
    y = _as_tensor(labels, torch.long).reshape(-1)
    if len(y) < 2:
        raise ValueError("retrieval needs at least two embeddings")
    if any(k < 1 for k in ks):
        raise ValueError(f"K must be >= 1, got {list(ks)}")
    recalls, mapr = _ranked(scores, y, ks, with_map=True)
    return {**{f"recall@{k}": v for k, v in recalls.items()}, "map@r": mapr}


def _ranked(
    scores: Callable[[int, int], torch.Tensor], y: torch.Tensor, ks: Sequence[int], *, with_map: bool
) -> tuple[dict[int, float], float]:
    n = len(y)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1  # R: other items of the query's class
    depth = min(n - 1, max([*ks, int(relevant.max()) if with_map else 0]))

    hits = {k: 0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    block = max(1, min(n, MAX_BLOCK_ENTRIES // n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = scores(start, stop)
        sims[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")  # never retrieve yourself
        neighbours = sims.topk(depth, dim=1).indices
        match = y[neighbours] == y[start:stop, None]  # (block, depth)
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
        if with_map:
            r = relevant[start:stop]
            ranks = torch.arange(1, depth + 1)
            within_r = ranks[None, :] <= r[:, None]
            precision = match.cumsum(dim=1) / ranks[None, :]
            ap = (precision * (match & within_r)).sum(dim=1) / r.clamp(min=1)
            ap_sum += float(ap[r > 0].sum())
            ap_count += int((r > 0).sum())
    recalls = {k: hits[k] / n for k in ks}
    return recalls, (ap_sum / ap_count if ap_count else float("nan"))
