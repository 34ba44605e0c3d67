"""Proxy-Anchor against pytorch-metric-learning, and the DPT objective's composition."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss as PMLProxyAnchor

from dva.losses import BACKGROUND, DISCRIMINATIVE, ORIGINAL, DPTLoss, ProxyAnchorLoss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proxy_anchor_matches_pytorch_metric_learning(seed):
    torch.manual_seed(seed)
    ours = ProxyAnchorLoss(12, 16, alpha=32, margin=0.1)
    reference = PMLProxyAnchor(12, 16, margin=0.1, alpha=32)
    with torch.no_grad():
        reference.proxies.copy_(ours.proxies)
    x = torch.randn(40, 16, requires_grad=True)
    y = torch.randint(0, 12, (40,))
    loss, ref = ours(x, y), reference(x, y)
    assert torch.allclose(loss, ref, rtol=1e-5)
    grad = torch.autograd.grad(loss, x)[0]
    ref_grad = torch.autograd.grad(ref, x)[0]
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_proxy_anchor_is_stable_in_bfloat16_inputs():
    loss = ProxyAnchorLoss(5, 8)
    x = torch.randn(16, 8).bfloat16()
    assert torch.isfinite(loss(x, torch.randint(0, 5, (16,))))


def test_proxy_anchor_rejects_labels_outside_the_proxies():
    with pytest.raises(ValueError, match="labels"):
        ProxyAnchorLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))


def test_loss_is_lower_when_embeddings_sit_on_their_proxies():
    loss = ProxyAnchorLoss(4, 8)
    labels = torch.arange(4).repeat(2)
    on_proxies = loss.proxies.detach()[labels]
    assert loss(on_proxies, labels) < loss(torch.randn(8, 8), labels)


def _views(n: int = 6, dim: int = 8, classes: int = 3, background: int = 3):
    torch.manual_seed(0)
    y = torch.randint(0, classes, (n,))
    return {
        ORIGINAL: (torch.randn(n, dim), y),
        DISCRIMINATIVE: (torch.randn(n, dim), y),
        BACKGROUND: (torch.randn(2, dim), torch.full((2,), background)),
    }


def test_dpt_is_proxy_loss_on_object_views_plus_lambda_times_distillation():
    dpt = DPTLoss(3, 8, background=True, lambda_dist=3.0)
    views = _views()
    out = dpt(views)
    pa = dpt.proxy_anchor
    obj_x = torch.cat([views[DISCRIMINATIVE][0], views[BACKGROUND][0]])
    obj_y = torch.cat([views[DISCRIMINATIVE][1], views[BACKGROUND][1]])
    expected_proxy = pa(obj_x, obj_y)
    expected_dist = pa(*views[ORIGINAL])
    assert torch.allclose(out.total, expected_proxy + 3.0 * expected_dist)
    assert set(out.parts) == {"proxy", "dist"}
    assert pa.num_classes == 4 and dpt.background_label == 3


def test_dpt_lambda_zero_ignores_the_original_images():
    dpt = DPTLoss(3, 8, lambda_dist=0.0)
    views = _views()
    views[ORIGINAL][0].requires_grad_(True)
    dpt(views).total.backward()
    assert views[ORIGINAL][0].grad is None or torch.all(views[ORIGINAL][0].grad == 0)


def test_dpt_without_object_views_is_plain_proxy_anchor():
    dpt = DPTLoss(3, 8, background=False)
    x, y = torch.randn(6, 8), torch.randint(0, 3, (6,))
    out = dpt({ORIGINAL: (x, y)})
    assert torch.allclose(out.total, dpt.proxy_anchor(x, y))
    assert dpt.background_label is None and dpt.proxy_anchor.num_classes == 3


# ----------------------------------------------------------------- DPT transfer variants
def _grads(dpt: DPTLoss, views):
    """Gradients of the transfer term alone w.r.t. the proxies and each view: the gradient of
    the total at ``lambda_dist`` minus that at 0, divided by ``lambda_dist``."""

    def total_grads(lambda_dist: float) -> list[torch.Tensor]:
        dpt.lambda_dist = lambda_dist
        leaves = {k: e.clone().requires_grad_(True) for k, (e, _) in views.items()}
        out = dpt({k: (leaves[k], y) for k, (_, y) in views.items()})
        targets = [dpt.proxy_anchor.proxies, *leaves.values()]
        grads = torch.autograd.grad(out.total, targets, allow_unused=True)
        return [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, targets, strict=True)]

    with_transfer, without = total_grads(3.0), total_grads(0.0)
    return dict(
        zip(["proxies", *views], [(a - b) / 3.0 for a, b in zip(with_transfer, without, strict=True)], strict=True)
    )


@pytest.mark.parametrize("transfer", ["proxy", "teacher", "embedding", "relation"])
def test_transfer_term_moves_only_what_its_reading_allows(transfer):
    dpt = DPTLoss(3, 8, background=True, lambda_dist=3.0, transfer=transfer)
    g = _grads(dpt, _views())
    # The originals always learn from the transfer term; the background views never do.
    assert g[ORIGINAL].abs().sum() > 0
    assert torch.all(g[BACKGROUND] == 0)
    # Only the paper-literal "proxy" reading lets the originals move the proxies ...
    assert (g["proxies"].abs().sum() > 0) == (transfer == "proxy")
    # ... and the object views are a stop-gradient teacher in every reading.
    assert torch.all(g[DISCRIMINATIVE] == 0)


def test_teacher_proxies_are_learned_from_the_object_views_alone():
    views = _views()
    teacher = DPTLoss(3, 8, transfer="teacher")
    proxy_only = DPTLoss(3, 8, lambda_dist=0.0)
    proxy_only.load_state_dict(teacher.state_dict())
    g_teacher = torch.autograd.grad(teacher(views).total, teacher.proxy_anchor.proxies)[0]
    g_proxy = torch.autograd.grad(proxy_only(views).total, proxy_only.proxy_anchor.proxies)[0]
    assert torch.allclose(g_teacher, g_proxy)


def test_embedding_transfer_is_zero_when_originals_point_where_their_views_do():
    dpt = DPTLoss(3, 8, transfer="embedding")
    views = dict(_views())
    e, y = views[DISCRIMINATIVE]
    views[ORIGINAL] = (2.5 * e, y)  # same directions, other lengths
    out = dpt(views)
    assert out.parts["dist"].abs() < 1e-6
    views[ORIGINAL] = (-e, y)
    assert torch.isclose(dpt(views).parts["dist"], torch.tensor(2.0))


def test_relational_transfer_ignores_rotation_and_scale_but_not_structure():
    from dva.losses.dpt import relational_distillation

    torch.manual_seed(0)
    teacher = torch.randn(10, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert relational_distillation(3.0 * teacher @ rotation, teacher) < 1e-6
    assert relational_distillation(torch.randn(10, 8), teacher) > 1e-2


def test_transfer_needs_each_original_paired_with_its_view():
    dpt = DPTLoss(3, 8, transfer="embedding")
    views = dict(_views())
    views[DISCRIMINATIVE] = (views[DISCRIMINATIVE][0][:4], views[DISCRIMINATIVE][1][:4])
    with pytest.raises(ValueError, match="pairs each original"):
        dpt(views)


def test_unknown_transfer_is_refused_naming_the_choices():
    from dva.errors import ConfigError
    from dva.losses import DPTOptions

    with pytest.raises(ConfigError, match="teacher"):
        DPTOptions(transfer="teachr")


def test_transfer_can_be_switched_off_for_a_first_stage_on_object_views_alone():
    dpt = DPTLoss(3, 8, transfer="teacher")
    views = _views()
    full = dpt(views)
    dpt.transfer_on = False
    first_stage = dpt(views)
    assert torch.allclose(first_stage.total, full.parts["proxy"])
    assert torch.allclose(first_stage.parts["dist"], full.parts["dist"])  # still logged
