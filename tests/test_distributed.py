"""Distributed training and evaluation: two real CPU processes joined by gloo, as torchrun joins them.

The ranks get torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and run the ordinary :class:`Trainer`, which must then compute exactly what one
process computes with the same global batch.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_run_config, write_cub
from safetensors.torch import load_file, save_file

from dva.data import load_catalog, make_split
from dva.data.loaders import TrainBatchSampler
from dva.distributed import shard_bounds
from dva.evaluate import Embeddings
from dva.opa.box_files import path_key
from dva.opa.detectors import Detection
from dva.opa.training import ObjectViews
from dva.train import Trainer

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def dva_setup(root: Path):
    """A DVA run whose ranks see different numbers of background views in the same step.

    Only every other training image has a box: the others fall back to original +
    discriminative views without a background view, so the per-kind gather has uneven sizes.
    """
    config = tiny_run_config(root, epochs=2, batch_size=6, optimizer="sgd", proxy_lr=0.05)
    config.model.method = "dva"
    config.data.val_classes = 2
    config.data.max_decode_errors = 0.5
    split = make_split(load_catalog("cub", root), "open", val_classes=2)
    boxes = {path_key(r.path): Detection((4.0, 6.0, 20.0, 24.0), 0.9) for r in split.train.records[::2]}
    return config, split, ObjectViews(boxes)


def train_rank(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(torchrun_env(rank, WORLD, port))
    torch.set_num_threads(1)  # as torchrun does (OMP_NUM_THREADS=1): two ranks share the CPU cores
    config, split, views = dva_setup(Path(root))
    trainer = Trainer(config, Path(out) / "run", split=split, views=views, progress=False)
    summary = trainer.fit()
    tensors = {
        **{f"model.{k}": v for k, v in trainer.model.trainable_state_dict().items()},
        **{f"loss.{k}": v.detach() for k, v in trainer.loss_fn.state_dict().items()},
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out) / f"rank{rank}.safetensors"))
    (Path(out) / f"summary{rank}.json").write_text(json.dumps(summary))
    torch.distributed.destroy_process_group()


def epoch_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path):
    data = write_cub(tmp_path / "cub", num_classes=10, per_class=6)  # 18 training images: 3 steps of 6
    config, split, _ = dva_setup(data.root)
    # Rank 1's share of the first batch cannot be decoded: that rank steps with no image at all.
    sampler = TrainBatchSampler(len(split.train.records), 6, seed=config.train.seed, rank=1, world_size=WORLD)
    for index, _ in next(iter(sampler)):
        split.train.records[index].path.write_bytes(b"not a jpeg")
    mp.spawn(train_rank, args=(free_port(), str(data.root), str(tmp_path)), nprocs=WORLD)

    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]
    assert ranks[0].keys() == ranks[1].keys() and any(".qkv.up." in k for k in ranks[0])
    for key in ranks[0]:  # DDP keeps adapters and proxies identical on every rank
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    written = load_file(tmp_path / "run" / "model.safetensors")
    assert written.keys() == ranks[0].keys() and all(torch.equal(written[k], ranks[0][k]) for k in written)
    assert json.loads((tmp_path / "summary1.json").read_text())["processes"] == WORLD

    config, split, views = dva_setup(data.root)
    Trainer(config, tmp_path / "single", split=split, views=views, progress=False).fit()
    single = load_file(tmp_path / "single" / "model.safetensors")
    for key in single:
        assert torch.allclose(written[key], single[key], rtol=1e-4, atol=1e-6), key
    # ICA's up projections start at zero: what they hold is what training did, so the comparison means something
    assert max(float(single[k].abs().max()) for k in single if ".qkv.up." in k) > 1e-4

    # logs written once (rank 0), with the single run's losses, events and validation metrics
    distributed_log, single_log = epoch_records(tmp_path / "run"), epoch_records(tmp_path / "single")
    assert [r["epoch"] for r in distributed_log] == [1, 2]
    for epoch, (d, s) in enumerate(zip(distributed_log, single_log, strict=True), start=1):
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-5)
        assert d["decode_failures"] == s["decode_failures"] == 3  # distinct images: counted once, not every epoch
        assert d["events"] == s["events"]  # counted over both ranks, running totals
        assert 0 < d["events"]["no_box"] <= 9 * epoch
        assert d["val"]["images"] == s["val"]["images"] == 12  # every validation image once
        for metric in ("recall@1", "recall@2", "map@r"):
            assert d["val"][metric] == pytest.approx(s["val"][metric], abs=1e-6)


def test_shards_cover_every_position_once_and_join_back_in_order():
    for n in (0, 1, 5, 12):
        for shards in (1, 2, 3, 7):
            bounds = [shard_bounds(n, i, shards) for i in range(shards)]
            assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(ValueError):
        shard_bounds(10, 2, 2)

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 4)).astype(np.float32)
    whole = Embeddings(vectors[[0, 1, 3, 4, 5, 6]], np.arange(6), np.array([0, 1, 3, 4, 5, 6]), [(2, "bad")])
    parts = [
        Embeddings(vectors[[4, 5, 6]], np.arange(3, 6), np.array([4, 5, 6])),
        Embeddings(vectors[[0, 1, 3]], np.arange(3), np.array([0, 1, 3]), [(2, "bad")]),
    ]
    joined = Embeddings.concat(parts)
    assert np.array_equal(joined.vectors, whole.vectors) and np.array_equal(joined.indices, whole.indices)
    assert np.array_equal(joined.labels, whole.labels) and joined.failures == [(2, "bad")]
    with pytest.raises(ValueError, match="overlap"):
        Embeddings.concat([parts[0], parts[0]])
