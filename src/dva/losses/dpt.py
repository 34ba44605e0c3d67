"""The DVA objective: Proxy-Anchor on object views plus Discriminative Perceptual Transfer.

METHOD.md section 4 and the paper's Eq. (7)-(9)::

    L = L_proxy(discriminative + background views, C) + lambda * L_dist(original images, C)

One proxy set ``C`` (one per class plus one background proxy) is learned from the object
views; the plain images are pulled to the same proxies, which is how the detector's
knowledge reaches the encoder without a detector at inference.

When a batch carries no object views (ICA-only training, or no view could be made), the loss
is plain Proxy-Anchor on the original images, so one trainer serves every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from dva.losses.proxy_anchor import ProxyAnchorLoss

ORIGINAL = "original"
DISCRIMINATIVE = "discriminative"
BACKGROUND = "background"
VIEW_KINDS = (ORIGINAL, DISCRIMINATIVE, BACKGROUND)

#: ``{view kind: (embeddings, labels)}`` for one batch.
ViewEmbeddings = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


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
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.background = background
        self.lambda_dist = lambda_dist
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
        loss_dist = self.proxy_anchor(*originals)
        total = loss_proxy + self.lambda_dist * loss_dist
        return LossOutput(total, {"proxy": loss_proxy.detach(), "dist": loss_dist.detach()})
