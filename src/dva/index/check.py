"""``dva index --check``: is an index whole, and what does its approximation cost?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dva.index.faiss_index import recall_vs_exact
from dva.index.store import GalleryIndex, repair_metadata


def check_index(path: str | Path, *, k: int = 10, num_queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Load every file (counts must agree), look for gallery files that have gone, and
    measure recall@k of the stored FAISS index against exact search on the stored embeddings.

    ``recall@k`` is 1.0 for an exact index by construction; measuring it anyway checks that
    the FAISS file and the embeddings still describe the same vectors. A metadata file that
    dva 0.1.0 wrote with raw line separators (which that version then could not read) is
    rewritten with them escaped.
    """
    index = GalleryIndex.load(path)
    repaired = repair_metadata(Path(path), index)
    missing = [row["path"] for row in index.rows if not Path(row["path"]).is_file()]
    recall = recall_vs_exact(index.faiss_index, index.embeddings, k=k, num_queries=num_queries, seed=seed)
    return {
        "path": str(path),
        "version": index.version,
        "count": len(index),
        "embed_dim": index.embed_dim,
        "model": {key: value for key, value in index.manifest["model"].items() if key != "fingerprint"},
        "index": index.spec.to_dict(),
        f"recall@{k}": recall,
        "queries": min(num_queries, len(index)),
        "missing_files": len(missing),
        "missing_examples": missing[:5],
        #: rows of an index written by dva 0.1.0 whose raw U+2028/U+2029/U+0085 were escaped
        "repaired_rows": repaired,
    }
