"""``dva eval --suite paper``: a tiny trained run on every fake dataset under one data root."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_BACKBONE, TINY_IMG, tiny_run_config, write_cub
from layouts import write_aircraft, write_nabirds
from typer.testing import CliRunner

from dva.cli import app
from dva.config import ModelConfig
from dva.data import load_catalog, make_split
from dva.errors import ConfigError, DataError
from dva.evaluate import embed_records, evaluate_side
from dva.evaluate.suite import evaluate_run_on_suite, evaluate_suite
from dva.models import create_model
from dva.runs import Run
from dva.train import Trainer

FAST = dict(num_workers=0, device="cpu", progress=False, batch_size=16)


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory):
    """DATA_ROOT/{CUB_200_2011, nabirds, fgvc-aircraft-2013b} and a run trained on the CUB copy."""
    root = tmp_path_factory.mktemp("data")
    write_cub(root / "CUB_200_2011", num_classes=6, per_class=8)
    write_nabirds(root / "nabirds")
    write_aircraft(root / "fgvc-aircraft-2013b")
    run_dir = tmp_path_factory.mktemp("runs") / "cub"
    Trainer(tiny_run_config(root / "CUB_200_2011", epochs=1), run_dir, progress=False).fit()
    return root, run_dir


def frozen_model():
    return create_model(ModelConfig(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="frozen"))


def test_suite_evaluates_every_dataset_found_with_the_paper_protocol(suite_root):
    root, run_dir = suite_root
    results = {r.key: r for r in evaluate_run_on_suite(run_dir, root, **FAST)}
    assert list(results) == ["cub", "cars", "dogs", "nabirds", "aircraft", "inat100"]  # the paper's table order

    cub = results["cub"]  # the run's own dataset: the test side of its (open) protocol
    assert (cub.role, cub.protocol, cub.metrics["images"]) == ("in-distribution", "open", 24)
    side = make_split(load_catalog("cub", root / "CUB_200_2011"), "open").test
    single = evaluate_side(Run(run_dir).load_model(), side, img_size=TINY_IMG, **FAST)  # what `dva eval --run` gives
    assert cub.metrics["recall@1"] == pytest.approx(single["recall@1"])

    nabirds, aircraft = results["nabirds"], results["aircraft"]  # out-of-distribution: the whole set
    assert (nabirds.role, nabirds.protocol, nabirds.metrics["images"]) == ("out-of-distribution", "all", 16)
    assert (aircraft.protocol, aircraft.metrics["images"]) == ("all", 24)
    for result in (cub, nabirds, aircraft):
        recalls = [result.metrics[f"recall@{k}"] for k in (1, 2, 4, 8)]
        assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    for key, folder in (("cars", "stanford_cars"), ("dogs", "stanford_dogs"), ("inat100", "inat2021")):
        assert results[key].skipped == f"not found at {root / folder}" and not results[key].metrics


def test_suite_command_prints_the_table_and_json(suite_root):
    root, run_dir = suite_root
    base = [
        "eval",
        "--run",
        str(run_dir),
        "--suite",
        "paper",
        "--data-root",
        str(root),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    table = CliRunner().invoke(app, base)  # in-process: the subprocess entry point is tested in test_cli
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["dataset", "split", "role", "images", "R@1", "R@2", "R@4", "R@8", "MAP@R"]
    rows = {line.split("|")[1].strip(): line for line in lines[2:] if line.startswith("|")}
    assert set(rows) == {"CUB-200-2011", "NABirds", "FGVC-Aircraft"} and "open test" in rows["CUB-200-2011"]
    assert any(line.startswith("note: Stanford Cars skipped, not found at") for line in lines)

    only = CliRunner().invoke(app, [*base, "--datasets", "nabirds", "--json"])
    assert only.exit_code == 0, only.output
    (result,) = json.loads(only.stdout)
    assert (result["key"], result["protocol"], result["images"]) == ("nabirds", "all", 16)


def test_dataset_dir_overrides_the_conventional_folder(suite_root, tmp_path):
    write_aircraft(tmp_path / "my_planes", num_variants=3, per_class=3)
    results = evaluate_suite(
        frozen_model(),
        None,
        img_size=TINY_IMG,
        dataset_dirs={"aircraft": tmp_path / "my_planes"},
        only=["aircraft"],
        **FAST,
    )
    assert [(r.key, r.root, r.metrics["images"]) for r in results] == [("aircraft", str(tmp_path / "my_planes"), 9)]
    with pytest.raises(ConfigError, match="unknown dataset.*planes"):
        evaluate_suite(frozen_model(), None, img_size=TINY_IMG, dataset_dirs={"planes": tmp_path}, **FAST)


def test_a_broken_copy_stops_the_suite_before_any_embedding(suite_root, tmp_path, monkeypatch):
    root, _ = suite_root
    broken = write_nabirds(tmp_path / "nabirds")
    next(iter(broken.paths.values())).unlink()
    embedded = []
    monkeypatch.setattr("dva.evaluate.suite.evaluate_side", lambda *a, **k: embedded.append(1) or {})
    with pytest.raises(DataError, match=r"cannot run the suite.*\n  NABirds .*1 problem"):
        evaluate_suite(frozen_model(), root, img_size=TINY_IMG, dataset_dirs={"nabirds": tmp_path / "nabirds"}, **FAST)
    assert embedded == []


def test_embeddings_are_one_float32_array_without_the_undecodable(tmp_path):
    data = write_cub(tmp_path, num_classes=2, per_class=3)
    data.paths[1].write_bytes(b"not a jpeg")
    records = make_split(load_catalog("cub", tmp_path), "all").test.records
    out = embed_records(frozen_model(), records, img_size=TINY_IMG, **FAST)
    assert out.vectors.dtype == np.float32 and out.vectors.shape == (5, 64) and out.vectors.flags.c_contiguous
    assert out.indices.tolist() == [0, 2, 3, 4, 5] and out.labels.tolist() == [0, 0, 1, 1, 1]
    assert [i for i, _ in out.failures] == [1]
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1, atol=1e-5)
