"""The trainer on a tiny ViT and generated images: learning, checkpoints, exact resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from conftest import tiny_run_config, write_cub
from safetensors.torch import load_file

from dva.config import RunConfig
from dva.data import load_catalog, make_split
from dva.errors import CheckpointError, ConfigError, DataError
from dva.evaluate import embed_records
from dva.models import create_model
from dva.runs import Run, check_same_images
from dva.train import Trainer, TrainingInterrupted
from dva.train.trainer import Trainer as TrainerClass


def test_training_writes_a_complete_run_and_learns(cub_root, tmp_path):
    config = tiny_run_config(cub_root.root, epochs=3)
    summary = Trainer(config, tmp_path / "run", progress=False).fit()
    run = Run(tmp_path / "run")
    assert summary["epochs"] == 3 and run.finished
    for epoch in (1, 2, 3):
        assert run.epoch_path(epoch).is_file()
    assert run.record.class_names == ["Species_0", "Species_1", "Species_2"] and run.record.dva_version
    assert run.record.num_classes == 3 and RunConfig.load(run.config_path) == config  # the caller's config untouched
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    # only adapters and proxies are stored, and the proxies include no background class (ICA only)
    weights = load_file(run.weights_path)
    assert weights["loss.proxy_anchor.proxies"].shape == (3, 64)
    assert all(k.startswith("loss.") or ".qkv.down." in k or ".qkv.up." in k for k in weights)

    # the run rebuilds to the trained model: adapters loaded, embeddings moved away from the frozen ones
    test_side = make_split(load_catalog("cub", cub_root.root), "open").test
    frozen_config = tiny_run_config(cub_root.root)
    frozen_config.model.method = "frozen"
    frozen_config.model.method_options = {}  # the tiny ICA rank is an option of ica, not of "frozen"
    kwargs = dict(img_size=32, num_workers=0, device="cpu", progress=False)
    trained = embed_records(run.load_model(), test_side.records, **kwargs)
    frozen = embed_records(create_model(frozen_config.model), test_side.records, **kwargs)
    assert (trained.vectors * frozen.vectors).sum(1).mean() < 0.999


@pytest.mark.parametrize(("fold", "held_out"), [(0, ["Species_3", "Species_4"]), (1, ["Species_1", "Species_2"])])
def test_validation_side_is_evaluated_each_epoch(tmp_path, fold, held_out):
    data = write_cub(tmp_path / "cub", num_classes=10)  # open split: 5 training classes, 2 held out
    config = tiny_run_config(data.root, epochs=1)
    config.data.val_classes, config.data.val_fold = 2, fold
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    assert trainer.split.val.class_names == held_out
    assert not set(trainer.split.train.class_names) & set(held_out)
    epoch = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert set(epoch["val"]) >= {"recall@1", "recall@8", "map@r"} and epoch["val"]["images"] == 16


def _interrupt_after(monkeypatch, steps: int) -> None:
    """Deliver a real SIGINT to this process after ``steps`` optimizer steps."""
    original = TrainerClass.train_step
    calls = {"n": 0}

    def step(self, *args):
        out = original(self, *args)
        calls["n"] += 1
        if calls["n"] == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(TrainerClass, "train_step", step)


@pytest.mark.parametrize("zoom_out", [0.0, 0.5])  # zoom-out draws from the per-sample seed too
def test_resume_after_interrupt_mid_epoch_equals_uninterrupted_run(cub_root, tmp_path, monkeypatch, zoom_out):
    config = tiny_run_config(cub_root.root, epochs=2, batch_size=4, zoom_out=zoom_out)  # 6 steps per epoch
    config.data.num_workers = 2  # per-sample seeds make the result independent of workers
    straight_trainer = Trainer(config, tmp_path / "straight", progress=False)
    straight_trainer.fit()
    assert (straight_trainer.dataset.zoom is not None) == (zoom_out > 0)

    with monkeypatch.context() as m:
        _interrupt_after(m, 8)  # in the middle of epoch 2
        with pytest.raises(TrainingInterrupted, match="--resume"):
            interrupted = tiny_run_config(cub_root.root, epochs=2, batch_size=4, zoom_out=zoom_out)
            Trainer(interrupted, tmp_path / "resumed", progress=False).fit()
    assert (tmp_path / "resumed" / "checkpoints" / "resume.safetensors").is_file()
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed_config = RunConfig.load(tmp_path / "resumed" / "config.json")
    resumed_config.data.num_workers = 0  # allowed to change on resume
    Trainer(resumed_config, tmp_path / "resumed", progress=False).fit(resume=True)

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_existing_run_is_never_overwritten(cub_root, tmp_path):
    Trainer(tiny_run_config(cub_root.root, epochs=1), tmp_path / "run", progress=False).fit()
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(tiny_run_config(cub_root.root, epochs=1), tmp_path / "run", progress=False).fit()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_resume_with_other_settings_is_refused(cub_root, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(TrainingInterrupted):
            Trainer(tiny_run_config(cub_root.root), tmp_path / "run", progress=False).fit()
    other = tiny_run_config(cub_root.root)
    other.model.method_options["rank"] = 8
    with pytest.raises(ConfigError, match="model.method_options.rank: run has 4, asked 8"):
        Trainer(other, tmp_path / "run", progress=False).fit(resume=True)


def test_resume_on_other_images_is_refused_and_on_the_same_images_moved_is_allowed(cub_root, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(TrainingInterrupted):
            Trainer(tiny_run_config(cub_root.root, epochs=1), tmp_path / "run", progress=False).fit()
    moved = tmp_path / "moved"
    shutil.copytree(cub_root.root, moved)  # the same images elsewhere: the run continues there
    changed = tmp_path / "changed"
    shutil.copytree(cub_root.root, changed)
    first = changed / cub_root.paths[0].relative_to(cub_root.root)
    first.write_bytes(first.read_bytes() + b"\0")  # one image re-encoded: another collection
    with pytest.raises(ConfigError, match="cannot resume on other images"):
        Trainer(tiny_run_config(changed, epochs=1), tmp_path / "run", progress=False).fit(resume=True)
    Trainer(tiny_run_config(moved, epochs=1), tmp_path / "run", progress=False).fit(resume=True)
    assert (tmp_path / "run" / "summary.json").is_file()


def test_one_check_refuses_runs_trained_on_other_images_for_resume_and_reuse():
    # resuming (Trainer) and reusing a finished run (dva.reproduce.run_rows) both call this one check
    def never() -> str:
        raise AssertionError("an old run without a fingerprint has nothing to compare: no image is read")

    check_same_images("", never, path="run", refusal="r", advice="a")
    check_same_images("abc", lambda: "abc", path="run", refusal="r", advice="a")
    with pytest.raises(ConfigError, match=r"^run/config.json: refused here \(other ids.*\)\. Do this\.$"):
        check_same_images("abc", lambda: "def", path="run/config.json", refusal="refused here", advice="Do this.")


def test_weights_from_another_backbone_or_rank_are_refused(cub_root, tmp_path):
    Trainer(tiny_run_config(cub_root.root, epochs=1), tmp_path / "run", progress=False).fit()
    config_path = tmp_path / "run" / "config.json"
    raw = json.loads(config_path.read_text())
    raw["model"]["method_options"]["rank"] = 8
    config_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="rank=4.*rank=8"):
        Run(tmp_path / "run").load_model()
    raw["model"]["method_options"]["rank"] = 4
    raw["model"]["backbone"] = "vit_tiny_patch16_224"
    config_path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="backbone="):
        Run(tmp_path / "run").load_model()


def test_weights_trained_with_another_ica_scale_are_refused(cub_root, tmp_path):
    # config.json in the older layout (ICA's settings at the top of model), which both the old
    # and the new code read: the weights' metadata must record the scale, and loading check it.
    old_file, config_path = tmp_path / "old.json", tmp_path / "run" / "config.json"
    raw = tiny_run_config(cub_root.root, epochs=1).to_dict()
    raw["model"].pop("method_options")
    raw["model"].update(rank=4, scale=0.5)
    old_file.write_text(json.dumps(raw))
    Trainer(RunConfig.load(old_file), tmp_path / "run", progress=False).fit()
    saved = json.loads(config_path.read_text())
    (saved["model"].get("method_options") or saved["model"])["scale"] = 1.0
    config_path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="scale=0.5.*scale=1.0"):
        Run(tmp_path / "run").load_model()


def test_decode_failures_are_counted_then_fatal_past_the_threshold(cub_root, tmp_path, capsys):
    cub_root.paths[0].write_bytes(b"not a jpeg")  # a training image (class 0)
    config = tiny_run_config(cub_root.root, epochs=1)
    config.data.max_decode_errors = 0.1
    Trainer(config, tmp_path / "tolerant", progress=False).fit()
    epoch = json.loads((tmp_path / "tolerant" / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch["decode_failures"] == 1
    assert "0000.jpg" in capsys.readouterr().err

    for path in cub_root.paths[1:6]:
        path.write_bytes(b"")
    with pytest.raises(DataError, match="failed to decode"):
        Trainer(config, tmp_path / "strict", progress=False).fit()


def test_too_few_images_for_a_batch_is_a_config_error(cub_root, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(tiny_run_config(cub_root.root, batch_size=64), tmp_path / "run", progress=False).fit()


def test_train_step_is_public_and_needs_no_data(tmp_path):
    # What bench/speed.py times: the trainer's own step on a batch it is given, nothing written.
    from collections import Counter

    from dva.data.loaders import TrainBatch
    from dva.losses import ORIGINAL

    trainer = Trainer(tiny_run_config(tmp_path / "no-data"), tmp_path / "run", progress=False)
    trainer.prepare(num_classes=4, batches_per_epoch=1)
    up = [p for n, p in trainer.model.named_parameters() if ".up." in n]
    before = [p.detach().clone() for p in up]
    batch = TrainBatch({ORIGINAL: (torch.randn(8, 3, 32, 32), torch.arange(8) % 4)}, [], Counter())
    parts = trainer.train_step(batch, step=0)
    assert parts["lr"] == 1e-3 and torch.isfinite(torch.tensor(parts["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, up, strict=True))  # up starts at zero and moved
    assert not (tmp_path / "run").exists()
