"""Qdrant vs Milvus in embedded mode, against exact FAISS: the measurement behind docs/scale.md.

For each backend, in a fresh process (so import and start times are cold): the install size
of its client and every package it adds to dva's own dependencies, the time to import and open
an empty on-disk database, the time to insert ``N`` vectors of ``D`` float32 (with a small
payload, as ``dva`` stores path and label), single-query latency (median and p95 over
``--queries`` held-out queries, k = 10) and recall@10 against exact FAISS (``IndexFlatIP``)
on the same vectors. The vectors are a mixture of Gaussians, L2-normalised (clusters, as
embeddings of a fine-grained gallery are, rather than uniform noise where every neighbour
is nearly as far as every other).

    python bench/vectordb.py                      # N = 100,000, D = 384 (about 2 minutes per backend)
    python bench/vectordb.py --n 20000 --only qdrant

Embedded mode is what the tests run and what a laptop runs; it is not how either database is
meant to serve 100 M vectors (that is a cluster, docs/scale.md), so these numbers choose the
client to build on and bound the embedded mode, not the cluster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

BACKENDS = {"qdrant": ["qdrant-client"], "milvus": ["pymilvus", "milvus-lite"]}
BATCH = 1000


def vectors(n: int, dim: int, seed: int, clusters: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` pull in, themselves included (markers evaluated)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def install_mib(backend: str) -> tuple[float, list[str]]:
    """MiB on disk of the distributions the backend adds to ``dva[serve]`` (numpy, pydantic, ... are there)."""
    base = closure(
        [
            "torch",
            "torchvision",
            "timm",
            "safetensors",
            "numpy",
            "pillow",
            "typer",
            "tqdm",
            "pyyaml",
            "scipy",
            "faiss-cpu",
            "fastapi",
            "fastapi-offline",
            "uvicorn",
            "python-multipart",
        ]
    )
    added = sorted(closure(BACKENDS[backend]) - base)
    total = 0
    for name in added:
        dist = metadata.distribution(name)
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20, added


def run_one(backend: str, n: int, dim: int, num_queries: int, folder: Path) -> dict:
    data = vectors(n + num_queries, dim, seed=0)
    base, queries = data[:n], data[n:]
    import faiss

    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    _, truth = exact.search(queries, 10)

    start = time.perf_counter()
    if backend == "qdrant":
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(folder / "qdrant"))
        client.create_collection("bench", vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
        started = time.perf_counter() - start
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            client.upsert(
                "bench",
                points=models.Batch(
                    ids=list(range(s, min(s + BATCH, n))),
                    vectors=base[s : s + BATCH].tolist(),
                    payloads=[{"path": f"img/{i}.jpg", "label": str(i % 200)} for i in range(s, min(s + BATCH, n))],
                ),
            )
        insert_s = time.perf_counter() - t0

        def search(q: np.ndarray) -> list[int]:
            return [p.id for p in client.query_points("bench", query=q.tolist(), limit=10, with_payload=True).points]
    else:
        from pymilvus import MilvusClient

        client = MilvusClient(str(folder / "milvus.db"))
        client.create_collection("bench", dimension=dim, metric_type="COSINE")
        started = time.perf_counter() - start
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            client.insert(
                "bench",
                [
                    {"id": i, "vector": base[i].tolist(), "path": f"img/{i}.jpg", "label": str(i % 200)}
                    for i in range(s, min(s + BATCH, n))
                ],
            )
        if hasattr(client, "flush"):
            client.flush("bench")
        insert_s = time.perf_counter() - t0

        def search(q: np.ndarray) -> list[int]:
            hits = client.search("bench", data=[q.tolist()], limit=10, output_fields=["path", "label"])[0]
            return [h["id"] for h in hits]

    search(queries[0])  # first query builds whatever the database builds lazily
    latencies, hits = [], 0
    for q, t in zip(queries, truth.tolist(), strict=True):
        t0 = time.perf_counter()
        found = search(q)
        latencies.append(time.perf_counter() - t0)
        hits += len(set(found) & set(t))
    faiss_lat = []
    for q in queries:
        t0 = time.perf_counter()
        exact.search(q[None], 10)
        faiss_lat.append(time.perf_counter() - t0)
    return {
        "backend": backend,
        "start_s": started,
        "insert_s": insert_s,
        "p50_ms": 1000 * float(np.median(latencies)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "recall@10": hits / (10 * len(queries)),
        "faiss_p50_ms": 1000 * float(np.median(faiss_lat)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--only", default=",".join(BACKENDS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child process: one backend, cold
        folder = Path(tempfile.mkdtemp(prefix=f"dva-bench-{args.one}-"))
        try:
            result = run_one(args.one, args.n, args.dim, args.queries, folder)
            result["disk_mib"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print("RESULT " + json.dumps(result))
        return
    rows = []
    for backend in args.only.split(","):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                backend,
                "--n",
                str(args.n),
                "--dim",
                str(args.dim),
                "--queries",
                str(args.queries),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{backend}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(line[0][7:])
        row["install_mib"], row["adds"] = install_mib(backend)
        row["total_s"] = time.perf_counter() - t0
        rows.append(row)
    print(
        f"\nN = {args.n:,} x {args.dim} float32, {args.queries} single queries, k = 10; "
        f"recall against exact FAISS IndexFlatIP\n"
    )
    print(
        "| backend | install (MiB, beyond dva[serve]) | import + open | insert N | vectors/s | on disk (MiB) | "
        "query p50 | query p95 | recall@10 | FAISS flat p50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['install_mib']:.0f} | {r['start_s']:.2f} s | {r['insert_s']:.1f} s | "
            f"{args.n / r['insert_s']:,.0f} | {r['disk_mib']:.0f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
            f"{r['recall@10']:.3f} | {r['faiss_p50_ms']:.2f} ms |"
        )
    for r in rows:
        print(f"\n{r['backend']} adds: {', '.join(r['adds'])}")


if __name__ == "__main__":
    main()
