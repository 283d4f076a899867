"""A light top-down (FPN-style) neck that brings a CNN's feature pyramid to the token grid.

Fang et al. (ICLR 2023) pre-train ResNet-50 with CIM but leave the heads open. Both
objectives need one feature vector per token-grid position (REVDET: one logit each; RESPIX:
the pixels of each grid cell, via the same per-position linear + pixel-shuffle head as a ViT).
A CNN's grid-resolution stage (stride = ``enhancer.patch_size``, e.g. 16 for a 14x14 grid at
224) is not its last one (stride 32), so reading only that stage would leave the deepest
stage, the one fine-tuning relies on most, without any pre-training signal. The neck
therefore merges every stage from the grid stride down to the deepest, top-down as in FPN
(Lin et al., 2017): a 1x1 lateral projection per stage, nearest-neighbour upsampling of the
coarser sum, addition, then one 3x3 conv on the grid map. It is small and is discarded after
pre-training with the heads (only the timm backbone is exported).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class GridFPN(nn.Module):
    """Top-down merge of feature maps to the finest of them (the token grid).

    Args:
        in_channels: channels of each input map, finest (grid stride) first.
        out_dim: channels D of the output.

    ``forward(maps)`` takes ``[B, C_i, H_i, W_i]`` maps, finest first, each at most as large as
    the previous, and returns ``[B, D, H_0, W_0]``.
    """

    def __init__(self, in_channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_dim, 1) for c in in_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(out_dim, out_dim, 3, padding=1), nn.GroupNorm(1, out_dim), nn.GELU()
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        top = self.lateral[-1](maps[-1])
        for lat, fmap in zip(reversed(self.lateral[:-1]), reversed(maps[:-1]), strict=True):
            top = lat(fmap) + F.interpolate(top, size=fmap.shape[-2:], mode="nearest")
        return self.smooth(top)
