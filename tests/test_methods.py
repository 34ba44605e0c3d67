"""Every training method: what it trains (exactly), where it starts, its options, counts and saved runs."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable

import pytest
import torch
from conftest import QUICK_EPOCH, TINY_BACKBONE, TINY_IMG, TINY_MODEL, tiny_run_config, write_cub

from dva.config import ModelConfig
from dva.errors import CheckpointError, ConfigError
from dva.losses import DPTLoss
from dva.models import AdaptMLP, CLIPAdapter, count_parameters, create_model, list_methods, parameter_report
from dva.runs import Run
from dva.train import Trainer
from dva.train.trainer import build_optimizer

#: For each method, the parameters (by name) it must train, and nothing else.
TRAINED: dict[str, Callable[[str], bool]] = {
    "full": lambda n: n.startswith("backbone."),
    "partial-attn": lambda n: ".attn.qkv." in n,
    "partial-proj": lambda n: ".attn.proj." in n,
    "partial-mlp": lambda n: ".mlp." in n,
    "ica": lambda n: ".qkv.down." in n or ".qkv.up." in n,
    "dva": lambda n: ".qkv.down." in n or ".qkv.up." in n,
    "adaptformer": lambda n: ".mlp.down." in n or ".mlp.up." in n,
    "dva-adaptformer": lambda n: ".mlp.down." in n or ".mlp.up." in n,
    "clip-adapter": lambda n: n.startswith("head."),
    "lora": lambda n: ".qkv.down." in n or ".qkv.up." in n,
    "vpt-deep": lambda n: n.endswith(".prompts"),
    "vptsp-g": lambda n: n.endswith(".prompts") or n.endswith(".bias"),  # VPT-deep + BitFit; the rest is in the loss
}
FINE_TUNING = ("full", "partial-attn", "partial-proj", "partial-mlp")


def tiny(method: str, **options) -> torch.nn.Module:
    return create_model(
        backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method=method, method_options=options, rank=4
    )


def test_every_registered_method_is_covered():
    assert set(list_methods()) == set(TRAINED) | {"frozen"}


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_one_step_trains_exactly_what_the_method_names(method, tmp_path):
    model = tiny(method).train()
    expected = {n for n, _ in model.named_parameters() if TRAINED[method](n)}
    assert expected, f"{method} must train something"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    config = tiny_run_config(tmp_path)
    loss_fn = DPTLoss(3, model.embed_dim, background=False)
    optimizer = build_optimizer(model, loss_fn, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, TINY_IMG, TINY_IMG), torch.arange(8) % 3
    loss_fn({"original": (model(images), labels)}).total.backward()
    optimizer.step()

    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= expected  # the step moved trained weights and nothing else


def test_frozen_trains_nothing():
    assert count_parameters(tiny("frozen")).trainable == 0


@pytest.mark.parametrize("method", ["adaptformer", "clip-adapter"])
def test_new_adapters_start_at_the_frozen_model(method):
    x = torch.randn(4, 3, TINY_IMG, TINY_IMG)
    frozen, adapted = tiny("frozen").eval(), tiny(method).eval()
    with torch.no_grad():
        reference, output = frozen(x), adapted(x)
    if method == "adaptformer":
        assert torch.equal(reference, output)  # the zero-initialised up projection adds exactly 0
    else:
        # 0.2 * 0 + 0.8 * x, L2-normalised: x's direction, up to the rounding of the 0.8 scaling
        torch.testing.assert_close(output, reference, rtol=0, atol=1e-6)


def test_adaptformer_sits_beside_every_mlp_and_clip_adapter_in_the_head():
    model = tiny("adaptformer")
    wrapped = [b.mlp for b in model.backbone.blocks]
    assert all(isinstance(m, AdaptMLP) for m in wrapped)
    layer = wrapped[0]
    assert layer.down.out_features == 64 and layer.up.bias is not None and layer.config.scale == 0.1
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    head = tiny("clip-adapter").head
    assert isinstance(head, CLIPAdapter) and head.down.bias is None and head.down.out_features == 64 // 4


def test_trained_adapters_change_the_output_and_survive_merge_adapters():
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    for method in ("adaptformer", "clip-adapter"):
        model = tiny(method).eval()
        torch.manual_seed(3)
        for _name, p in model.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)
        with torch.no_grad():
            before = model(x)
            model.merge_adapters()  # non-linear adapters are not merged: outputs must not change
            after = model(x)
        assert torch.equal(before, after) and not model.is_merged
        with torch.no_grad():
            assert not torch.allclose(before, tiny("frozen").eval()(x), atol=1e-3)


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("full", {}, 85_798_656),
        ("partial-attn", {}, 21_261_312),
        ("partial-proj", {}, 7_087_104),
        ("partial-mlp", {}, 56_669_184),
        ("clip-adapter", {}, 294_912),  # the paper's 0.295M exactly
        ("adaptformer", {}, 1_189_632),  # 12 x (768*64 + 64 + 64*768 + 768); the paper says 0.590M
        ("adaptformer", {"bottleneck": 32}, 599_424),
        ("lora", {}, 589_824),  # ICA's count at rank 16: 12 x 2 x (768*16 + 16*768)
        ("lora", {"rank": 8}, 294_912),
        ("vpt-deep", {}, 92_160),  # 12 blocks x 10 prompts x 768
        ("vpt-deep", {"bitfit": True}, 92_160 + 102_912),  # + 12 x 8,448 block biases + 2 x 768
        ("vptsp-g", {}, 184_320 + 102_912),  # 12 x 20 x 768 prompts + BitFit; class prompts and GRU: loss side
    ],
)
def test_vit_b16_counts(method, options, expected):
    report = parameter_report(backbone="vit_base_patch16_224", method=method, method_options=options)
    bitfit = options.get("bitfit", method == "vptsp-g")
    added = 0 if method in FINE_TUNING else expected - (102_912 if bitfit else 0)
    assert report.trainable == expected and report.total == 85_798_656 + added


def test_parameter_report_counts_what_create_model_builds():
    for method in ("partial-mlp", "adaptformer", "ica"):
        built = count_parameters(tiny(method))
        assert parameter_report(backbone=TINY_BACKBONE, img_size=TINY_IMG, method=method, rank=4) == built


def test_method_options_are_checked_by_name_and_type():
    assert count_parameters(tiny("adaptformer", bottleneck=8)).trainable == 6 * (64 * 8 + 8 + 8 * 64 + 64)
    with pytest.raises(ConfigError, match="unknown field.*botleneck"):
        tiny("adaptformer", botleneck=8)
    with pytest.raises(ConfigError, match="bottleneck: expected int"):
        tiny("adaptformer", bottleneck="wide")
    with pytest.raises(ConfigError, match="'full' takes no method options"):
        tiny("full", bottleneck=8)
    with pytest.raises(ConfigError, match="reduction 5 does not divide"):
        tiny("clip-adapter", reduction=5)


@pytest.mark.parametrize("method", ["partial-proj", "adaptformer", "clip-adapter", "vpt-deep"])
def test_a_trained_run_rebuilds_to_the_trained_model(method, tmp_path):
    config = tiny_run_config(write_cub(tmp_path / "cub").root, epochs=1)
    config.model.method = method
    config.model.method_options = {}  # the tiny ICA rank is an option of ica, not of method
    trainer = Trainer(config, tmp_path / "run", progress=False)
    summary = trainer.fit()
    assert summary["trainable_params"] == count_parameters(trainer.model).trainable
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        assert torch.equal(Run(tmp_path / "run").load_model()(x), trainer.model.eval()(x))

    if method == "vpt-deep":  # prompts are tokens, not weights: no plain timm form to export
        from dva.export import export_run

        with pytest.raises(ConfigError, match="'vpt-deep' adds modules that cannot be merged"):
            export_run(tmp_path / "run", tmp_path / "exported")

    # weights trained with other method options are refused, naming the field
    if method == "clip-adapter":
        other = tmp_path / "other"
        shutil.copytree(tmp_path / "run", other)
        saved = json.loads((other / "config.json").read_text())
        saved["model"]["method_options"] = {"ratio": 0.5}
        (other / "config.json").write_text(json.dumps(saved))
        with pytest.raises(CheckpointError, match="method_options"):
            Run(other).load_model()


def test_model_config_keeps_method_options_through_save_and_load(tmp_path):
    config = tiny_run_config(tmp_path)
    config.model = ModelConfig(
        backbone=TINY_BACKBONE, pretrained=False, method="adaptformer", method_options={"bottleneck": 16, "scale": 0.5}
    )
    config.save(tmp_path / "config.json")
    loaded = type(config).load(tmp_path / "config.json")
    assert loaded.model.method_options == {"bottleneck": 16, "scale": 0.5}
    layer = create_model(loaded.model).backbone.blocks[0].mlp
    assert layer.down.out_features == 16 and layer.config.scale == 0.5


def test_train_cli_passes_method_options_into_the_run(cub_root, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--dataset",
                "cub",
                "--data",
                str(cub_root.root),
                *TINY_MODEL,
                "--method",
                "clip-adapter",
                "--method-option",
                "ratio=0.5",
                "--method-option",
                "reduction=8",
                *QUICK_EPOCH,
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--json",
            ]
        )
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 2 * 64 * 8
    head = Run(tmp_path / "run").load_model().head
    assert head.config.ratio == 0.5 and head.config.reduction == 8


# ---------------------------------------------------------------- PEFT peers (issue 12)


def test_vpt_deep_with_no_prompts_is_exactly_the_frozen_model():
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        assert torch.equal(tiny("vpt-deep", num_prompts=0).eval()(x), tiny("frozen").eval()(x))


@pytest.mark.parametrize(
    "backbone, img_size, prefix",
    [(TINY_BACKBONE, TINY_IMG, 1), ("vit_small_patch14_dinov2", 28, 1), ("vit_small_patch14_reg4_dinov2", 28, 5)],
)
def test_vpt_deep_prompts_sit_after_the_prefix_tokens_and_leave_before_the_norm(backbone, img_size, prefix):
    from dva.models.vpt import PromptedBlock

    model = create_model(
        backbone=backbone, pretrained=False, img_size=img_size, method="vpt-deep", method_options={"num_prompts": 3}
    ).eval()
    block = model.backbone.blocks[0]
    assert isinstance(block, PromptedBlock) and block.num_prefix_tokens == prefix
    seen = []
    block.block.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    final = []
    model.backbone.norm.register_forward_pre_hook(lambda m, args: final.append(args[0]))
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        out = model(x)
    tokens = prefix + (img_size // model.backbone.patch_embed.patch_size[0]) ** 2
    assert seen[0].shape[1] == tokens + 3 and final[0].shape[1] == tokens
    assert torch.equal(seen[0][:, prefix : prefix + 3], block.prompts.expand(2, -1, -1))  # right after the prefix
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    with torch.no_grad():  # the embedding is the CLS token after the final norm
        cls = torch.nn.functional.normalize(model.backbone.norm(final[0])[:, 0], dim=-1)
    torch.testing.assert_close(out, cls)
    bound = math.sqrt(6 / (3 * 14 * 14 + 384)) if "dinov2" in backbone else None
    if bound is not None:  # VPT's init: uniform in +-sqrt(6 / (patch_dim + d))
        prompts = torch.cat([b.prompts for b in model.backbone.blocks])
        assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound


def test_vpt_deep_bitfit_trains_prompts_and_every_bias_and_refuses_export(tmp_path):
    model = tiny("vpt-deep", bitfit=True)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if n.endswith(".prompts") or n.endswith(".bias")}
    assert any(".norm1.bias" in n for n in trained) and "backbone.patch_embed.proj.bias" in trained
    from dva.models import get_method

    assert not get_method("vpt-deep").mergeable


def _tiny_vptsp(num_classes: int = 3):
    from dva.models.vptsp import SemanticProxies, VPTSPConfig

    model = tiny("vptsp-g").train()
    loss_fn = DPTLoss(num_classes, model.embed_dim, background=False)
    return model, loss_fn, SemanticProxies(model, loss_fn.proxy_anchor, VPTSPConfig())


def test_vptsp_semantic_proxies_train_the_prompts_of_the_batch_classes_the_gru_and_the_biases():
    model, loss_fn, source = _tiny_vptsp(num_classes=4)
    assert source.class_prompts.shape == (1, 4, 5, model.embed_dim)
    assert sum(p.numel() for p in source.gru.parameters()) == 6 * 64**2 + 3 * 64  # test_vit is 64 wide
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, TINY_IMG, TINY_IMG), torch.tensor([2, 0, 2, 0, 2, 1])
    before = source.container.clone()
    proxies = source(model, images, labels, loss_fn.proxy_anchor.proxies)
    assert proxies.shape == (4, model.embed_dim)
    loss_fn.proxy_anchor(model(images), labels, proxies=proxies).backward()

    grad = source.class_prompts.grad[0].abs().sum(dim=(1, 2))
    assert (grad[:3] > 0).all() and grad[3] == 0  # class 3 is not in the batch: its prompts get nothing
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in source.gru.parameters())
    assert loss_fn.proxy_anchor.proxies.grad.abs().sum() > 0
    assert model.backbone.blocks[0].block.attn.qkv.bias.grad.abs().sum() > 0  # BitFit through both branches
    # the container moved for the batch's classes only, stays unit-norm and carries no graph
    moved = (source.container - before).abs().sum(dim=1) > 0
    assert moved.tolist() == [True, True, True, False] and not source.container.requires_grad
    torch.testing.assert_close(source.container.norm(dim=1), torch.ones(4))


def test_vptsp_semantic_embedding_uses_class_prompts_in_place_of_the_shared_ones():
    model, _, source = _tiny_vptsp()
    x, labels = torch.randn(2, 3, TINY_IMG, TINY_IMG), torch.tensor([0, 1])
    with torch.no_grad():
        semantic = source.semantic_embeddings(model.eval(), x, labels)
        source.class_prompts.zero_()
        for block in model.backbone.blocks:  # same prompts in both paths: the same embedding
            block.prompts.data = torch.zeros(1, 0, model.embed_dim)
        block0 = model.backbone.blocks[0]
        block0.prompts.data = torch.zeros(1, 5, model.embed_dim)
        torch.testing.assert_close(source.semantic_embeddings(model, x, labels), model(x))
    assert not torch.allclose(semantic, model(x), atol=1e-4)


def test_a_vptsp_run_trains_and_saves_its_proxy_generator_and_rebuilds(tmp_path):
    from dva.checkpoint import load_tensors

    config = tiny_run_config(write_cub(tmp_path / "cub").root, epochs=1)
    config.model.method = "vptsp-g"
    config.model.method_options = {}  # the tiny ICA rank is an option of ica, not of "vptsp-g"
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    source = trainer.loss_fn.proxy_source
    model_group = next(g for g in trainer.optimizer.param_groups if g["name"] == "model")
    assert any(p is source.class_prompts for p in model_group["params"])  # at lr, like the authors' code
    assert trainer.optimizer.state[source.class_prompts]["step"] > 0
    tensors, _ = load_tensors(tmp_path / "run" / "model.safetensors")
    assert torch.equal(tensors["loss.proxy_source.class_prompts"], source.class_prompts.detach())
    assert "loss.proxy_source.gru.w_i" in tensors and "loss.proxy_anchor.proxies" in tensors
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        assert torch.equal(Run(tmp_path / "run").load_model()(x), trainer.model.eval()(x))


def test_lora_is_icas_layer_scaled_by_alpha_over_rank_and_merges():
    from dva.models.ica import ICALinear

    lora = tiny("lora", rank=4, alpha=8.0).eval()
    ica = create_model(
        backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica", rank=4, scale=2.0
    ).eval()
    layer = lora.backbone.blocks[0].attn.qkv
    assert isinstance(layer, ICALinear) and layer.config.targets == ("q", "v") and layer.config.scale == 2.0
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        assert torch.equal(lora(x), tiny("frozen").eval()(x))  # up starts at zero
        torch.manual_seed(1)
        for _name, p in lora.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)
        ica.load_state_dict(lora.state_dict())
        before = lora(x)
        assert torch.equal(before, ica(x))  # ICA with scale alpha/r is the same model
        lora.merge_adapters()
        assert lora.is_merged
        torch.testing.assert_close(lora(x), before, rtol=0, atol=1e-5)
    from dva.models import get_method

    assert get_method("lora").mergeable and not get_method("lora").legacy_fields  # its rank is its own


@pytest.mark.parametrize(
    "backbone, method, options, trainable",
    [
        ("vit_base_patch16_224", "vpt-deep", ["num_prompts=10"], 92_160),
        ("vit_base_patch16_224", "vpt-deep", ["num_prompts=5", "bitfit=true"], 46_080 + 102_912),
        ("vit_base_patch16_224", "lora", ["rank=8", "alpha=16"], 294_912),
        ("vit_small_patch14_dinov2", "vptsp-g", [], 12 * 20 * 384 + 51_456),  # 143,616 (any img size)
    ],
)
def test_params_cli_counts_the_peers_with_their_options(capsys, backbone, method, options, trainable):
    from conftest import run_cli

    args = [a for o in options for a in ("--method-option", o)]
    code, out, _ = run_cli(
        capsys,
        "params",
        "--backbone",
        backbone,
        "--img-size",
        "112" if "dinov2" in backbone else "224",
        "--method",
        method,
        *args,
        "--json",
    )
    assert code == 0 and json.loads(out)["trainable"] == trainable


def _dinov2_tiny(method: str, **options) -> torch.nn.Module:
    """A random DINOv2-S/14 at 28 px: the backbone that has LayerScale, built in a second."""
    return create_model(
        backbone="vit_small_patch14_dinov2", pretrained=False, img_size=28, method=method, method_options=options
    )


def _is_norm_or_layerscale(name: str) -> bool:
    return ".norm" in name or name.endswith((".ls1.gamma", ".ls2.gamma"))  # ".norm": norm1, norm2 and the final norm


@pytest.mark.parametrize("method", ["ica", "dva"])
def test_also_train_trains_the_adapters_and_exactly_the_named_groups(method):
    adapters = TRAINED[method]
    model = _dinov2_tiny(method, also_train="layerscale,norm")  # any order, any separator
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.named_parameters() if adapters(n) or _is_norm_or_layerscale(n)}
    assert "backbone.blocks.11.ls2.gamma" in trained and "backbone.norm.weight" in trained
    assert not any(n.endswith("qkv.base_layer.bias") or ".mlp.fc1." in n for n in trained)

    biases = _dinov2_tiny(method, also_train="bias")
    assert {n for n, p in biases.named_parameters() if p.requires_grad} == {
        n for n, _ in biases.named_parameters() if adapters(n) or n.endswith(".bias")
    }
    plain = _dinov2_tiny(method)  # the default trains the adapters alone, as the paper
    assert {n for n, p in plain.named_parameters() if p.requires_grad} == {
        n for n, _ in plain.named_parameters() if adapters(n)
    }


def test_also_train_is_checked_and_spelled_one_way():
    from dva.models import get_method

    assert get_method("ica").resolve_options({"also_train": "norm, bias"})["also_train"] == "bias+norm"
    assert get_method("dva").resolve_options({"also_train": "layerscale+norm+norm"})["also_train"] == "norm+layerscale"
    with pytest.raises(ConfigError, match="also_train: unknown gamma; choose from bias, norm, layerscale"):
        get_method("ica").resolve_options({"also_train": "gamma"})
    with pytest.raises(ConfigError, match="no LayerScale"):  # the ViT-B/16 family has none: an error, not a no-op
        tiny("ica", also_train="layerscale")


def test_a_run_trained_with_also_train_rebuilds_and_exports_with_its_tuned_norms(tmp_path):
    import timm

    from dva.export import export_run

    config = tiny_run_config(write_cub(tmp_path / "cub").root, epochs=1)
    config.model.method = "ica"
    config.model.method_options = {"rank": 4, "also_train": "norm"}
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    norm = trainer.model.backbone.blocks[0].norm1.weight
    assert not torch.equal(norm.detach(), torch.ones_like(norm))  # timm initialises LayerNorm weights to 1
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        expected = trainer.model.eval()(x)
        assert torch.equal(Run(tmp_path / "run").load_model()(x), expected)
    # adapters merged and tuned norms kept: a plain timm model embeds as the run does
    out = export_run(tmp_path / "run", tmp_path / "export")
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.normalize(plain(x), dim=-1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "also_train, trainable",
    [
        ("", 294_912),  # ICA, rank 16 on q and v: 12 * 2 * (384 * 16 + 16 * 384)
        ("norm+layerscale", 294_912 + 19_200 + 9_216),  # 12 * 2 LayerNorms + the final one; 12 * 2 gains
        ("bias+norm+layerscale", 294_912 + 51_456 + 19_200 - 9_600 + 9_216),  # LayerNorm biases counted once
    ],
)
def test_params_cli_counts_also_train(capsys, also_train, trainable):
    from conftest import run_cli

    args = ["--backbone", "vit_small_patch14_dinov2", "--img-size", "112", "--method", "ica", "--json"]
    option = ["--method-option", f"also_train={also_train}"] if also_train else []
    code, out, _ = run_cli(capsys, "params", *args, *option)
    assert code == 0 and json.loads(out)["trainable"] == trainable
