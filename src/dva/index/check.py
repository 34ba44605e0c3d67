"""``dva index --check``: is an index whole, and what does its approximation cost?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dva.index.faiss_index import recall_vs_exact, search_parameters, search_selected
from dva.index.legacy import broken_metadata_rows
from dva.index.store import FORMAT_VERSION, GalleryIndex, read_manifest, update_lock

#: Fractions of the gallery a filter keeps, for the filtered recall that ``--check`` reports.
FILTER_FRACTIONS = (0.5, 0.1, 0.01)


def check_index(path: str | Path, *, k: int = 10, num_queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Load every file (counts must agree), look for gallery files that have gone, and
    measure recall@k of the FAISS index against exact search on the stored embeddings, also
    under filters (``filtered_recall@k``: random subsets of the gallery, searched through the
    approximate index with an id selector, as :meth:`dva.Searcher.search` does for large subsets).

    ``recall@k`` is 1.0 for an exact index by construction; measuring it anyway checks that
    the FAISS index and the embeddings still describe the same vectors. An index of format 1
    is converted to format 2 first (``converted``); a metadata file that dva 0.1.0 wrote with
    raw line separators is read correctly by that conversion (``repaired_rows`` counts them).
    """
    path = Path(path)
    manifest = read_manifest(path)
    converted, repaired = False, 0
    if manifest.get("format_version", 1) < FORMAT_VERSION:
        from dva.index.build import migrate_legacy  # build imports this module's neighbours: no cycle at import time

        repaired = broken_metadata_rows(path, manifest)
        with update_lock(path):
            migrate_legacy(path, read_manifest(path))
        converted = True
    index = GalleryIndex.load(path)
    missing = [row["path"] for row in index.rows if not Path(row["path"]).is_file()]
    recall = recall_vs_exact(index.faiss_index, index.embeddings, k=k, num_queries=num_queries, seed=seed)
    return {
        "path": str(path),
        "version": index.version,
        "format_version": FORMAT_VERSION,
        "converted": converted,
        "count": len(index),
        "embed_dim": index.embed_dim,
        "model": {key: value for key, value in index.manifest["model"].items() if key != "fingerprint"},
        "index": index.spec.to_dict(),
        f"recall@{k}": recall,
        f"filtered_recall@{k}": filtered_recall(index, k=k, num_queries=min(num_queries, 200), seed=seed),
        "queries": min(num_queries, len(index)),
        "missing_files": len(missing),
        "missing_examples": missing[:5],
        #: rows of an index written by dva 0.1.0 whose raw U+2028/U+2029/U+0085 were read correctly
        "repaired_rows": repaired,
    }


def filtered_recall(index: GalleryIndex, *, k: int = 10, num_queries: int = 200, seed: int = 0) -> dict[str, float]:
    """Recall@k of the index searched with an id selector that keeps a random subset, against
    exact search on that subset, per kept fraction (``"10%"``: 0.97, ...).

    This is the approximate path alone; :class:`dva.index.Searcher` searches small subsets
    exactly and tops up short answers exactly, so its filtered results are never short.
    """
    n = len(index)
    rng = np.random.default_rng(seed)
    out = {}
    for fraction in FILTER_FRACTIONS:
        size = int(round(n * fraction))
        if size < 1:
            continue
        keep = np.sort(rng.choice(n, size, replace=False))
        subset = np.ascontiguousarray(index.embeddings[keep], dtype=np.float32)
        queries = np.ascontiguousarray(index.embeddings[rng.choice(n, min(num_queries, n), replace=False)])
        kk = min(k, size)
        exact = faiss.IndexFlatIP(subset.shape[1])
        exact.add(subset)
        truth = keep[exact.search(queries, kk)[1]]
        params = search_parameters(index.spec, faiss.IDSelectorBatch(keep))
        found = search_selected(index.faiss_index, queries, kk, params)[1]
        hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True))
        out[f"{fraction:.0%}"] = hits / (len(queries) * kk)
    return out
