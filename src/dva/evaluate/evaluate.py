"""Evaluate a model on a split's test side with the paper's protocol (docs/method.md section 6)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dva.data.loaders import ImageView
from dva.data.records import SplitSide
from dva.distributed import all_gather_objects, broadcast_object, current
from dva.evaluate.embed import Embeddings, embed_records
from dva.metrics import retrieval_metrics
from dva.models.retrieval import RetrievalModel

DEFAULT_KS = (1, 2, 4, 8)


def evaluate_side(
    model: RetrievalModel,
    side: SplitSide,
    *,
    img_size: int,
    resize_size: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    view: ImageView | None = None,
    rerank: str | None = None,
    rerank_k: int = 5,
    alpha: float = 3.0,
    **embed_kwargs,
) -> dict[str, float]:
    """Recall@K and MAP@R of ``model`` on every image of ``side`` querying all the others.

    Images that fail to decode are left out and counted in ``"skipped"`` (a warning names them).
    ``view`` replaces each image before embedding (``dva eval --opa-test``: OPA at test time).
    ``rerank`` (``"aqe"``, ``"dba"``) re-ranks each query's ranking by neighbourhood, the query
    kept out of every expansion (:func:`dva.index.rerank.rerank_metrics`).

    Under torchrun each rank embeds one contiguous shard of the side (no image twice, none
    left out), rank 0 computes the metrics on the joined embeddings, and every rank returns them.
    """
    info = current()
    if not info.is_main:
        embed_kwargs["progress"] = False  # one progress bar per job
    embeddings = embed_records(
        model,
        side.records,
        img_size=img_size,
        resize_size=resize_size,
        view=view,
        shard=(info.rank, info.world_size) if info.enabled else None,
        **embed_kwargs,
    )
    if info.enabled:
        embeddings = Embeddings.concat(all_gather_objects(embeddings))
    metrics = None
    if info.is_main:
        for _, message in embeddings.failures[:5]:
            print(f"warning: skipped {message}", file=sys.stderr)
        if rerank is None:
            metrics = retrieval_metrics(embeddings.vectors, embeddings.labels, ks)
        else:
            from dva.index.rerank import rerank_metrics

            metrics = rerank_metrics(embeddings.vectors, embeddings.labels, rerank, n=rerank_k, alpha=alpha, ks=ks)
        metrics = {**metrics, "images": int(len(embeddings.labels)), "skipped": len(embeddings.failures)}
    return broadcast_object(metrics)
