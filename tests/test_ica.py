"""ICA adapters: structure, parameter counts (paper Table 9), zero init, merge/unmerge, export."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_BACKBONE, TINY_IMG

from dva.errors import ConfigError
from dva.models import ICAConfig, ICALinear, count_parameters, create_model, unload_ica
from dva.models.ica import ica_layers


def randomize_adapters(model: torch.nn.Module, std: float = 0.05) -> None:
    """Trained adapters are not zero; give ``up`` random values so the delta is visible."""
    torch.manual_seed(1)
    for layer in ica_layers(model):
        for up in layer.up.values():
            torch.nn.init.normal_(up.weight, std=std)


@pytest.mark.parametrize(
    "targets, expected",
    [(("q",), 294_912), (("k",), 294_912), (("q", "v"), 589_824), (("k", "v"), 589_824), (("q", "k", "v"), 884_736)],
)
def test_vit_b16_parameter_counts_match_paper_table9(targets, expected):
    model = create_model(backbone="vit_base_patch16_224", pretrained=False, method="ica", targets=targets, rank=16)
    report = count_parameters(model)
    assert report.trainable == expected
    assert report.total == 85_798_656 + expected  # ViT-B/16 without head + adapters


def test_only_adapters_are_trainable_and_backbone_is_frozen():
    model = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica", targets=("q", "v"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "ICA must add trainable parameters"
    assert all(".qkv.down." in n or ".qkv.up." in n for n in trainable)
    assert len(trainable) == 2 * 2 * len(model.backbone.blocks)  # (down, up) x (q, v) x blocks
    for layer in ica_layers(model):
        assert not any(p.requires_grad for p in layer.base_layer.parameters())
        assert layer.down["q"].bias is None and layer.up["q"].bias is None


def test_fresh_adapters_reproduce_the_frozen_model_exactly():
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    frozen = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="frozen").eval()
    adapted = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica").eval()
    with torch.no_grad():
        assert torch.equal(frozen(x), adapted(x))


def test_adapter_only_changes_its_targeted_slices():
    base = torch.nn.Linear(8, 24)
    layer = ICALinear(base, ICAConfig(targets=("k",), rank=2))
    torch.nn.init.normal_(layer.up["k"].weight)
    x = torch.randn(5, 8)
    with torch.no_grad():
        delta = layer(x) - base(x)
    assert torch.all(delta[:, :8] == 0) and torch.all(delta[:, 16:] == 0)
    assert delta[:, 8:16].abs().sum() > 0


@pytest.mark.parametrize("targets", [("q",), ("q", "v"), ("q", "k", "v")])
def test_merge_is_equivalent_to_unmerged_within_1e5(targets):
    model = create_model(
        backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica", targets=targets, rank=4
    ).eval()
    randomize_adapters(model)
    x = torch.randn(4, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        unmerged = model(x)
        model.merge_adapters()
        assert model.is_merged
        merged = model(x)
        model.unmerge_adapters()
        restored = model(x)
    assert (unmerged - merged).abs().max() < 1e-5
    assert (unmerged - restored).abs().max() < 1e-5
    # the merge really changed the weights (it is not a no-op that happens to agree)
    assert not torch.allclose(
        unmerged,
        create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="frozen").eval()(x),
        atol=1e-4,
    )


def test_unload_gives_a_plain_timm_model_with_the_same_outputs():
    model = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica").eval()
    randomize_adapters(model)
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        expected = model(x)
        plain = unload_ica(model.backbone)
        assert not any(isinstance(m, ICALinear) for m in plain.modules())
        fresh = timm.create_model(
            TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, num_classes=0, global_pool="token"
        )
        fresh.load_state_dict(plain.state_dict())  # strict: same keys as a timm model
        got = torch.nn.functional.normalize(fresh.eval()(x), dim=-1)
    assert (expected - got).abs().max() < 1e-5


@pytest.mark.parametrize("targets, rank", [((), 16), (("x",), 16), (("q", "q"), 16), (("q",), 0)])
def test_invalid_ica_config_is_refused(targets, rank):
    with pytest.raises(ConfigError):
        ICAConfig(targets=targets, rank=rank)


def test_target_order_is_canonical():
    assert ICAConfig(targets=("v", "q")).targets == ("q", "v")


def test_adapted_attention_stays_on_the_fused_sdpa_kernel(monkeypatch):
    # ICA wraps only the qkv projection: attention itself must still run through
    # F.scaled_dot_product_attention (flash attention on GPUs), in every block, trained or merged.
    model = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica").eval()
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        model(x)
        model.merge_adapters()
        model(x)
    assert len(calls) == 2 * len(model.backbone.blocks)


def test_merged_adapters_cost_exactly_what_the_frozen_model_costs():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(2, 3, TINY_IMG, TINY_IMG))
        return counter.get_total_flops()

    frozen = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="frozen").eval()
    adapted = create_model(backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica").eval()
    unmerged = flops(adapted)
    adapted.merge_adapters()
    assert flops(adapted) == flops(frozen) < unmerged
