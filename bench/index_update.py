"""What adding 1,000 images costs as the index grows: format 2 (append) vs format 1 (full rewrite).

Synthetic, so that only the index is measured: random unit vectors stand in for embeddings
(the embedding step is replaced by a function that returns them), and each gallery image is
a small real file (format 2 stats and hashes the files it adds). For each index size N:

- **format 2**: ``dva index``'s update path (``build_index_dir``) adding 1,000 new files to an
  index of N: plan, hash the 1,000 files, append one shard, insert 1,000 SQLite rows, commit.
- **format 1**: what dva 0.2's update did once the vectors were there: read the index,
  concatenate, add to FAISS, and write embeddings, metadata and the FAISS file in full.

Both use an exact (flat) index, the default below 100,000 images. Times are the median of
``--repeats`` updates (each on a fresh copy of the index).

    python bench/index_update.py                        # N = 1,000 / 10,000 / 100,000, D = 384
    python bench/index_update.py --sizes 1000 10000 --dim 768
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

from dva.evaluate.embed import Embeddings  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.build import build_index_dir  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.faiss_index import build_index, plan_index  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.gallery import GalleryItem  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.legacy import read_legacy, write_legacy_version  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.model import IndexModel  # noqa: E402 - after the sys.path line that finds the repo
from dva.index.store import GalleryIndex, read_manifest  # noqa: E402 - after the sys.path line that finds the repo

ADD = 1000


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_files(folder: Path, start: int, count: int) -> list[GalleryItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(start, start + count):
        path = folder / f"{i:07d}.jpg"
        path.write_bytes(i.to_bytes(8, "little"))  # distinct bytes: distinct hashes
        items.append(GalleryItem(path, f"class_{i % 100}", {"year": str(1900 + i % 120)}))
    return items


def fake_embedder(dim: int, seed: int):
    def embed(model, items):
        vectors = unit_vectors(len(items), dim, seed)
        return Embeddings(vectors, np.full(len(items), -1), np.arange(len(items)), []), 0.0

    return embed


def build_v2(out: Path, items: list[GalleryItem], dim: int, model: IndexModel) -> None:
    build_index_dir(out, items, model=model, index_type="flat", approx_threshold=None, embedder=fake_embedder(dim, 0))


def add_v2(out: Path, items: list[GalleryItem], dim: int) -> float:
    start = time.perf_counter()
    build_index_dir(out, items, model=None, index_type=None, approx_threshold=None, embedder=fake_embedder(dim, 1))
    return time.perf_counter() - start


def to_v1(v2: Path, v1: Path) -> None:
    """The same index written as format 1 (what dva 0.2 kept on disk)."""
    index = GalleryIndex.load(v2)
    v1.mkdir()
    shutil.copy(v2 / "config.json", v1 / "config.json")
    manifest = {k: v for k, v in index.manifest.items() if k not in ("files", "next_id", "snapshot", "format_version")}
    embeddings = np.asarray(index.embeddings)
    write_legacy_version(v1, manifest, embeddings, index.rows, build_index(index.spec, embeddings))


def add_v1(v1: Path, items: list[GalleryItem], dim: int) -> float:
    """dva 0.2's update without the embedding: everything read and written again."""
    start = time.perf_counter()
    manifest = read_manifest(v1)
    embeddings, rows, faiss_index = read_legacy(v1, manifest)
    new = unit_vectors(len(items), dim, 1)
    vectors = np.concatenate([np.asarray(embeddings), new])
    rows = rows + [{"path": str(i.path), "label": i.label, **i.metadata} for i in items]
    faiss_index.add(new)
    plan_index(len(vectors))
    write_legacy_version(v1, {**manifest, "version": manifest["version"] + 1}, vectors, rows, faiss_index)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dva-index-update-"))
    model = IndexModel.frozen("test_vit", pretrained=False, img_size=32)  # only its config is written
    print(f"| index size N | add {ADD:,} (format 2, append) | add {ADD:,} (format 1, full rewrite) | ratio |")
    print("|---|---|---|---|")
    for n in args.sizes:
        base = work / f"n{n}"
        items = make_files(base / "photos", 0, n)
        new = make_files(base / "photos", n, ADD)
        build_v2(base / "v2", items, args.dim, model)
        to_v1(base / "v2", base / "v1")
        v2_times, v1_times = [], []
        for r in range(args.repeats):
            shutil.copytree(base / "v2", base / f"v2-{r}")
            v2_times.append(add_v2(base / f"v2-{r}", new, args.dim))
            shutil.copytree(base / "v1", base / f"v1-{r}")
            v1_times.append(add_v1(base / f"v1-{r}", new, args.dim))
            shutil.rmtree(base / f"v2-{r}")
            shutil.rmtree(base / f"v1-{r}")
        v2_s, v1_s = statistics.median(v2_times), statistics.median(v1_times)
        print(f"| {n:,} | {v2_s:.3f} s | {v1_s:.3f} s | {v1_s / v2_s:.1f}x |", flush=True)
        shutil.rmtree(base)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
