"""Re-ranking (alpha-QE, DBA): the leave-one-out evaluation against a brute-force reference that
rebuilds the gallery without each query (searching with them: tests/test_gallery_tools.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dva.errors import ConfigError
from dva.index.rerank import database_augmentation, query_expansion, rerank_metrics
from dva.metrics import retrieval_metrics


def clustered(n_classes: int = 5, per_class: int = 7, dim: int = 8, spread: float = 0.9, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    x = np.repeat(centres, per_class, axis=0) + spread * rng.normal(size=(n_classes * per_class, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_classes), per_class)


def _expand(v, others, n, alpha):
    """Reference alpha-QE / DBA of one vector against ``others`` (a plain loop, no FAISS)."""
    sims = others @ v
    top = np.argsort(-sims, kind="stable")[:n]
    out = v + sum(max(sims[j], 0) ** alpha * others[j] for j in top)
    return out / np.linalg.norm(out)


def brute_force(x, labels, method, n, alpha, ks=(1, 2, 4, 8)):
    """Each query i searches the gallery 'everything but i', re-ranked as if i never existed."""
    hits = {k: 0 for k in ks}
    aps = []
    for i in range(len(x)):
        rest = np.delete(np.arange(len(x)), i)
        gallery = x[rest]
        query = x[i]
        if method == "aqe":
            query = _expand(query, gallery, n, alpha)
        if method == "dba":
            gallery = np.stack([_expand(g, np.delete(gallery, j, 0), n, alpha) for j, g in enumerate(gallery)])
        ranking = labels[rest][np.argsort(-(gallery @ query), kind="stable")] == labels[i]
        for k in ks:
            hits[k] += bool(ranking[:k].any())
        r = int(ranking.sum())
        precision = np.cumsum(ranking[:r]) / np.arange(1, r + 1)
        aps.append(float((precision * ranking[:r]).sum() / r))
    return {**{f"recall@{k}": hits[k] / len(x) for k in ks}, "map@r": float(np.mean(aps))}


@pytest.mark.parametrize("method, n, alpha", [("aqe", 3, 3.0), ("aqe", 1, 0.0), ("dba", 3, 3.0), ("dba", 5, 1.0)])
def test_leave_one_out_rerank_matches_rebuilding_the_gallery_without_the_query(method, n, alpha):
    x, labels = clustered()
    got = rerank_metrics(x, labels, method, n=n, alpha=alpha)
    want = brute_force(x, labels, method, n, alpha)
    assert got == pytest.approx(want, abs=1e-6)
    # and re-ranking changed something here, so the comparison is not vacuous
    assert got != pytest.approx(retrieval_metrics(x, labels), abs=1e-6)


def test_no_rerank_is_the_plain_protocol():
    x, labels = clustered(seed=1)
    assert rerank_metrics(x, labels, None) == pytest.approx(retrieval_metrics(x, labels))


def test_dba_and_qe_vectors():
    x, _ = clustered(n_classes=2, per_class=4, seed=2)
    dba = database_augmentation(x, n=2, alpha=3.0)
    for j in range(len(x)):
        np.testing.assert_allclose(dba[j], _expand(x[j], np.delete(x, j, 0), 2, 3.0), atol=1e-5)
    import faiss

    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    q = x[:2] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(query_expansion(q, x, flat, n=3, alpha=3.0)[1], _expand(q[1], x, 3, 3.0), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, field", [({"method": "qe"}, "rerank"), ({"n": 0}, "rerank_k"), ({"alpha": -1.0}, "alpha")]
)
def test_bad_rerank_options_name_the_option(kwargs, field):
    x, labels = clustered()
    options = {"method": "aqe", "n": 3, "alpha": 3.0, **kwargs}
    with pytest.raises(ConfigError, match=f"^{field}"):
        rerank_metrics(x, labels, options.pop("method"), **options)


def test_the_cli_rerank_defaults_are_the_libraries():
    # The CLI writes them out so that it starts without faiss; they must stay the same values.
    from dva.cli._common import RerankAlphaOpt, RerankKOpt
    from dva.index.rerank import DEFAULT_ALPHA, DEFAULT_RERANK_K

    assert (RerankKOpt.default, RerankAlphaOpt.default) == (DEFAULT_RERANK_K, DEFAULT_ALPHA)
