"""The ``dva`` command line, run as users run it (a subprocess of the installed entry point)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import QUICK_EPOCH, TINY_BACKBONE


def dva(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dva", *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"dva {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.mark.parametrize("targets, expected", [("q", 294_912), ("q,v", 589_824), ("q,k,v", 884_736)])
def test_params_prints_the_paper_counts(targets, expected):
    out = json.loads(
        dva("params", "--backbone", "vit_base_patch16_224", "--targets", targets, "--rank", "16", "--json").stdout
    )
    assert (out["trainable"], out["total"]) == (expected, 85_798_656 + expected)
    assert out["options"] == {"targets": targets.split(","), "rank": 16, "scale": 1.0, "also_train": ""}  # in full


def test_train_then_eval_json(cub_root, tmp_path):
    run = tmp_path / "run"
    common = ["--dataset", "cub", "--data", str(cub_root.root)]
    summary = json.loads(
        dva(
            "train",
            *common,
            "--split",
            "open",
            "--backbone",
            TINY_BACKBONE,
            "--no-pretrained",
            "--img-size",
            "32",
            "--method",
            "ica",
            "--targets",
            "q,v",
            "--rank",
            "4",
            *QUICK_EPOCH,
            "--out",
            str(run),
            "--quiet",
            "--json",
        ).stdout
    )
    assert summary["epochs"] == 1 and summary["trainable_params"] == 6 * 2 * 2 * 4 * 64
    metrics = json.loads(dva("eval", "--run", str(run), "--workers", "0", "--quiet", "--json").stdout)
    assert {"recall@1", "recall@2", "recall@4", "recall@8", "map@r"} <= set(metrics)
    assert metrics["images"] == 24 and all(0 <= metrics[k] <= 1 for k in ("recall@1", "map@r"))

    frozen = json.loads(
        dva(
            "eval",
            "--frozen",
            "--backbone",
            TINY_BACKBONE,
            "--no-pretrained",
            "--img-size",
            "32",
            *common,
            "--workers",
            "0",
            "--quiet",
            "--json",
        ).stdout
    )
    assert frozen["images"] == 24

    # resuming a finished run with other settings is refused on one line, exit 2
    bad = dva("train", "--out", str(run), "--resume", "--rank", "8", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error:") and "model.method_options.rank" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_data_check_reports_counts_and_every_problem(cub_root):
    args = ("data", "check", "--dataset", "cub", "--data", str(cub_root.root))
    fine = dva(*args, "--split", "open", "--json", check=False)
    out = json.loads(fine.stdout)
    assert out["splits"]["open"]["train"] == {"images": 24, "classes": 3} and out["problems"] == []
    assert out["splits"]["open"]["expected"] == {"train": 5864, "test": 5924}
    assert out["matches_expected"] is False and fine.returncode == 1  # 48 images: not the complete CUB
    cub_root.paths[0].unlink()
    cub_root.paths[1].unlink()
    broken = dva(*args, check=False)
    assert broken.returncode == 1
    assert sum(line.startswith("problem: ") for line in broken.stdout.splitlines()) == 2
    assert "| closed | train | 23" in broken.stdout and "DOES NOT match" in broken.stdout


def test_user_errors_are_one_line_naming_the_culprit(tmp_path):
    result = dva(
        "train", "--dataset", "cub", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: dataset root is not a directory"
    result = dva("params", "--targets", "q,x", check=False)
    assert result.returncode == 2 and "unknown x" in result.stderr
