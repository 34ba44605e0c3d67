"""Proxy-Anchor loss (Kim et al., CVPR 2020), the paper's Eq. (7).

Every class owns a learnable proxy. With cosine similarities ``s(x, p)`` between
L2-normalised embeddings and proxies::

    L = 1/|P+| * sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x,p) - delta)))
      + 1/|P|  * sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x,p) + delta)))

``P+`` are the proxies that have positives in the batch. ``log(1 + sum exp(z))`` is computed
as a masked ``logsumexp`` over ``[0, z...]``, which cannot overflow even in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProxyAnchorLoss(nn.Module):
    def __init__(self, num_classes: int, embedding_dim: int, *, alpha: float = 32.0, margin: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"Proxy-Anchor needs at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.margin = margin
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        # The authors' initialisation (kaiming normal, fan_out).
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, *, proxies: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``embeddings`` against ``proxies`` (default: this loss's own, trained ones;
        DPT's teacher transfer passes them detached, so that term cannot move them)."""
        proxies = self.proxies if proxies is None else proxies
        if embeddings.shape[0] != labels.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(proxies.float(), dim=-1).T  # (B, C)
        positive = F.one_hot(labels, self.num_classes).bool()

        pos_logits = (-self.alpha * (cos - self.margin)).masked_fill(~positive, float("-inf"))
        neg_logits = (self.alpha * (cos + self.margin)).masked_fill(positive, float("-inf"))
        pos_per_proxy = _log1p_sum_exp(pos_logits)
        neg_per_proxy = _log1p_sum_exp(neg_logits)

        has_positive = positive.any(dim=0)
        pos_term = pos_per_proxy[has_positive].sum() / has_positive.sum().clamp(min=1)
        neg_term = neg_per_proxy.sum() / self.num_classes
        return pos_term + neg_term

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, margin={self.margin}"


def _log1p_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_i exp(logits[i, c]))`` per column ``c``; ``-inf`` entries count as absent."""
    zeros = logits.new_zeros(1, logits.shape[1])
    return torch.logsumexp(torch.cat([zeros, logits], dim=0), dim=0)
