"""``dva export``: the run's model as a plain timm folder whose embeddings equal the run's."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONE, TINY_IMG, tiny_run_config, write_cub
from safetensors.torch import load_file

from dva.errors import ConfigError
from dva.models import methods
from dva.models.methods import Method
from dva.runs import Run
from dva.train import Trainer


def images(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, TINY_IMG, TINY_IMG, generator=torch.Generator().manual_seed(0))


def test_exported_model_loads_with_timm_alone_and_embeds_like_the_run(trained_run, tmp_path):
    from dva.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--run", str(trained_run), "--out", str(tmp_path / "export"), "--onnx"])
    assert exit_info.value.code == 0
    out = tmp_path / "export"
    x = images()
    with torch.no_grad():
        expected = Run(trained_run).load_model()(x)  # adapters unmerged: the trained computation itself

        by_name = timm.create_model(
            TINY_BACKBONE, pretrained=False, num_classes=0, global_pool="token", img_size=TINY_IMG
        )
        by_name.load_state_dict(load_file(out / "model.safetensors"))  # strict: a plain timm state dict
        from_folder = timm.create_model(f"local-dir:{out}", pretrained=True)
        for model in (by_name.eval(), from_folder.eval()):
            assert torch.allclose(F.normalize(model(x), dim=-1), expected, atol=1e-5)

    # the preprocessing travels with it: timm resolves the run's normalisation and crop
    data = timm.data.resolve_data_config({}, model=from_folder)
    run_model = Run(trained_run).load_model()
    assert data["input_size"] == (3, TINY_IMG, TINY_IMG) and data["crop_mode"] == "squash"
    assert data["crop_pct"] == pytest.approx(32 / 37)  # 256/224 resize ratio
    assert (tuple(data["mean"]), tuple(data["std"])) == run_model.normalization
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == TINY_BACKBONE and config["dva"]["method"] == "ica"

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "model.onnx"))
    onnx_out = session.run(None, {"images": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(onnx_out), expected, atol=1e-4)


def test_full_fine_tuning_exports_its_weights(tmp_path):
    config = tiny_run_config(write_cub(tmp_path / "cub").root, epochs=1)
    config.model.method = "full"
    config.model.method_options = {}  # the tiny ICA rank is an option of ica, not of "full"
    Trainer(config, tmp_path / "run", progress=False).fit()
    from dva.export import export_run

    out = export_run(tmp_path / "run", tmp_path / "export")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(
            F.normalize(model(images()), dim=-1), Run(tmp_path / "run").load_model()(images()), atol=1e-5
        )


def test_unmergeable_methods_and_occupied_folders_are_refused(trained_run, tmp_path, monkeypatch):
    from dva.export import export_run

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_run(trained_run, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.setitem(methods._METHODS._entries, "ica", Method("ica", methods._ica, "ICA", mergeable=False))
    with pytest.raises(ConfigError, match="cannot be merged into the backbone"):
        export_run(run, tmp_path / "export")
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export.partial-*"))
