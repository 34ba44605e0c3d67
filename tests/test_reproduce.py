"""``dva reproduce``: rows, shared run directories, resumability, the table beside the paper's, latency."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import QUICK_EPOCH, TINY_BACKBONE, TINY_IMG, run_cli, tiny_run_config, write_cub
from test_cli import dva

from dva.data import load_catalog
from dva.errors import ConfigError
from dva.evaluate.latency import compare_latency, measure_detector_latency
from dva.models import create_model
from dva.reproduce import (
    TABLES,
    TEST_DISCRIMINATIVE,
    Row,
    dva_row,
    method_row,
    row_config,
    run_key,
    run_rows,
    summarize,
    to_markdown,
)
from dva.reproduce import run as reproduce_run
from dva.reproduce.tables import PROMPT_LR
from dva.train.trainer import Trainer


def write_box_file(path: Path, root: Path, paths: list[Path], *, detector: str = "dataset") -> Path:
    """A box cache as `dva detect` writes it: a header, then one trusted box per image."""
    lines = [
        {
            "format": "dva-boxes",
            "version": 1,
            "detector": detector,
            "settings": {},
            "prompt": None,
            "dataset": "cub",
            "root": str(root),
        }
    ]
    lines += [
        {"path": str(p.relative_to(root)), "box": [4.0, 6.0, 30.0, 34.0], "score": 0.9, "size": [40, 40]} for p in paths
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def base(cub_root, tmp_path):
    config = tiny_run_config(cub_root.root, epochs=1)
    config.opa.boxes = str(write_box_file(tmp_path / "boxes.jsonl", cub_root.root, cub_root.paths))
    return config


def keys(table: str, base_config) -> dict[str, str]:
    return {row.name: run_key(row_config(row, base_config, 0)) for row in TABLES[table].rows}


def test_identical_rows_of_different_tables_share_one_run(base):
    t1, t8, t9, t10, lam = (keys(t, base) for t in ("table1", "table8", "table9", "table10", "lambda"))
    dva_run = t8["Base + ICA + OPA + DPT"]
    assert dva_run == t9["Q, V"] == t10["DVA (Ours)"] == lam["3"]
    assert t8["Base + ICA + OPA"] == lam["0"]  # trained once, evaluated on two kinds of test images
    assert t1["Fine-tuning"] == t10["Fine-tuning"]
    assert len(set(t9.values())) == 7 and len(set(lam.values())) == 6
    assert dva_run.startswith("dva-qv-r4-lam3-e1-img32-s0-")  # the tiny config's rank 4 (default 16)
    assert t8["Base + ICA"].startswith("ica-qv-r4-e1-img32-s0-")


def test_run_key_ignores_what_does_not_change_the_result(base):
    row = TABLES["table8"].rows[1]  # Base + ICA
    key = run_key(row_config(row, base, 0))
    moved = tiny_run_config("/elsewhere/cub", epochs=1)
    moved.data.num_workers, moved.train.device, moved.train.compile = 4, "cuda", True
    assert run_key(row_config(row, moved, 0)) == key  # data location, workers, device, compile
    assert run_key(row_config(row, base, 1)) != key  # the seed
    base.train.epochs = 2
    assert run_key(row_config(row, base, 0)) != key
    # settings the method does not read are dropped: ICA ignores boxes and lambda, fine-tuning ignores targets
    config = row_config(row, base, 0)
    assert config.opa.boxes is None and config.train.lambda_dist == 3.0
    tuned = row_config(method_row("ft", "full", {}), base, 0)
    base.model.method_options["targets"] = ("k",)
    assert run_key(row_config(method_row("ft", "full", {}), base, 0)) == run_key(tuned)


def test_run_key_names_a_changed_ica_rank_or_scale(base):
    """Runs at another rank are told apart by name, not only by hash; the default names stay."""
    ica, dva_row = TABLES["table8"].rows[1], TABLES["table8"].rows[3]
    base.model.method_options = {}  # ICA's defaults: rank 16, scale 1
    default_ica, default_dva = run_key(row_config(ica, base, 0)), run_key(row_config(dva_row, base, 0))
    assert default_ica.startswith("ica-qv-e1-") and default_dva.startswith("dva-qv-lam3-e1-")
    base.model.method_options = {"rank": 64, "scale": 0.5}
    changed_ica, changed_dva = run_key(row_config(ica, base, 0)), run_key(row_config(dva_row, base, 0))
    assert changed_ica.startswith("ica-qv-r64-scale0.5-e1-")
    assert changed_dva.startswith("dva-qv-r64-scale0.5-lam3-e1-")
    assert changed_ica.rsplit("-", 1)[1] != default_ica.rsplit("-", 1)[1]  # and the hash differs
    assert run_key(row_config(method_row("ft", "full", {}), base, 0)).startswith("full-e1-")  # not an ICA option


def test_also_train_names_its_runs_only_when_set(base):
    """An option added after runs were finished leaves their names (and hashes) as they were."""
    from dva.config import identity_dict

    base.model.method_options = {}
    tuned = {"also_train": "layerscale+norm"}
    pairs = {
        "ica": (TABLES["table8"].rows[1], method_row("ICA", "ica", {}, options=tuned)),
        "dva": (TABLES["table8"].rows[3], dva_row("DVA", {}, options=tuned)),
    }
    for method, (plain_row, tuned_row) in pairs.items():
        plain = row_config(plain_row, base, 0)
        assert plain.model.method_options["also_train"] == ""  # written out in full, left out of the identity
        assert "also_train" not in identity_dict(plain)["model"]["method_options"]
        before, key = run_key(plain), run_key(row_config(tuned_row, base, 0))
        assert before.startswith(f"{method}-qv-") and "also_train" not in before
        assert key.startswith(f"{method}-qv-") and "-also_train-norm+layerscale-e1-" in key
        assert key.rsplit("-", 1)[1] != before.rsplit("-", 1)[1]


def test_rows_are_checked_before_anything_is_trained(base, tmp_path):
    base.opa.boxes = None
    with pytest.raises(ConfigError, match="--boxes"):
        run_rows(TABLES["table9"].rows, base, tmp_path / "out")
    base.opa.boxes = "boxes.jsonl"
    with pytest.raises(ConfigError, match="--test-boxes"):
        run_rows(TABLES["table8"].rows, base, tmp_path / "out")
    with pytest.raises(ValueError, match="test_view"):
        Row("x", {}, test_view="cropped")
    assert not (tmp_path / "out").exists()


def test_run_rows_trains_shared_runs_once_and_resumes_without_training(base, tmp_path, monkeypatch):
    rows = [
        method_row("Base", "frozen", {"recall@1": 72.5}),
        method_row("ICA", "ica", {"recall@1": 83.6}),
        dva_row("OPA at test", {"recall@1": 86.8}, lambda_dist=0.0, test_view=TEST_DISCRIMINATIVE),
        dva_row("lambda 0", {}, lambda_dist=0.0),  # the same run, evaluated on the original images
    ]
    out = tmp_path / "out"
    first = run_rows(
        rows,
        base,
        out,
        seeds=(0, 1),
        test_boxes=base.opa.boxes,
        latency=True,
        detector_ms=5.0,
        detector_note="test detector",
        progress=False,
        log=lambda _: None,
    )
    assert [(r.row.name, r.seed) for r in first] == [(row.name, s) for row in rows for s in (0, 1)]
    runs = {r.run_dir for r in first}
    assert len(runs) == 6 and all((d / "summary.json").is_file() for d in runs)  # 3 configs x 2 seeds
    opa, plain = first[4], first[6]
    assert opa.run_dir == plain.run_dir and opa.metrics != plain.metrics
    assert opa.metrics["test_views"] == {"discriminative": 24}
    assert [r.trained_now for r in first] == [True, True, True, True, True, True, False, False]
    assert first[0].trainable_params == 0 and first[2].trainable_params == 2 * 6 * 2 * 4 * 64
    assert opa.latency["total_ms"] == pytest.approx(opa.latency["model_ms"] + 5.0)
    assert first[1].latency is None and "detector_ms" not in first[0].latency  # timed once per row

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again = run_rows(rows, base, out, seeds=(0, 1), test_boxes=base.opa.boxes, progress=False, log=lambda _: None)
    assert not any(r.trained_now for r in again)
    assert [r.metrics for r in again] == [r.metrics for r in first]

    summary = summarize(TABLES["table8"], first)  # rows matched by name: only "Base" is in Table 8
    assert [r["name"] for r in summary["rows"]] == ["Base"]
    mine = summarize(_table(rows), first)
    ica = mine["rows"][1]["ours"]["recall@1"]
    assert len(ica["values"]) == 2 and ica["mean"] == pytest.approx(sum(ica["values"]) / 2)
    markdown = to_markdown(mine)
    assert "| ICA | " in markdown and " ± " in markdown and " / 83.6 |" in markdown


def _table(rows):
    from dva.reproduce import Table

    return Table("mine", "Mine", tuple(rows), ("recall@1", "recall@2"))


def test_cli_table8_end_to_end_then_nothing_is_trained_again(cub_root, tmp_path, capsys):
    boxes = write_box_file(tmp_path / "boxes.jsonl", cub_root.root, cub_root.paths)
    args = (
        "reproduce",
        "table8",
        "--dataset",
        "cub",
        "--data",
        str(cub_root.root),
        "--backbone",
        TINY_BACKBONE,
        "--no-pretrained",
        "--image-size",
        str(TINY_IMG),
        *QUICK_EPOCH,
        "--boxes",
        str(boxes),
        "--test-boxes",
        str(boxes),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and err.count(": training") == 4
    table = (tmp_path / "out" / "table8.md").read_text()
    assert table in out
    lines = [line for line in table.splitlines() if line.startswith("| Base")]
    assert [line.split(" | ")[0] for line in lines] == [
        "| Base",
        "| Base + ICA",
        "| Base + ICA + OPA",
        "| Base + ICA + OPA + DPT",
    ]
    assert lines[0].endswith(" / 1.51 |") and " / 86.8 | " in lines[2]
    saved = json.loads((tmp_path / "out" / "table8.json").read_text())
    assert saved["rows"][2]["ours"]["latency"]["detector"].startswith("dataset detector")
    assert all(row["ours"]["latency"]["model_ms"] > 0 for row in saved["rows"])

    code, out, err = run_cli(capsys, *args)
    assert code == 0 and ": training" not in err and err.count("done earlier") == 4


def test_cli_dry_run_prints_the_paper_counts_of_table9(capsys):
    out = dva("reproduce", "table9", "--dry-run", "--backbone", "vit_base_patch16_224").stdout  # as users run it
    for count in ("294,912", "589,824", "884,736"):
        assert count in out
    code, out, _ = run_cli(capsys, "reproduce", "table9", "--dry-run", "--backbone", "vit_base_patch16_224", "--json")
    rows = json.loads(out)
    assert [r["trainable"] for r in rows] == [294_912] * 3 + [589_824] * 3 + [884_736]
    assert [round(r["trainable"] / 1e6, 3) for r in rows] == [r["paper_params_m"] for r in rows]
    assert {r["status"] for r in rows} == {"to train"}


def test_cli_errors_name_the_missing_option(tmp_path, capsys):
    code, _, err = run_cli(capsys, "reproduce", "table4", "--dry-run")
    assert code == 2 and "unknown table 'table4'" in err
    code, _, err = run_cli(capsys, "reproduce", "table9", "--out", str(tmp_path / "o"))
    assert code == 2 and "--dataset NAME --data ROOT" in err
    code, _, err = run_cli(capsys, "reproduce", "table9", "--seeds", "0,0", "--dry-run")
    assert code == 2 and "--seeds expects distinct integers" in err
    code, out, _ = run_cli(capsys, "params", "--method", "adaptformer", "--method-option", "bottleneck=32", "--json")
    assert code == 0 and json.loads(out)["trainable"] == 599_424
    code, _, err = run_cli(capsys, "params", "--method", "adaptformer", "--method-option", "bottleneck")
    assert code == 2 and "KEY=VALUE" in err


def test_compare_latency_times_every_model_and_leaves_them_unmerged():
    threads = torch.get_num_threads()
    models = {
        m: create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method=m)
        for m in ("frozen", "ica")
    }
    timed = compare_latency(models, img_size=TINY_IMG, device="cpu", warmup=1, repeats=3)
    assert set(timed) == {"frozen", "ica"} and all(t.repeats == 3 and t.median_ms > 0 for t in timed.values())
    assert timed["ica"].device == "cpu, 1 thread(s)" and not models["ica"].is_merged
    assert torch.get_num_threads() == threads  # restored after timing on one thread

    seen = []
    latency = measure_detector_latency(seen.append, ["a", "b", "c"], warmup=2)
    assert seen == ["a", "a", "a", "b", "c"] and latency.repeats == 3


def test_one_box_file_is_one_run_however_its_path_is_spelled(base, tmp_path, monkeypatch):
    row = TABLES["table8"].rows[3]  # the full DVA reads the training boxes
    key = run_key(row_config(row, base, 0))
    monkeypatch.chdir(tmp_path)
    base.opa.boxes = "boxes.jsonl"  # the same file, relative to the working directory
    assert run_key(row_config(row, base, 0)) == key
    base.opa.boxes = "other.jsonl"
    assert run_key(row_config(row, base, 0)) != key


def test_peers_table_shares_ica_and_dva_runs_and_trains_each_peer_as_documented(base):
    peers, t8 = keys("peers", base), keys("table8", base)
    assert peers["ICA"] == t8["Base + ICA"] and peers["DVA (Ours)"] == t8["Base + ICA + OPA + DPT"]
    assert len(set(peers.values())) == 6  # VPT-deep with and without BitFit are two runs
    configs = {row.name: row_config(row, base, 0) for row in TABLES["peers"].rows}
    assert configs["VPT-deep + BitFit"].model.method_options == {"num_prompts": 10, "bitfit": True}
    assert configs["VPT-deep"].train.lr == configs["VPT-deep + BitFit"].train.lr == PROMPT_LR == 1e-3
    assert configs["LoRA (q, v; r 16, alpha 8)"].train.lr == configs["ICA"].train.lr
    vptsp = configs["VPTSP-G"].train
    assert (vptsp.optimizer, vptsp.lr, vptsp.proxy_lr, vptsp.weight_decay) == ("sgd", 1e-3, 1e-2, 1e-6)


def test_a_finished_run_is_reused_for_the_same_images_moved_but_not_for_other_images(
    base, cub_root, tmp_path, monkeypatch
):
    rows = [method_row("ICA", "ica", {})]
    out = tmp_path / "out"
    quiet = {"progress": False, "log": lambda _: None}
    assert run_rows(rows, base, out, **quiet)[0].trained_now
    moved = tmp_path / "moved"
    shutil.copytree(cub_root.root, moved)
    base.data.root = str(moved)
    loads = []
    monkeypatch.setattr(reproduce_run, "load_catalog", lambda *a: loads.append(a) or load_catalog(*a))
    assert not run_rows(rows, base, out, **quiet)[0].trained_now  # same run name, same images
    assert len(loads) == 1  # the test side and the fingerprint check share one catalog load
    image = moved / cub_root.paths[-1].relative_to(cub_root.root)
    image.write_bytes(image.read_bytes() + b"\0")  # now another collection under the same names
    with pytest.raises(ConfigError, match="trained on other images"):
        run_rows(rows, base, out, **quiet)


def test_a_finished_validation_fold_run_is_reused_not_refused(tmp_path):
    # Training records the fingerprint of the split it trained on; reproduce must rebuild the
    # same split (fold included) to recognise the run, or it would refuse its own run.
    base = tiny_run_config(write_cub(tmp_path / "cub", num_classes=10).root, epochs=1)
    base.data.val_classes, base.data.val_fold = 2, 1  # 5 training classes: 3 train, 2 validate
    rows = [method_row("ICA", "ica", {})]
    quiet = {"progress": False, "log": lambda _: None}
    assert run_rows(rows, base, tmp_path / "out", **quiet)[0].trained_now
    assert not run_rows(rows, base, tmp_path / "out", **quiet)[0].trained_now


def test_finished_runs_keep_their_names():
    # bench/quality.py's base and the names its finished runs have in bench/results/quality/runs/,
    # made before ICA's settings became method options: the same rows must find them again.
    from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig
    from dva.reproduce import DVA, FULL_FINE_TUNING

    base = RunConfig(
        model=ModelConfig(backbone="dinov2_vits14.imgfocus", img_size=112),
        data=DataConfig(dataset="cub100", root="/data/cub100", split="open", num_workers=1),
        train=TrainConfig(epochs=3),
        opa=OPAConfig(boxes="/work/main/bench/results/quality/boxes/cub100_saliency_train.jsonl"),
    )
    ica, ica_opa = TABLES["table8"].rows[1], TABLES["table8"].rows[2]
    assert run_key(row_config(ica, base, 1)) == "ica-qv-e3-img112-s1-5255659b"
    assert run_key(row_config(DVA, base, 2)) == "dva-qv-lam3-e3-img112-s2-737de68a"
    assert run_key(row_config(ica_opa, base, 0)) == "dva-qv-lam0-e3-img112-s0-a4e0f2d4"
    assert run_key(row_config(FULL_FINE_TUNING, base, 0)) == "full-e3-img112-s0-6f56957e"
    assert run_key(row_config(TABLES["table9"].rows[0], base, 0)) == "dva-q-lam3-e3-img112-s0-d3c36952"


def test_a_zoomed_out_run_gets_its_own_name(base):
    # zoom-out is identity only when set (dva.config.WHEN_SET): off, the names above stay
    from dva.reproduce import DVA as row

    plain = run_key(row_config(row, base, 0))
    base.train.zoom_out = 0.5
    zoomed = run_key(row_config(row, base, 0))
    assert zoomed.startswith("dva-qv-r4-lam3-zoom0.5-e1-img32-s0-") and zoomed[-8:] != plain[-8:]
    base.train.zoom_scale = (0.5, 0.75)
    assert run_key(row_config(row, base, 0)) not in {plain, zoomed}
    base.train.zoom_out, base.train.zoom_scale = 0.0, (0.35, 0.75)
    assert run_key(row_config(row, base, 0)) == plain
