"""Losses: Proxy-Anchor and the DVA objective (L_proxy + lambda * L_dist)."""

from dva.losses.dpt import TRANSFERS, DPTLoss, DPTOptions, LossOutput, ViewEmbeddings
from dva.losses.proxy_anchor import ProxyAnchorLoss
from dva.view_kinds import BACKGROUND, DISCRIMINATIVE, ORIGINAL, VIEW_KINDS

__all__ = [
    "BACKGROUND",
    "DISCRIMINATIVE",
    "ORIGINAL",
    "TRANSFERS",
    "VIEW_KINDS",
    "DPTLoss",
    "DPTOptions",
    "LossOutput",
    "ProxyAnchorLoss",
    "ViewEmbeddings",
]
