"""The CIM generator: a small BEiT that predicts visual tokens at masked patches.

Fang et al., "Corrupted Image Modeling for Self-Supervised Visual Pre-Training" (ICLR 2023,
arXiv 2202.03382), Sec. 2: the generator is a small trainable BEiT. It sees the image
patches (pixels), replaces the embeddings of masked patches by one learned [MASK] embedding
and predicts, at every position, a distribution over the frozen tokenizer's vocabulary
(docs/METHOD.md step 4). Its logits are later sampled to corrupt the image (step 5).

The transformer blocks and the patch embedding come from timm; only the BEiT-specific parts
(the [MASK] substitution and the vocabulary head) are written here.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

# BEiT initialises embeddings and linear weights with a truncated normal of std 0.02.
_INIT_STD = 0.02
# BEiT uses LayerNorm with eps 1e-6 (timm passes device/dtype, hence a partial).
_layer_norm = partial(nn.LayerNorm, eps=1e-6)


class BEiTGenerator(nn.Module):
    """Small BEiT with a [MASK] embedding and a linear head over the token vocabulary.

    Args:
        img_size: side R of the (square) input image.
        patch_size: side of one patch; the grid is ``g = R / patch_size``.
        vocab_size: number of tokenizer ids to predict.
        embed_dim: transformer width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        drop_path: stochastic depth rate of the last block (linearly increasing, as in BEiT).
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        vocab_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.grid = self.patch_embed.grid_size[0]
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=r,
                norm_layer=_layer_norm,  # type: ignore[arg-type]  # timm takes any callable
            )
            for r in rates
        )
        self.norm = _layer_norm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)
        self.vocab_size = vocab_size
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            trunc_normal_(p, std=_INIT_STD)
        self.apply(_init_module)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) excluded from weight decay, as in BEiT."""
        return {"pos_embed", "cls_token", "mask_token"}

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch embeddings with [MASK] substituted, plus [CLS] and positions.

        Args:
            x: images ``[B, 3, R, R]`` (normalized with the dataset mean/std).
            mask: ``[B, g, g]`` bool, True where the patch is masked.

        Returns:
            tokens ``[B, 1 + g*g, D]``.
        """
        tokens = self.patch_embed(x)  # [B, g*g, D]
        b, n, _ = tokens.shape
        w = mask.reshape(b, n, 1).to(tokens.dtype)
        # One shared learned embedding replaces every masked patch (BEiT, Sec. 2.2).
        tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        cls = self.cls_token.expand(b, -1, -1).to(tokens.dtype)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed.to(tokens.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict token logits at every grid position.

        Args:
            x: images ``[B, 3, R, R]``.
            mask: ``[B, g, g]`` bool.

        Returns:
            logits ``[B, g, g, vocab_size]``.
        """
        h = self.embed(x, mask)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h[:, 1:])  # drop [CLS]: the head predicts per patch
        b = h.shape[0]
        return self.head(h).reshape(b, self.grid, self.grid, self.vocab_size)


def _init_module(m: nn.Module) -> None:
    """BEiT's init: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=_INIT_STD)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        # The patch projection is a linear map on flattened patches; init it like one.
        trunc_normal_(m.weight, std=_INIT_STD)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
