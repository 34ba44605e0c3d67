"""Filtered vs unfiltered search latency, exact (flat) and approximate (HNSW) indexes.

A synthetic index is built once per index type: clustered unit vectors stand in for
embeddings (image i belongs to class ``i % 100``, its vector is the class centre plus noise,
as a fine-grained gallery's embeddings cluster by class), with 100 labels and a numeric
``year`` field. Queries are stored vectors plus a little noise. each filter is then timed as one
``Searcher.search_embedding`` call per query (median over ``--queries`` queries), with the
fraction of the gallery it keeps, the time of its SQL lookup on first use (a ``Searcher``
then keeps the answer), and the recall@10 of the filtered answer against exact search over
the kept images (1.0 means exact).

    OMP_NUM_THREADS=1 python bench/filtered_search.py     # N = 50,000, D = 384, flat and hnsw
    python bench/filtered_search.py --size 20000 --types flat
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_update import make_files  # noqa: E402 - after the sys.path line that finds the repo

from dva.evaluate.embed import Embeddings  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.build import build_index_dir  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.model import IndexModel  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.searcher import Searcher  # noqa: E402 - after the sys.path line that finds the repo

FILTERS = [
    ("none", []),
    ("year>=1960 (50%)", ["year>=1960"]),
    ("label in 10 labels (10%)", ["label in " + ",".join(f"class_{i}" for i in range(10))]),
    ("label=class_7 (1%)", ["label=class_7"]),
    ("label=class_7 AND year<1930 (0.25%)", ["label=class_7", "year<1930"]),
]


def clustered_embedder(dim: int, classes: int = 100):
    """Vectors of image i around centre ``i % classes`` (the class its label names)."""

    def embed(model, items):
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((classes, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        labels = np.arange(len(items)) % classes
        vectors = centres[labels] + 0.8 * rng.standard_normal((len(items), dim)).astype(np.float32) / np.sqrt(dim)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings(vectors, labels, np.arange(len(items)), []), 0.0

    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dva-filtered-"))
    model = IndexModel.frozen("vit_small_patch14_dinov2", pretrained=False, img_size=56)  # 384-d, random weights
    items = make_files(work / "photos", 0, args.size)
    print("| index | filter | kept | SQL lookup, first use (ms) | median ms / query | recall@10 vs exact on the kept |")
    print("|---|---|---|---|---|---|")
    for index_type in args.types:
        out = work / index_type
        build_index_dir(
            out, items, model=model, index_type=index_type, approx_threshold=None, embedder=clustered_embedder(384)
        )
        searcher = Searcher(out)
        vectors = np.asarray(searcher.index.embeddings)
        rng = np.random.default_rng(0)
        queries = vectors[rng.choice(len(vectors), args.queries, replace=False)]
        queries = queries + 0.3 * rng.standard_normal(queries.shape).astype(np.float32) / np.sqrt(queries.shape[1])
        for name, filters in FILTERS:
            start = time.perf_counter()
            kept = searcher.index.select(searcher_filters(filters))
            lookup_ms = (time.perf_counter() - start) * 1000
            times, hits = [], 0
            for q in queries:
                start = time.perf_counter()
                found = searcher.search_embedding(q, k=10, filter=filters)
                times.append((time.perf_counter() - start) * 1000)
                scores = vectors[kept] @ (q / np.linalg.norm(q))
                truth = set(searcher.index.ids[kept[np.argsort(-scores)[:10]]].tolist())
                hits += len(truth & {m.id for m in found})
            recall = hits / (len(queries) * min(10, len(kept)))
            print(
                f"| {index_type} | {name} | {len(kept) / len(vectors):.2%} | {lookup_ms:.1f} | "
                f"{statistics.median(times):.2f} | {recall:.3f} |",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)


def searcher_filters(filters: list[str]):
    from dva.index.filters import parse_filters

    return parse_filters(filters)


if __name__ == "__main__":
    main()
