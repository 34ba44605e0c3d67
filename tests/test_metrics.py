"""Recall@K and MAP@R: hand-computed cases, pytorch-metric-learning cross-checks, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

import dva.metrics
from dva.metrics import map_at_r, recall_at_k, retrieval_metrics


def test_recall_by_hand():
    # Points on a line (cosine via 2-D vectors at angles); labels chosen so that:
    # a's nearest is b (same label), b's nearest is a, c's nearest is b (wrong) then d (right at K=2).
    angles = np.array([0.0, 0.1, 0.25, 0.45])
    x = np.stack([np.cos(angles), np.sin(angles)], 1)
    y = np.array([0, 0, 1, 1])
    r = recall_at_k(x, y, ks=(1, 2))
    # nearest neighbours: a->b ok, b->a ok, c->b wrong, d->c ok ; at K=2 c gets d
    assert r == {1: 0.75, 2: 1.0}


def test_query_never_retrieves_itself():
    x = np.eye(3)  # orthogonal: the only perfect match would be the query itself
    assert recall_at_k(x, np.array([0, 1, 2]), ks=(1,))[1] == 0.0


def test_accepts_numpy_and_torch_and_unnormalised_input():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 5, 50)
    a = recall_at_k(x, y)
    b = recall_at_k(torch.from_numpy(x) * 7.0, torch.from_numpy(y))
    assert a == b and set(a) == {1, 2, 4, 8}
    assert all(0.0 <= v <= 1.0 for v in a.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_1_and_map_at_r_match_pytorch_metric_learning(seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, 16))
    y = rng.integers(0, 10, 300)
    x = (centers[y] + rng.normal(scale=1.2, size=(300, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    ref = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y), ref_includes_query=True)
    ours = retrieval_metrics(x, y, ks=(1,))
    assert ours["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert 0.2 < ours["recall@1"] < 0.99  # a case where the comparison means something


def test_chunked_computation_equals_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(97, 6)).astype(np.float32), rng.integers(0, 7, 97)
    whole = retrieval_metrics(x, y)
    monkeypatch.setattr(dva.metrics, "MAX_BLOCK_ENTRIES", 97 * 5)  # blocks of 5 queries
    assert retrieval_metrics(x, y) == pytest.approx(whole)


def test_map_at_r_perfect_and_singletons():
    x = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1], [-1, 0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2])  # class 2 has a single image: left out of MAP@R
    assert map_at_r(x, y) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "x, y", [(np.zeros((3, 2)), np.zeros(2)), (np.zeros((1, 2)), np.zeros(1)), (np.zeros(3), np.zeros(3))]
)
def test_bad_shapes_are_refused(x, y):
    with pytest.raises(ValueError):
        recall_at_k(x, y)
