"""Training survives what production does to it: SIGKILL mid-epoch, a full disk, a read-only run directory.

Each test compares against an uninterrupted run: resuming must give the same final weights,
bit for bit, and a failed save must leave the previous checkpoint byte-identical.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file

import dva._io
import dva.checkpoint
from dva.config import RunConfig
from dva.errors import WriteError
from dva.train import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"

#: Runs ``dva train`` with one change: at global step 5 (after the checkpoint of step 4, with
#: step 5's update done in memory only) it announces itself and waits to be killed.
PAUSING_TRAIN = """
import sys, time
from pathlib import Path
from dva.train.trainer import Trainer

original = Trainer.train_step

def step(self, batch, global_step, sizes=None):
    out = original(self, batch, global_step, sizes)
    if global_step == 4:
        Path(sys.argv[1]).write_text("step 5 done")
        time.sleep(120)
    return out

Trainer.train_step = step
from dva.cli import main
main(sys.argv[2:])
"""


def same_weights(a: Path, b: Path) -> None:
    one, other = load_file(a), load_file(b)
    assert one.keys() == other.keys()
    for key in one:
        assert torch.equal(one[key], other[key]), key


def dva_cli(*args: str) -> None:
    """``dva ARGS`` in this process; fails the test on a non-zero exit."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code in (0, None)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(cub_root, tmp_path):
    args = [
        "train",
        "--dataset",
        "cub",
        "--data",
        str(cub_root.root),
        "--backbone",
        "test_vit",
        "--no-pretrained",
        "--img-size",
        "32",
        "--method",
        "ica",
        "--rank",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--checkpoint-every",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    marker = tmp_path / "paused"
    killed = subprocess.Popen(
        [sys.executable, "-c", PAUSING_TRAIN, str(marker), *args, "--out", str(tmp_path / "killed")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        dva_cli(*args, "--out", str(tmp_path / "straight"))  # meanwhile, the uninterrupted run
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert killed.poll() is None, killed.stderr.read().decode()
            assert time.monotonic() < deadline, "training never reached step 5"
            time.sleep(0.05)
    finally:
        killed.send_signal(signal.SIGKILL)  # no handler runs: whatever is on disk is all there is
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # killed in epoch 1 of 2 (6 steps each)

    dva_cli("train", "--resume", "--out", str(tmp_path / "killed"), "--quiet")
    same_weights(tmp_path / "killed" / "model.safetensors", tmp_path / "straight" / "model.safetensors")


def snapshot(run_dir: Path, *, temporary: bool = True) -> dict[str, bytes]:
    """Every file's bytes (``temporary=False``: without the temporary file a save is writing)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and (temporary or not p.name.endswith(".tmp"))
    }


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_resume_recovers(cub_root, tmp_path, monkeypatch):
    config = tiny_run_config(cub_root.root, epochs=2, batch_size=4, checkpoint_every=2)
    Trainer(config, tmp_path / "straight", progress=False).fit()

    run_dir = tmp_path / "run"
    real_save = dva.checkpoint.save_file
    seen: dict[str, dict[str, bytes]] = {}

    def save_until_the_disk_fills(tensors, filename, metadata=None):
        # The first save after epoch 1's weights exist writes half a file, then the disk is full.
        if (run_dir / "model.safetensors").exists() and not seen:
            seen["before"] = snapshot(run_dir, temporary=False)
            real_save(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(dva.checkpoint, "save_file", save_until_the_disk_fills)
    with pytest.raises(WriteError, match=r"No space left on device.*unchanged.*dva train --resume"):
        Trainer(
            tiny_run_config(cub_root.root, epochs=2, batch_size=4, checkpoint_every=2), run_dir, progress=False
        ).fit()
    after = snapshot(run_dir)
    assert seen["before"].keys() == after.keys()  # no half-written temporary file left behind, none lost
    for name, content in seen["before"].items():
        assert after[name] == content, name  # byte-identical: the previous checkpoint is intact
    monkeypatch.undo()

    Trainer(RunConfig.load(run_dir / "config.json"), run_dir, progress=False).fit(resume=True)
    same_weights(run_dir / "model.safetensors", tmp_path / "straight" / "model.safetensors")


def test_a_run_directory_that_cannot_be_written_is_a_clear_error(cub_root, tmp_path, monkeypatch):
    config = tiny_run_config(cub_root.root, epochs=1, batch_size=4, checkpoint_every=2)
    run_dir = tmp_path / "run"
    Trainer(config, run_dir, progress=False).fit()
    before = snapshot(run_dir)
    (run_dir / "summary.json").unlink()  # as if the run had stopped before its end: resume trains again

    real_mkstemp = dva._io.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only folder answers, even to root
        if dir is not None and Path(dir).is_relative_to(run_dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(dva._io.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match=r"config\.json: cannot write \(Permission denied\)"):
        Trainer(RunConfig.load(run_dir / "config.json"), run_dir, progress=False).fit(resume=True)
    assert {k: v for k, v in snapshot(run_dir).items()} == {k: v for k, v in before.items() if k != "summary.json"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_run_directory_fails_before_training(cub_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            Trainer(tiny_run_config(cub_root.root, epochs=1), run_dir, progress=False).fit()
    finally:
        run_dir.chmod(0o755)
    assert not any(run_dir.iterdir())
