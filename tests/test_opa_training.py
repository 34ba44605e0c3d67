"""DVA training (ICA + OPA views + DPT loss), fallbacks counted in the log, OPA at test time, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import QUICK_EPOCH, TINY_IMG, run_cli, tiny_run_config
from PIL import Image
from safetensors.torch import load_file

from dva.data import load_catalog, make_split
from dva.errors import ConfigError
from dva.evaluate import embed_records
from dva.losses import BACKGROUND, DISCRIMINATIVE, ORIGINAL, DPTLoss
from dva.opa.test_time import discriminative_views
from dva.train import Trainer


def dva_config(root, boxes, **overrides):
    config = tiny_run_config(root, epochs=1, **overrides)
    config.model.method = "dva"
    config.opa.boxes = str(boxes)
    return config


def epoch_log(run_dir) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]


@pytest.mark.parametrize("method, options", [("dva", {"rank": 4}), ("dva-adaptformer", {"bottleneck": 8})])
def test_dva_step_trains_on_original_discriminative_and_background_views(
    cub_root, tmp_path, monkeypatch, method, options
):
    # the fake CUB boxes (20x24) cover 30% of each 40x40 image: every image gets all three views
    config = dva_config(cub_root.root, tmp_path / "boxes.jsonl")
    config.model.method, config.model.method_options = method, options  # OPA and DPT serve either adapter
    config.opa.detector = "dataset"  # detect (look up) the boxes into opa.boxes first
    received = []
    real_forward = DPTLoss.forward

    def spy(self, views):
        out = real_forward(self, views)
        received.append(({k: (e.detach().clone(), y.clone()) for k, (e, y) in views.items()}, out))
        return out

    monkeypatch.setattr(DPTLoss, "forward", spy)
    Trainer(config, tmp_path / "run", progress=False).fit()

    assert (tmp_path / "boxes.jsonl").is_file()
    views, out = received[0]
    assert set(views) == {ORIGINAL, DISCRIMINATIVE, BACKGROUND}
    (e_orig, y_orig), (e_disc, y_disc), (e_back, y_back) = views[ORIGINAL], views[DISCRIMINATIVE], views[BACKGROUND]
    assert len(y_orig) == len(y_disc) == len(y_back) == 8
    assert torch.equal(y_orig, y_disc) and y_orig.max() < 3
    assert (y_back == 3).all()  # the background class: index = number of classes
    assert not torch.allclose(e_orig, e_disc) and not torch.allclose(e_orig, e_back)
    assert torch.allclose(out.total, out.parts["proxy"] + 3.0 * out.parts["dist"])
    assert load_file(tmp_path / "run" / "model.safetensors")["loss.proxy_anchor.proxies"].shape == (4, 64)
    assert "events" not in epoch_log(tmp_path / "run")  # nothing fell back
    adapter = ".mlp.down." if method == "dva-adaptformer" else ".qkv.down."
    assert any(adapter in name for name in load_file(tmp_path / "run" / "model.safetensors"))


@pytest.mark.parametrize("transfer", ["teacher", "embedding", "relation"])
def test_dva_transfer_option_reaches_the_loss_and_background_can_be_dropped(cub_root, tmp_path, monkeypatch, transfer):
    config = dva_config(cub_root.root, tmp_path / "boxes.jsonl")
    config.opa.detector = "dataset"
    config.model.method_options = {"transfer": transfer, "background": False}
    received = []
    real_forward = DPTLoss.forward

    def spy(self, views):
        received.append((self.transfer, set(views)))
        return real_forward(self, views)

    monkeypatch.setattr(DPTLoss, "forward", spy)
    Trainer(config, tmp_path / "run", progress=False).fit()
    assert received[0] == (transfer, {ORIGINAL, DISCRIMINATIVE})  # no background views made ...
    proxies = load_file(tmp_path / "run" / "model.safetensors")["loss.proxy_anchor.proxies"]
    assert proxies.shape == (3, 64)  # ... and no background proxy
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["method_options"]
    assert saved == {"transfer": transfer, "background": False}


def test_two_stage_schedule_trains_object_views_alone_first(cub_root, tmp_path, monkeypatch):
    config = dva_config(cub_root.root, tmp_path / "boxes.jsonl")
    config.train.epochs = 2
    config.opa.detector = "dataset"
    config.model.method_options = {"transfer": "teacher", "object_first": 0.5}
    stages = []
    real_forward = DPTLoss.forward

    def spy(self, views):
        stages.append(self.transfer_on)
        return real_forward(self, views)

    monkeypatch.setattr(DPTLoss, "forward", spy)
    Trainer(config, tmp_path / "run", progress=False).fit()
    half = len(stages) // 2
    assert len(stages) >= 2 and stages == [False] * half + [True] * (len(stages) - half)


def test_fallbacks_are_counted_in_the_epoch_log_as_the_contact_sheet_counts_them(cub_root, tmp_path, capsys):
    from dva.opa import create_detector, detect_boxes, read_box_file
    from dva.opa.sheet import box_statistics

    split = make_split(load_catalog("cub", cub_root.root), "open")
    boxes = tmp_path / "boxes.jsonl"
    detect_boxes(
        create_detector("dataset"), {"train": split.train}, boxes, dataset="cub", root=cub_root.root, progress=False
    )
    header, *rows = boxes.read_text().splitlines()
    rows = [json.loads(r) for r in rows]
    rows[2]["score"] = 0.3  # not trusted
    rows[3]["box"] = [0, 0, 40, 30]  # 75% of the image: no background view
    rows[4]["box"] = None  # nothing found
    kept = [header] + [json.dumps(r) for r in rows[:-2]]  # the last two images have no box at all
    boxes.write_text("\n".join(kept) + "\n")

    Trainer(dva_config(cub_root.root, boxes), tmp_path / "run", progress=False).fit()
    # 24 training images, batches of 8: every image is seen once in the epoch
    events = epoch_log(tmp_path / "run")["events"]
    assert events == {"no_box": 2, "low_score": 1, "large_box": 1, "no_detection": 1}
    assert "no box for 2 of 24 training images" in capsys.readouterr().err
    # `dva views` on the same file predicts the log: one rule (ViewPolicy) decides both
    sheet = box_statistics(read_box_file(boxes, root=cub_root.root))
    assert {k: sheet[k] for k in ("low_score", "large_box", "no_detection")} == {
        k: events[k] for k in ("low_score", "large_box", "no_detection")
    }
    assert sheet["images"] + events["no_box"] == len(split.train) and sheet["background"] == 19


def test_views_reports_the_median_box_area_and_advises_zoom_out_for_tight_crops(cub_root, tmp_path, capsys):
    from dva.opa.sheet import TIGHT_MEDIAN_AREA

    boxes = tmp_path / "boxes.jsonl"
    code, _, err = run_cli(
        capsys, "detect", "--detector", "dataset", "--dataset", "cub", "--data", str(cub_root.root), "--out", str(boxes)
    )
    assert code == 0, err
    header, *rows = boxes.read_text().splitlines()
    parsed = [json.loads(r) for r in rows]

    def views_of(box_of) -> tuple[dict, str]:
        for row in parsed:
            w, h = row["size"]
            row["box"] = box_of(w, h)
        boxes.write_text("\n".join([header, *map(json.dumps, parsed)]) + "\n")
        args = ("views", "--boxes", str(boxes), "--out", str(tmp_path), "--limit", "2", "--tile", "32")
        code, _, err = run_cli(capsys, *args)
        assert code == 0, err
        code, out, _ = run_cli(capsys, *args, "--json")
        return json.loads(out), err

    tight, err = views_of(lambda w, h: [0, 0, w, 0.9 * h])  # the object fills the frame, as in cub100
    assert tight["median_area"] == pytest.approx(0.9, abs=0.02) and tight["median_area"] >= TIGHT_MEDIAN_AREA
    assert "--zoom-out 0.5" in tight["advice"] and "90%" in tight["advice"] and "--zoom-out 0.5" in err
    loose, err = views_of(lambda w, h: [0, 0, w / 2, h / 2])  # a quarter of the frame: nothing to advise
    assert loose["median_area"] == pytest.approx(0.25, abs=0.02)
    assert loose["advice"] is None and "zoom-out" not in err


def test_dva_without_boxes_is_a_clear_error(cub_root, tmp_path):
    config = tiny_run_config(cub_root.root)
    config.model.method = "dva"
    with pytest.raises(ConfigError, match="needs boxes: pass --boxes FILE .* or --detector NAME"):
        Trainer(config, tmp_path / "run", progress=False).fit()


def test_opa_at_test_time_embeds_discriminative_views(cub_root, tmp_path):
    from dva.models import create_model
    from dva.opa import create_detector, detect_boxes

    split = make_split(load_catalog("cub", cub_root.root), "open")
    boxes = tmp_path / "boxes.jsonl"
    detect_boxes(
        create_detector("dataset"),
        {"test": split.test},
        boxes,
        dataset="cub",
        root=cub_root.root,
        limit=20,
        progress=False,
    )  # 4 test images left without a box
    config = tiny_run_config(cub_root.root)
    view, counts = discriminative_views(boxes, split.test, config, root=str(cub_root.root), dataset="cub")
    assert counts == {"discriminative": 20, "no_box": 4}
    model = create_model(config.model)
    kwargs = dict(img_size=TINY_IMG, num_workers=0, device="cpu", progress=False)
    plain = embed_records(model, split.test.records, **kwargs)
    opa = embed_records(model, split.test.records, view=view, **kwargs)
    changed = (abs(plain.vectors - opa.vectors).max(axis=1) > 1e-5).tolist()
    assert changed == [True] * 20 + [False] * 4
    image = Image.new("RGB", (40, 40))
    assert view(image, split.test.records[0].path).size == (22, 28)  # the 20x24 box, enlarged 1.1x


def dva_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dva", *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"dva {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def test_cli_detect_views_train_and_eval_with_opa(cub_root, tmp_path):
    data = ["--dataset", "cub", "--data", str(cub_root.root)]
    boxes = tmp_path / "boxes.jsonl"
    report = json.loads(
        dva_cli(
            "detect", "--detector", "dataset", *data, "--test-only", "--out", str(boxes), "--quiet", "--json"
        ).stdout
    )
    assert report["images"] == 24
    report = json.loads(
        dva_cli(
            "detect", "--detector", "dataset", *data, "--include-test", "--out", str(boxes), "--quiet", "--json"
        ).stdout
    )
    assert report["images"] == 48 and report["already_cached"] == 24 and report["detected_now"] == 24

    sheet = json.loads(
        dva_cli(
            "views",
            "--boxes",
            str(boxes),
            "--out",
            str(tmp_path / "sheet"),
            "--limit",
            "3",
            "--tile",
            "64",
            "--per-row",
            "2",
            "--json",
        ).stdout
    )
    assert sheet["shown"] == 3 and sheet["background"] == 48 and sheet["low_score"] == 0
    with Image.open(sheet["sheet"]) as png:
        assert png.format == "PNG" and png.width == 2 * 3 * 64 + 6  # two images per row, 6 px apart

    run = tmp_path / "run"
    summary = json.loads(
        dva_cli(
            "train",
            *data,
            "--boxes",
            str(boxes),
            "--backbone",
            "test_vit",
            "--no-pretrained",
            "--img-size",
            "32",
            "--rank",
            "4",
            *QUICK_EPOCH,
            "--out",
            str(run),
            "--quiet",
            "--json",
        ).stdout
    )
    assert summary["method"] == "dva"  # the default method

    metrics = json.loads(dva_cli("eval", "--run", str(run), "--opa-test", "--workers", "0", "--quiet", "--json").stdout)
    assert metrics["images"] == 24 and metrics["opa_test"] == {"boxes": str(boxes), "discriminative": 24}


def test_cli_detector_option_caches_into_the_run_and_boxes_need_an_opa_method(cub_root, tmp_path):
    from dva.cli.train import _check_opa

    config = tiny_run_config(cub_root.root)
    config.model.method, config.opa.detector = "dva", "dataset"
    _check_opa(config, tmp_path / "run")
    assert config.opa.boxes == str(tmp_path / "run" / "boxes.jsonl")
    config.model.method = "ica"
    with pytest.raises(ConfigError, match="--boxes/--detector give OPA's object views, which method 'ica'"):
        _check_opa(config, tmp_path / "run")
