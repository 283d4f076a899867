"""The enhancer reading a masked image, as BEiT and SimMIM feed their encoders.

- ViT (BEiT, Bao et al. 2022, Sec. 2.2; SimMIM, Xie et al. 2022, Sec. 3.1): the patch
  embeddings of masked patches are replaced by one learned [MASK] embedding, *before* the
  position embeddings are added, then the usual blocks and final norm run on all tokens.
- CNN (no patch embedding to replace): the masked pixels are replaced by one learned colour
  in the dataset-normalized space (initialized to 0, the dataset mean), the mask brought to
  pixels by nearest-neighbour upsampling of each grid cell. This is our choice; SimMIM's
  paper masks only ViT/Swin inputs.

The [MASK] parameter lives in its own child module so that checkpoints hold it (a run saves
its model's children) and exports, which keep only the backbone, drop it.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from cimpt.baselines.patches import mask_to_pixels
from cimpt.models.enhancer import Enhancer

# BEiT and SimMIM initialize the [MASK] embedding with a truncated normal of std 0.02.
_INIT_STD = 0.02


class MaskEmbedding(nn.Module):
    """A learned [MASK] embedding (ViT, ``[1, 1, C]``) or colour (CNN, ``[1, 3, 1, 1]``).

    Args:
        enhancer: the enhancer whose input it masks.
    """

    def __init__(self, enhancer: Enhancer) -> None:
        super().__init__()
        self.kind = enhancer.kind
        if self.kind == "vit":
            self.token = nn.Parameter(torch.zeros(1, 1, int(enhancer.backbone.embed_dim)))
            trunc_normal_(self.token, std=_INIT_STD)
        else:
            self.token = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def features(self, enhancer: Enhancer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-position features of the masked image.

        Args:
            enhancer: the enhancer (the backbone trained by the objective).
            x: ``[B, 3, R, R]`` dataset-normalized images.
            mask: ``[B, g, g]`` bool, True = masked.

        Returns:
            ``[B, C, g, g]`` like ``Enhancer.features``; with an all-False mask exactly
            ``enhancer.features(x)``.
        """
        if self.kind == "vit":
            return self._vit(enhancer, x, mask)
        return enhancer.features(self.mask_pixels(x, mask, enhancer.patch_size))

    def mask_pixels(self, x: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
        """CNN input: masked cells painted with the learned colour. ``[B, 3, R, R]``."""
        m = mask_to_pixels(mask, patch)
        return torch.where(m, self.token.to(x.dtype).expand_as(x), x)

    def _vit(self, enhancer: Enhancer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bb = enhancer.backbone
        tokens = bb.patch_embed(x)  # [B, N, C]
        w = mask.flatten(1).unsqueeze(-1).to(tokens.dtype)  # [B, N, 1]
        tokens = tokens * (1 - w) + self.token.to(tokens.dtype) * w
        # The rest of timm's VisionTransformer.forward_features, unchanged.
        tokens = bb.norm(bb.blocks(bb.norm_pre(bb.patch_drop(bb._pos_embed(tokens)))))
        return enhancer.tokens_to_grid(tokens)
