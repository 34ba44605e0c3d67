"""Config fields and their metadata: identity, resumable, the older layout, the method's own defaults."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import QUICK_EPOCH, TINY_BACKBONE, TINY_IMG, TINY_MODEL, run_cli

from dva.config import (
    ModelConfig,
    RunConfig,
    TrainingRecord,
    config_fields,
    from_dict,
    identity_dict,
    identity_fields,
    parse_assignments,
    read_run_file,
    resumable_fields,
    weights_fields,
    with_assignments,
)
from dva.errors import ConfigError
from dva.index.model import IndexModel
from dva.models.methods import FINE_TUNE_LR, DVAOptions
from dva.runs import Run

#: What may change on resume, and what is no part of a run's identity: the same six fields,
#: which trainer.RESUMABLE_CHANGES and reproduce.NOT_IDENTITY each listed before.
EXECUTION_DETAILS = {
    "data.root",
    "data.num_workers",
    "train.device",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.compile",
}


def test_every_field_says_what_it_is_and_whether_it_is_identity():
    names = {name for name, _ in config_fields(RunConfig)}
    for name, f in config_fields(RunConfig):
        assert f.metadata["help"].strip(), name
    assert resumable_fields() == EXECUTION_DETAILS
    assert set(identity_fields(RunConfig())) == names - EXECUTION_DETAILS
    assert "model.method_options" in names and "class_names" not in names  # training's record is apart
    # what weights files record and loading checks: all of the model but the input size
    assert weights_fields() == {"backbone", "pretrained", "init_seed", "method", "method_options"}


def test_a_config_of_the_older_layout_reads_ica_settings_as_method_options(tmp_path):
    raw = RunConfig().to_dict()
    raw["model"].pop("method_options")
    raw["model"].update(method="ica", targets=["v", "q"], rank=4, scale=0.5)
    raw.update(class_names=["a", "b"], num_classes=2, dva_version="0.1.0")  # config.json as training wrote it
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    config = RunConfig.load(path)
    assert config.model.method_options == {"targets": ["v", "q"], "rank": 4, "scale": 0.5}
    # methods that never read them drop them, as they always ignored them
    raw["model"]["method"] = "full"
    path.write_text(json.dumps(raw))
    assert RunConfig.load(path).model.method_options == {}
    # lora has a rank of its own: the old top-level (ICA) rank is not it
    assert from_dict(ModelConfig, {"method": "lora", "rank": 4}).method_options == {}
    with pytest.raises(ConfigError, match="model.rank=4 and model.method_options.rank=8 disagree"):
        from_dict(ModelConfig, {"method": "ica", "rank": 4, "method_options": {"rank": 8}})


def test_one_read_of_config_json_gives_the_config_and_the_record_as_their_loads_do(tmp_path):
    path = tmp_path / "config.json"
    config, record = RunConfig(), TrainingRecord(["a", "b"], 2, "0.1.0", "f1ngerpr1nt")
    config.save(path, record)
    raw = read_run_file(path)  # what resuming reads, once, to compare both halves
    assert RunConfig.from_saved(raw, where=str(path)) == RunConfig.load(path) == config
    assert TrainingRecord.from_saved(raw, where=str(path)) == TrainingRecord.load(path) == record


def test_dva_options_hold_icas_and_dpts_settings():
    options = DVAOptions(targets=("v", "q"), rank=8, transfer="teacher")
    assert options.targets == ("q", "v") and options.ica_config().rank == 8 and options.transfer == "teacher"
    with pytest.raises(ConfigError, match="unknown x"):
        DVAOptions(targets=("x",))


def test_identity_layout_is_stable_so_indexes_and_runs_keep_their_names():
    # Values computed by the code before ICA's settings became options (commit abce38e).
    frozen = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    assert frozen.fingerprint() == "cb7398435c305c8dab1bc71926206c1e618d6c390a6f8aaa975b9185e8ef7d93"
    ica = ModelConfig(method="ica", method_options={"rank": 4})
    assert identity_dict(ica) == {
        "backbone": ica.backbone,
        "pretrained": True,
        "init_seed": 0,
        "img_size": 224,
        "method": "ica",
        "method_options": {},
        "targets": ["q", "v"],
        "rank": 4,
        "scale": 1.0,
    }
    assert identity_dict(ModelConfig(method="full"))["rank"] == 16  # the old default, for every method


def _train_tiny(capsys, cub_root, out, *extra):
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "cub",
        "--data",
        str(cub_root.root),
        *TINY_MODEL,
        *QUICK_EPOCH,
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
        *extra,
    )
    assert code == 0, err
    return Run(out)


def test_train_full_fine_tunes_at_the_fine_tuning_lr_unless_told_otherwise(cub_root, tmp_path, capsys):
    run = _train_tiny(capsys, cub_root, tmp_path / "full", "--method", "full")
    assert run.config.train.lr == FINE_TUNE_LR == 1e-5
    steps = [json.loads(line) for line in run.metrics_path.read_text().splitlines() if '"step"' in line]
    assert steps and steps[0]["lr"] <= FINE_TUNE_LR  # what the optimizer used, not only what was saved

    from dva.cli.train import build_config

    def config(*layers_file, **train):
        overrides = {"model": {"method": "full"}, "train": train}
        return build_config(tmp_path / "new", overrides, layers_file[0] if layers_file else None, resume=False)

    assert config(lr=1e-4).train.lr == 1e-4  # --lr given
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train:\n  lr: 0.0003\n")
    assert config(yaml_file).train.lr == 3e-4  # set in --config
    adapters = build_config(tmp_path / "new", {"model": {"method": "ica"}}, None, resume=False)
    assert adapters.train.lr == 1e-3  # the adapters keep theirs


def test_train_config_file_of_the_older_layout_and_the_ica_flags(tmp_path):
    from dva.cli.train import build_config

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  method: dva\n  targets: [k, v]\n  rank: 8\n  method_options: {transfer: teacher}\n")
    config = build_config(tmp_path / "r", {}, old, resume=False)
    assert config.model.method_options == {"targets": ["k", "v"], "rank": 8, "transfer": "teacher"}
    flagged = build_config(tmp_path / "r", {"model": {"rank": 4}}, old, resume=False)
    assert flagged.model.method_options["rank"] == 4  # --rank over the file
    ignored = build_config(tmp_path / "r", {"model": {"method": "full", "rank": 4}}, None, resume=False)
    assert ignored.model.method_options == {}  # --rank means nothing to fine-tuning, as before


def test_the_trainer_leaves_the_callers_config_alone(cub_root, tmp_path):
    from conftest import tiny_run_config

    from dva.train import Trainer

    config = tiny_run_config(cub_root.root, epochs=1)
    before = dataclasses.asdict(config)
    Trainer(config, tmp_path / "run", progress=False).fit()
    assert dataclasses.asdict(config) == before
    assert Run(tmp_path / "run").record.class_names == ["Species_0", "Species_1", "Species_2"]


def test_weights_metadata_of_the_older_layout_is_checked_as_options(tmp_path):
    from dva.errors import CheckpointError
    from dva.runs import check_weights_metadata

    config = RunConfig(model=ModelConfig(method="dva", method_options={"rank": 4}))
    # what a weights file recorded before: ICA's targets and rank at the top, no scale
    old = {
        "backbone": config.model.backbone,
        "method": "dva",
        "targets": ["q", "v"],
        "rank": 4,
        "img_size": 224,
        "method_options": {"transfer": "proxy", "background": True, "object_first": 0.0},
        "dva_version": "0.1.0",
    }
    check_weights_metadata(old, config, tmp_path / "w.safetensors")  # accepted: the same model
    check_weights_metadata({**old, "img_size": 112}, config, tmp_path / "w.safetensors")  # run at another size
    with pytest.raises(CheckpointError, match="method_options.rank=8 but the run config says method_options.rank=4"):
        check_weights_metadata({**old, "rank": 8}, config, tmp_path / "w.safetensors")
    lora = RunConfig(model=ModelConfig(method="lora", method_options={"rank": 4}))
    old_lora = {**old, "method": "lora", "rank": 16, "method_options": {"rank": 4, "alpha": 8.0}}
    check_weights_metadata(old_lora, lora, tmp_path / "w.safetensors")  # the top-level rank was ICA's, not lora's


def test_every_field_is_settable_from_the_command_line_with_set(tmp_path, capsys):
    from dva.cli.train import build_config

    assert parse_assignments(["train.alpha=16", "opa.aspect=[2, 3]", "data.resize_size=128"]) == {
        "train": {"alpha": 16},
        "opa": {"aspect": [2, 3]},
        "data": {"resize_size": 128},
    }
    config = build_config(tmp_path / "r", parse_assignments(["train.alpha=16", "opa.aspect=[2, 3]"]), None, False)
    assert config.train.alpha == 16.0 and tuple(config.opa.aspect) == (2, 3)
    with pytest.raises(ConfigError, match=r"--set train\.alpah: no such config field"):
        parse_assignments(["train.alpah=16"])
    with pytest.raises(ConfigError, match="SECTION.FIELD=VALUE"):
        parse_assignments(["train.alpha"])
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "x"), "--set", "train.nope=1")
    assert code == 2 and "train.nope: no such config field" in err and not (tmp_path / "x").exists()


def test_with_assignments_changes_only_the_named_fields_and_checks_their_types():
    base = RunConfig(model=ModelConfig(method="ica", img_size=112))
    changed = with_assignments(base, ["train.zoom_out=0.5", "train.epochs=3"])
    assert changed.train.zoom_out == 0.5 and changed.train.epochs == 3
    assert changed.model == base.model and changed.opa == base.opa and base.train.zoom_out == 0.0
    assert with_assignments(base, []) is base
    with pytest.raises(ConfigError, match="train.epochs"):
        with_assignments(base, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train\.zoomout: no such config field"):
        with_assignments(base, ["train.zoomout=0.5"])
