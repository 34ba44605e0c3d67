"""Re-ranking on cub100: plain cosine vs alpha-QE vs DBA, leave-one-out over the open test split.

The 2,953 test images of cub100's unseen classes (50-99) are embedded ONCE with the frozen
offline DINOv2 ViT-S/14 (``dinov2_vits14.imgfocus``) at 112 px, the ``Base`` row of the
quality benchmark, and cached; every re-ranking setting is then evaluated on the cached
array (``dva.index.rerank.rerank_metrics``: each image queries all the others, the query
excluded from its own expansion neighbours and from every gallery vector's DBA neighbours).

This is one illustrative measurement on the test set: the grid is small and the library's
defaults are the literature's (alpha 3, n between 2 and 10), not chosen from this table.

    python bench/rerank.py                         # embeds once (cached in /tmp), then the table
    python bench/rerank.py --run RUN --cache /tmp/rerank/cub100_ica112.npz   # a trained run instead
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
GRID = [
    (None, 0, 0.0),
    ("aqe", 1, 3.0),
    ("aqe", 2, 3.0),
    ("aqe", 5, 3.0),
    ("aqe", 10, 3.0),
    ("aqe", 5, 1.0),
    ("dba", 2, 3.0),
    ("dba", 5, 3.0),
    ("dba", 10, 3.0),
    ("dba", 5, 1.0),
]


def embed(cache: Path, data: Path, img_size: int, run: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The test split's embeddings, computed once and cached (vectors float32, labels int64)."""
    if cache.is_file():
        saved = np.load(cache)
        return saved["vectors"], saved["labels"]
    from dva.config import ModelConfig
    from dva.data import load_catalog, make_split
    from dva.evaluate import embed_records
    from dva.models import create_model
    from dva.runs import Run

    if run is not None:  # a trained run (trained on classes 0-49 only): its model and crop size
        the_run = Run(run)
        model, img_size = the_run.load_model(), the_run.config.model.img_size
    else:
        model = create_model(ModelConfig(backbone="dinov2_vits14.imgfocus", method="frozen", img_size=img_size))
    side = make_split(load_catalog("cub100", data), "open").test
    emb = embed_records(
        model, side.records, img_size=img_size, batch_size=64, num_workers=1, device="cpu", precision="fp32"
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=emb.vectors, labels=emb.labels)
    return emb.vectors, emb.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cub100")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rerank/cub100_frozen112.npz"))
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument(
        "--run", type=Path, default=None, help="Embed with this trained run instead of the frozen backbone."
    )
    parser.add_argument("--embed-only", action="store_true")
    args = parser.parse_args()
    vectors, labels = embed(args.cache, args.data, args.img_size, args.run)
    print(f"{len(vectors)} images, {len(np.unique(labels))} classes, D={vectors.shape[1]}", file=sys.stderr)
    if args.embed_only:
        return
    from dva.index.rerank import rerank_metrics

    print("| re-ranking | n | alpha | R@1 | R@2 | R@4 | R@8 | MAP@R |")
    print("|---|---|---|---|---|---|---|---|")
    for method, n, alpha in GRID:
        m = rerank_metrics(vectors, labels, method, n=n, alpha=alpha)
        cells = " | ".join(f"{100 * m[key]:.1f}" for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"))
        print(f"| {method or 'none'} | {n or '-'} | {alpha if method else '-'} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
