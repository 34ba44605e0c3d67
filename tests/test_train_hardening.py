"""Training defects a fault probe found (issue 13): the decode-failure budget, --config and the
resume checkpoint on --resume, a disk that fills inside safetensors."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from conftest import run_cli, tiny_run_config, write_cub
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import dva.checkpoint
from dva.config import RunConfig
from dva.errors import CheckpointError, WriteError
from dva.train import Trainer


def test_one_bad_image_is_counted_once_over_all_epochs_and_resumes(tmp_path, capsys):
    data = write_cub(tmp_path / "cub", num_classes=6, per_class=4)  # 12 training images
    data.paths[0].write_bytes(b"not a jpeg")
    config = tiny_run_config(data.root, epochs=5, batch_size=4)
    config.data.max_decode_errors = 0.2  # 2 of 12
    Trainer(config, tmp_path / "run", progress=False).fit()
    epochs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().split("\n") if '"epoch"' in x]
    assert [e["decode_failures"] for e in epochs if e["type"] == "epoch"] == [1] * 5
    assert capsys.readouterr().err.count("warning: skipped") == 1  # warned once, not every epoch

    # a resumed run knows the image already failed
    (tmp_path / "run/summary.json").unlink()
    resumed = RunConfig.load(tmp_path / "run/config.json")
    resumed.train.epochs = 5
    Trainer(resumed, tmp_path / "run", progress=False).fit(resume=True)


def _stopped_run(tmp_path, **overrides) -> RunConfig:
    """A finished one-epoch run, made resumable again (as if stopped before its summary)."""
    config = tiny_run_config(write_cub(tmp_path / "cub").root, epochs=1, batch_size=8, **overrides)
    Trainer(config, tmp_path / "run", progress=False).fit()
    (tmp_path / "run/summary.json").unlink()
    return config


def test_config_on_resume_applies_what_may_change_and_refuses_the_rest(tmp_path, capsys):
    _stopped_run(tmp_path)
    (tmp_path / "lr.yaml").write_text("train:\n  lr: 0.5\n")
    code, _, err = run_cli(
        capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "lr.yaml"), "--quiet"
    )
    assert code == 2 and "train.lr: run has 0.001, asked 0.5" in err
    (tmp_path / "ok.yaml").write_text("train:\n  checkpoint_every: 3\n")
    code, _, err = run_cli(
        capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "ok.yaml"), "--quiet"
    )
    assert code == 0, err
    assert RunConfig.load(tmp_path / "run/config.json").train.checkpoint_every == 3


def test_resume_of_a_missing_run_names_the_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", "--out", str(tmp_path / "nothing"), "--quiet")
    assert code == 2 and "nothing: no run to resume" in err and "cub" not in err


def test_a_resume_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    config = _stopped_run(tmp_path / "a")
    other = tiny_run_config(config.data.root, epochs=1, batch_size=8)
    other.model.method_options["rank"] = 8
    Trainer(other, tmp_path / "b", progress=False).fit()
    (tmp_path / "b/summary.json").unlink()
    shutil.copy(tmp_path / "a/run/checkpoints/resume.safetensors", tmp_path / "b/checkpoints/resume.safetensors")
    with pytest.raises(CheckpointError, match="resume.safetensors: weights were trained with method_options.rank=4"):
        Trainer(RunConfig.load(tmp_path / "b/config.json"), tmp_path / "b", progress=False).fit(resume=True)

    resume = tmp_path / "a/run/checkpoints/resume.safetensors"
    with safe_open(str(resume), framework="pt") as f:
        header = f.metadata()
    save_file(load_file(resume), str(resume), metadata={**header, "backbone": json.dumps("vit_base_patch16_224")})
    with pytest.raises(CheckpointError, match="backbone='vit_base_patch16_224'"):
        Trainer(RunConfig.load(tmp_path / "a/run/config.json"), tmp_path / "a/run", progress=False).fit(resume=True)


def test_a_disk_that_fills_inside_safetensors_is_a_write_error(tmp_path, monkeypatch):
    def full(tensors, filename, metadata=None):
        raise SafetensorError(f"Error while serializing: IoError({os.strerror(errno.ENOSPC)})")

    monkeypatch.setattr(dva.checkpoint, "save_file", full)
    with pytest.raises(WriteError, match=r"model.safetensors: cannot write .*No space left"):
        dva.checkpoint.save_tensors(tmp_path / "model.safetensors", {}, {})
    assert list(tmp_path.iterdir()) == []  # no temporary file left either
