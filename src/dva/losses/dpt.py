"""The DVA objective: Proxy-Anchor on object views plus Discriminative Perceptual Transfer.

docs/method.md section 4 and the paper's Eq. (7)-(9)::

    L = L_proxy(discriminative + background views, C) + lambda * L_transfer(original images, ...)

``L_proxy`` learns a proxy set ``C`` (one per class plus one background proxy) from the object
views. How the plain images receive what the object views learned, ``L_transfer``, is the part
the extracted paper leaves open; :class:`DPTOptions` names four readings, each with the
sentence of the paper it reads (docs/opa.md, "Transfer variants", has the measurements):

``proxy``
    ``ProxyAnchor(originals, C)`` with ``C`` trained by both terms (the first implementation).
    "the original images are pulled to the proxies" read literally. Since the originals'
    term (weight 3) also moves ``C``, the proxies end up shaped mostly by the originals, and
    the object views act like extra augmented samples.
``teacher``
    ``ProxyAnchor(originals, stopgrad(C))``: the proxies are learned from the object views only
    and act as a fixed teacher for the originals, the knowledge-distillation reading ("the
    proxies ... carry the discriminative knowledge ... transferred to the original images").
``embedding``
    ``1 - cos(e(original_i), stopgrad(e(discriminative_i)))``: every original image is pulled to
    its own object view's embedding, feature-level distillation from the object view as teacher.
``relation``
    Relational knowledge distillation (Park et al., CVPR 2019, cited by the paper): the
    originals' pairwise distances and angles are matched to those of the (stop-gradient)
    discriminative views of the same images.

When a batch carries no object views (ICA-only training, or no view could be made), the loss
is plain Proxy-Anchor on the original images, so one trainer serves every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dva.errors import ConfigError
from dva.losses.proxy_anchor import ProxyAnchorLoss
from dva.view_kinds import BACKGROUND, DISCRIMINATIVE, ORIGINAL

#: ``{view kind: (embeddings, labels)}`` for one batch.
ViewEmbeddings = Mapping[str, tuple[torch.Tensor, torch.Tensor]]

#: The readings of DPT's transfer term, see the module docstring.
TRANSFERS = ("proxy", "teacher", "embedding", "relation")


@dataclass(frozen=True)
class DPTOptions:
    """Options of the ``dva`` method (``--method-option transfer=teacher``): how DPT transfers.

    The defaults are the variant that won on the validation classes (docs/opa.md).
    """

    #: How the originals learn from the object views: one of :data:`TRANSFERS`.
    transfer: str = "proxy"
    #: Train a background class on background views (docs/method.md section 3). False drops both.
    background: bool = True
    #: Two-stage schedule: this fraction of the training steps learns from the object views
    #: alone (lambda 0) before the transfer term is switched on; 0 trains both from the start.
    object_first: float = 0.0

    def __post_init__(self) -> None:
        if self.transfer not in TRANSFERS:
            raise ConfigError(f"dva option transfer: choose from {', '.join(TRANSFERS)}, got {self.transfer!r}")
        if not 0.0 <= self.object_first < 1.0:
            raise ConfigError(f"dva option object_first: a fraction of training in [0, 1), got {self.object_first!r}")


@dataclass
class LossOutput:
    total: torch.Tensor
    #: Detached parts for logging, e.g. ``{"proxy": ..., "dist": ...}`` (tensors, so that
    #: logging decides when to synchronise with the GPU).
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class DPTLoss(nn.Module):
    """Owns the proxies; ``background=True`` adds the background class (index ``num_classes``)."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        background: bool = True,
        lambda_dist: float = 3.0,
        alpha: float = 32.0,
        margin: float = 0.1,
        transfer: str = "proxy",
    ) -> None:
        super().__init__()
        if transfer not in TRANSFERS:
            raise ConfigError(f"DPT transfer: choose from {', '.join(TRANSFERS)}, got {transfer!r}")
        self.num_classes = num_classes
        self.background = background
        self.lambda_dist = lambda_dist
        self.transfer = transfer
        #: Multiplies ``lambda_dist``; the trainer sets it to 0 during a two-stage schedule's
        #: first stage (``DPTOptions.object_first``).
        self.transfer_on = True
        self.proxy_anchor = ProxyAnchorLoss(num_classes + int(background), embedding_dim, alpha=alpha, margin=margin)

    @property
    def background_label(self) -> int | None:
        return self.num_classes if self.background else None

    def forward(self, views: ViewEmbeddings) -> LossOutput:
        originals = views[ORIGINAL]
        object_views = [views[k] for k in (DISCRIMINATIVE, BACKGROUND) if k in views and len(views[k][1])]
        if not object_views:
            loss = self.proxy_anchor(*originals)
            return LossOutput(loss, {"proxy": loss.detach()})
        embeddings = torch.cat([e for e, _ in object_views])
        labels = torch.cat([y for _, y in object_views])
        loss_proxy = self.proxy_anchor(embeddings, labels)
        loss_dist = self._transfer(originals, views.get(DISCRIMINATIVE))
        total = loss_proxy + (self.lambda_dist if self.transfer_on else 0.0) * loss_dist
        return LossOutput(total, {"proxy": loss_proxy.detach(), "dist": loss_dist.detach()})

    def _transfer(
        self, originals: tuple[torch.Tensor, torch.Tensor], discriminative: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        x, y = originals
        if self.transfer == "proxy":
            proxy_loss: torch.Tensor = self.proxy_anchor(x, y)
            return proxy_loss
        if self.transfer == "teacher":
            teacher_loss: torch.Tensor = self.proxy_anchor(x, y, proxies=self.proxy_anchor.proxies.detach())
            return teacher_loss
        if discriminative is None or len(discriminative[1]) != len(y):
            # Every training image has a discriminative view (the original stands in when the
            # box is not trusted), so the two lists pair up row by row; anything else is a bug.
            got = 0 if discriminative is None else len(discriminative[1])
            raise ValueError(
                f"transfer {self.transfer!r} pairs each original with its view: {len(y)} originals, {got} views"
            )
        teacher = discriminative[0].detach()
        if self.transfer == "embedding":
            return embedding_distillation(x, teacher)
        return relational_distillation(x, teacher)


def embedding_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos(student_i, teacher_i)``: each embedding pulled to its own teacher's direction."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def relational_distillation(
    student: torch.Tensor, teacher: torch.Tensor, *, distance_weight: float = 1.0, angle_weight: float = 2.0
) -> torch.Tensor:
    """RKD (Park et al. 2019): Huber loss on mean-normalised pairwise distances (RKD-D) plus on
    the cosines of the angles every triple forms (RKD-A), with the authors' weights 1 and 2.

    The teacher is taken as given (the caller detaches it).
    """
    student, teacher = student.float(), teacher.float()
    return distance_weight * _rkd_distance(student, teacher) + angle_weight * _rkd_angle(student, teacher)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    mean = d[off_diagonal].mean().clamp(min=1e-12)
    return d / mean


def _rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if len(student) < 2:
        return student.sum() * 0
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def _angles(e: torch.Tensor) -> torch.Tensor:
    """``angles[j, i, k]`` = cosine of the angle at ``e_j`` between ``e_i`` and ``e_k``."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=-1)  # diff[j, i] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2))


def _rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if len(student) < 3:
        return student.sum() * 0
    return F.smooth_l1_loss(_angles(student), _angles(teacher))
