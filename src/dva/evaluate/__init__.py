"""Evaluation: embedding extraction, the Recall@K / MAP@R protocol, per-image latency."""

from dva.evaluate.embed import Embeddings, embed_dataset, embed_records, embedding_transform
from dva.evaluate.evaluate import DEFAULT_KS, evaluate_side
from dva.evaluate.latency import Latency, compare_latency, measure_detector_latency, measure_latency

__all__ = [
    "DEFAULT_KS",
    "Embeddings",
    "Latency",
    "compare_latency",
    "embed_dataset",
    "embed_records",
    "embedding_transform",
    "evaluate_side",
    "measure_detector_latency",
    "measure_latency",
]
