"""VPTSP-G: semantic proxies from class-wise visual prompts (Ren et al., ICLR 2024), a PEFT peer.

"We augment the proxy by incorporating the semantic information from the input image and the
ViT, in which we optimize the visual prompts for each class" (Ren et al., abstract). The
retrieval network is VPT-deep + BitFit (:mod:`dva.models.vpt`); what is new is where the
Proxy-Anchor proxies come from. Following the authors' code (``Noahsark/ParameterEfficient-DML``,
``architectures/peft_vit.py``: ``forward_proxy_mix_bias`` and ``_proxies_generator``), at every
training step:

1. each image of the batch runs through the same (BitFit-tuned) backbone once more, with the
   prompts of *its class* in place of the shared prompts (the class prompts enter the first
   ``class_prompt_depth`` blocks; the other blocks get no prompts), giving one L2-normalised
   CLS embedding ``s`` per image;
2. a GRU cell ("G", ``Simple_GRUCell`` with ``type='gru_relu'``) folds the class's images of
   the batch, one after the other, into that class's running semantic proxy ``h_c`` (the
   "container", a state carried from batch to batch without gradient)::

       z = sigmoid(s W_iz + h W_hz + b_z)      r = sigmoid(s W_ir + h W_hr + b_r)
       n = relu(s W_in + r * (h W_hn) + b_n)   h' = (1 - z) * n + z * h

3. the container is L2-normalised and mixed with learnable proxies ``b`` (the authors'
   ``proxies_bias``; here Proxy-Anchor's own proxies, initialised as theirs)::

       proxies = ratio * b + (1 - ratio) * normalize(container)        ratio = 0.4 (CUB config)

   and Proxy-Anchor runs against these proxies for all classes (``proxy_data_range: both_all``).

Gradients reach the class prompts, the GRU, the backbone's biases and ``b`` through the
classes present in the batch. Retrieval (and ``Run.load_model``) uses only the shared-prompt
network: the generator lives with the loss, like Proxy-Anchor's proxies, and is saved with them.

Defaults are the authors' CUB config (``config/cub200_basic.yaml``): 20 shared prompts in all
12 blocks, BitFit, 5 class prompts; ``p_prompt_depth: 4`` with ``prompt_p_block_step: 5`` gives
``5 - 5 i`` class prompts to block ``i``, i.e. prompts in block 0 only, hence
``class_prompt_depth = 1``.

Differences from the authors' code (stated in docs/reproduce.md):

- no projection heads: their ``vit_head`` adds a LayerNorm + Linear(768 -> 512) on the
  embedding and an "isolated" second one for the proxy branch; here the embedding is the
  CLS token after the final norm, as for every method of this harness, so the GRU works in
  the backbone's width (768 for ViT-B/16 instead of their 512);
- classes are folded into the GRU in batch order whatever their count (their sampler gives
  exactly 2 images per class, consecutive); the unused ``W_ia`` of their GRU is left out;
- their loss averages the positive term over all classes (absent ones count 0); this uses
  the harness's Proxy-Anchor (mean over the classes present), alpha 32, margin 0.1 as theirs;
- the container is not saved: a resumed run restarts it from a fresh random state;
- single process only (their memory bank and multi-GPU paths are not reproduced).

Counts (``dva params`` counts the retrieval network only; the generator is class-dependent
and lives with the loss): ViT-B/16 ``12 * 20 * 768 = 184,320`` prompts + 102,912 biases =
287,232; the generator adds the GRU ``6 * 768^2 + 3 * 768 = 3,541,248``, ``5 * 768 = 3,840``
per class of class prompts (C = 100 on CUB: 3,925,248 more), besides Proxy-Anchor's 768 per class.
DINOv2 ViT-S/14: ``12 * 20 * 384 + 51,456 = 143,616``; GRU ``6 * 384^2 + 3 * 384 = 885,888``,
``1,920`` per class (C = 50: 981,888 more), besides the 384 per class of the proxies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models import VisionTransformer
from torch import nn

from dva.errors import ConfigError
from dva.losses import ProxyAnchorLoss
from dva.models.retrieval import RetrievalModel
from dva.models.vpt import PromptedBlock, prompted_blocks


@dataclass(frozen=True)
class VPTSPConfig:
    """``ModelConfig.method_options`` of ``--method vptsp-g`` (the authors' CUB config)."""

    num_prompts: int = 20
    bitfit: bool = True
    #: Prompts per class (``num_p_prompt``) and how many first blocks receive them.
    class_prompts: int = 5
    class_prompt_depth: int = 1
    #: Weight of the learnable proxies in the mix (``proxy_bias_ratio``).
    proxy_ratio: float = 0.4

    def __post_init__(self) -> None:
        if self.num_prompts < 0 or self.class_prompts < 1 or self.class_prompt_depth < 1:
            raise ConfigError("vptsp-g: num_prompts >= 0, class_prompts >= 1 and class_prompt_depth >= 1 are needed")
        if not 0.0 <= self.proxy_ratio <= 1.0:
            raise ConfigError(f"vptsp-g proxy_ratio must be in [0, 1], got {self.proxy_ratio}")


class ReluGRUCell(nn.Module):
    """The authors' ``Simple_GRUCell(type='gru_relu')``: a GRU whose candidate uses ReLU, not tanh."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_i = nn.Parameter(torch.empty(3, dim, dim))  # input weights of r, z, n
        self.w_h = nn.Parameter(torch.empty(3, dim, dim))  # hidden weights of r, z, n
        self.b = nn.Parameter(torch.zeros(3, dim))
        for w in (*self.w_i, *self.w_h):  # Xavier-uniform matrices, zero biases, as theirs
            nn.init.xavier_uniform_(w)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(x @ self.w_i[0] + h @ self.w_h[0] + self.b[0])
        z = torch.sigmoid(x @ self.w_i[1] + h @ self.w_h[1] + self.b[1])
        n = F.relu(x @ self.w_i[2] + r * (h @ self.w_h[2]) + self.b[2])
        return (1 - z) * n + z * h


class SemanticProxies(nn.Module):
    """Generates Proxy-Anchor's proxies from class prompts run through the model (see module doc)."""

    container: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, model: RetrievalModel, proxy_anchor: ProxyAnchorLoss, config: VPTSPConfig) -> None:
        super().__init__()
        blocks = prompted_blocks(model.backbone)
        if not blocks:
            raise ConfigError("vptsp-g needs the VPT-deep backbone of its method")
        if config.class_prompt_depth > len(blocks):
            raise ConfigError(f"vptsp-g class_prompt_depth {config.class_prompt_depth} > {len(blocks)} blocks")
        num_classes, dim = proxy_anchor.proxies.shape
        self.config = config
        self.num_classes = num_classes
        # (depth, classes, prompts, d), Xavier-normal per block as their _setup_prompt
        prompts = torch.empty(config.class_prompt_depth, num_classes, config.class_prompts, dim)
        for p in prompts:
            nn.init.xavier_normal_(p)
        self.class_prompts = nn.Parameter(prompts)
        self.gru = ReluGRUCell(dim)
        self.register_buffer("container", F.normalize(nn.init.xavier_uniform_(torch.empty(num_classes, dim)), dim=-1))
        with torch.no_grad():  # their proxies_bias: Xavier-uniform / 8 (Proxy-Anchor's own init is kaiming)
            nn.init.xavier_uniform_(proxy_anchor.proxies).div_(8.0)

    def semantic_embeddings(self, model: RetrievalModel, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Step 1: each image with its class's prompts (and no shared ones), L2-normalised CLS."""
        vit = model.backbone
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"vptsp-g needs a timm VisionTransformer backbone, not {type(vit).__name__}")
        empty = self.class_prompts.new_zeros(1, 0, self.class_prompts.shape[-1])
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        for i, block in enumerate(vit.blocks):
            assert isinstance(block, PromptedBlock)
            x = block(x, prompts=self.class_prompts[i][labels] if i < len(self.class_prompts) else empty)
        return F.normalize(model.head(vit.forward_head(vit.norm(x))).float(), dim=-1)

    def forward(
        self, model: RetrievalModel, images: torch.Tensor, labels: torch.Tensor, learnable: torch.Tensor
    ) -> torch.Tensor:
        """All ``num_classes`` proxies for this batch; ``learnable``: Proxy-Anchor's trained proxies."""
        s = self.semantic_embeddings(model, images, labels)
        with torch.autocast(s.device.type, enabled=False):  # the GRU and the mix are small: float32
            return self._mix(s, labels, learnable.float())

    def _mix(self, s: torch.Tensor, labels: torch.Tensor, learnable: torch.Tensor) -> torch.Tensor:
        """Steps 2 and 3 on the semantic embeddings ``s``."""
        classes, inverse = labels.unique(return_inverse=True)  # type: ignore[no-untyped-call]  # torch: unannotated
        # Step 2: fold each class's images into its container row, in batch order.
        counts = torch.bincount(inverse, minlength=len(classes))
        order = torch.argsort(inverse, stable=True)
        position = torch.arange(len(labels), device=labels.device) - (counts.cumsum(0) - counts)[inverse[order]]
        h = self.container[classes]
        for step in range(int(counts.max())):
            rows = order[position == step]
            slot = inverse[rows]
            h = h.index_copy(0, slot, self.gru(s[rows], h[slot]))
        # Their code renormalises the whole container; the other rows are unit vectors already.
        container = self.container.index_copy(0, classes, F.normalize(h, dim=-1))
        with torch.no_grad():
            self.container.copy_(container.detach())
        # Step 3: mix with the learnable proxies.
        r = self.config.proxy_ratio
        return r * learnable + (1 - r) * container

    def extra_repr(self) -> str:
        c = self.config
        return f"classes={self.num_classes}, class_prompts={c.class_prompts}, depth={c.class_prompt_depth}"
