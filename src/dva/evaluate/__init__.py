"""Evaluation: embedding extraction and the Recall@K / MAP@R protocol."""

from dva.evaluate.embed import Embeddings, embed_dataset, embed_records, embedding_transform
from dva.evaluate.evaluate import DEFAULT_KS, evaluate_side

__all__ = ["DEFAULT_KS", "Embeddings", "embed_dataset", "embed_records", "embedding_transform", "evaluate_side"]
