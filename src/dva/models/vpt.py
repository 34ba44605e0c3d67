"""VPT-deep: Visual Prompt Tuning (Jia et al., ECCV 2022), a PEFT peer of ICA (issue 12).

"For VPT-Deep, prompts are introduced at every Transformer layer's input space" (Jia et al.,
Sec. 3.2, Eq. 6-7): block ``i`` sees ``[CLS, P_i, E_i]`` and its outputs at the prompt positions
are discarded, so every block gets its own ``num_prompts`` learnable tokens::

    [x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])        i = 1..N

Here each timm block is wrapped by :class:`PromptedBlock`, which inserts its prompts right
after the prefix tokens (the CLS token, plus DINOv2-style register tokens where a model has
them, ``num_prefix_tokens``), runs the frozen block and drops the prompt positions again. The
final norm therefore sees exactly the tokens of the frozen model, and the retrieval embedding
is still the CLS token after the final norm.

Initialisation as in the released code (``KMnP/vpt``, ``src/models/vit_prompt/vit.py``):
uniform in ``+-sqrt(6 / (patch_dim + d))`` with ``patch_dim = 3 * patch_h * patch_w``, the
Xavier-uniform bound of a patch-embedding-sized matrix (0.0625 for ViT-B/16).

``num_prompts`` defaults to 10, one of VPT's searched lengths (they search
{1, 5, 10, 50, 100, 200} per task); VPTSP-G's CUB config uses 20 shared prompts in all 12
blocks (``num_prompt: 20``, ``prompt_depth: 12`` in ``config/cub200_basic.yaml``).

``bitfit=True`` additionally trains every bias of the backbone (BitFit, Ben Zaken et al.,
ACL 2022), the combination VPTSP-G trains (``vit_bitfit: true``); docs call it
"VPT-deep + BitFit".

Parameter counts (``num_prompts=10``): ViT-B/16 ``12 * 10 * 768 = 92,160``; BitFit adds
ViT-B/16's 102,912 biases (per block ``768 + 2304 + 768 + 768 + 3072 + 768 = 8,448``, times 12,
plus the patch-embedding and final-norm biases, ``2 * 768``). DINOv2 ViT-S/14:
``12 * 10 * 384 = 46,080`` prompts, 51,456 biases (``12 * 4,224 + 2 * 384``).

Prompts are extra tokens, not weights: they cannot be merged, so inference pays for
``num_prompts`` more tokens in every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dva.errors import ConfigError
from dva.models.backbone import int_attribute, vit_patch_size
from dva.models.tuning import bias_parameters


@dataclass(frozen=True)
class VPTConfig:
    """``ModelConfig.method_options`` of ``--method vpt-deep``."""

    num_prompts: int = 10
    #: Also train every bias of the backbone (BitFit), as VPTSP-G does.
    bitfit: bool = False

    def __post_init__(self) -> None:
        if self.num_prompts < 0:
            raise ConfigError(f"vpt num_prompts must be >= 0, got {self.num_prompts}")


class PromptedBlock(nn.Module):
    """A frozen transformer block whose input gets ``num_prompts`` learnable tokens after the prefix."""

    def __init__(self, block: nn.Module, num_prompts: int, dim: int, num_prefix_tokens: int, init_bound: float) -> None:
        super().__init__()
        self.block = block
        self.num_prefix_tokens = num_prefix_tokens
        weight = next(block.parameters())
        self.prompts = nn.Parameter(torch.empty(1, num_prompts, dim, device=weight.device, dtype=weight.dtype))
        self.init_bound = init_bound
        self.reset_prompts()

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[1]

    def reset_prompts(self) -> None:
        nn.init.uniform_(self.prompts, -self.init_bound, self.init_bound)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """``prompts`` (``(B or 1, P, d)``) replaces the block's own, e.g. VPTSP-G's class prompts."""
        prompts = self.prompts if prompts is None else prompts
        n, p = self.num_prefix_tokens, prompts.shape[1]
        if p == 0:
            same: torch.Tensor = self.block(x, **kwargs)
            return same
        prompts = prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        out: torch.Tensor = self.block(torch.cat([x[:, :n], prompts, x[:, n:]], dim=1), **kwargs)
        return torch.cat([out[:, :n], out[:, n + p :]], dim=1)

    def extra_repr(self) -> str:
        return f"num_prompts={self.num_prompts}, num_prefix_tokens={self.num_prefix_tokens}"


def prompt_init_bound(model: nn.Module) -> float:
    """VPT's ``sqrt(6 / (3 * patch_h * patch_w + d))``."""
    patch = vit_patch_size(model)
    return math.sqrt(6.0 / float(3 * patch[0] * patch[1] + int_attribute(model, "embed_dim")))


def inject_vpt(model: nn.Module, config: VPTConfig) -> list[PromptedBlock]:
    """Wrap every block of a timm ViT in a :class:`PromptedBlock`; return the wrappers."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "patch_embed"):
        raise ConfigError("VPT needs a timm ViT (`blocks`, `patch_embed`)")
    bound = prompt_init_bound(model)
    dim = int_attribute(model, "embed_dim")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    wrappers: list[PromptedBlock] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, PromptedBlock):
            block = PromptedBlock(block, config.num_prompts, dim, prefix, bound)
            blocks[i] = block
        wrappers.append(block)
    if config.bitfit:
        apply_bitfit(model)
    return wrappers


def apply_bitfit(model: nn.Module) -> None:
    """Train every bias of ``model`` (BitFit): all parameters whose name ends in ``bias``."""
    biases = bias_parameters(model)  # the same weights as ``also_train=bias`` of ica and dva
    if not biases:
        raise ConfigError("BitFit: the backbone has no bias to train")
    for p in biases:
        p.requires_grad_(True)


def prompted_blocks(model: nn.Module) -> list[PromptedBlock]:
    return [m for m in model.modules() if isinstance(m, PromptedBlock)]
