"""A timm enhancer as a multi-level feature extractor for the UperNet decoder.

ViTs (BEiT's recipe for dense prediction): the outputs of four evenly spaced blocks (for a
depth-12 ViT blocks 3, 6, 9, 12), read with timm's ``forward_intermediates`` as maps on the
patch grid, are brought to four scales by 2x transposed convolutions (with GroupNorm + GELU
between two of them), identity and 2x max-pooling. BEiT states the scales as strides 4, 8,
16, 32 of a 16-pixel patch, i.e. 4x, 2x, 1x and 1/2x the patch grid; we define them relative
to the grid (``segment.vit_levels``), so the CIFAR-scale ViT with 4-pixel patches gets maps
at 1, 2, 4 and 8 pixels per cell.

CNNs: the last four stages of timm's feature pyramid (``feature_info``; ResNets: strides 4,
8, 16, 32), read with ``forward_intermediates`` from the plain timm model, as
``features_only`` would give them but with the module names unchanged, so pre-trained
weights load as they were exported.

Unused layers (a ViT's final norm and any head) are pruned with timm's
``prune_intermediate_layers``, so every parameter gets a gradient (DDP requires it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cimpt.errors import CimptError


def vit_block_indices(depth: int, n_levels: int) -> list[int]:
    """Evenly spaced block indices (0-based): depth 12, 4 levels -> 2, 5, 8, 11."""
    return [max(0, math.floor((i + 1) * depth / n_levels + 0.5) - 1) for i in range(n_levels)]


def _rescale(dim: int, scale: float) -> nn.Module:
    """Bring a ``[B, dim, g, g]`` map to ``scale * g`` (a power of two: 4, 2, 1, 1/2, ...)."""
    steps = round(math.log2(scale))
    if scale <= 0 or 2.0**steps != scale:
        raise CimptError(f"segment.vit_levels: {scale} is not a power of two (e.g. 4, 2, 1, 0.5)")
    if steps == 0:
        return nn.Identity()
    if steps < 0:
        return nn.MaxPool2d(2**-steps)
    layers: list[nn.Module] = []
    for i in range(steps):
        if i:  # BEiT: deconv, norm, GELU, deconv
            layers += [nn.GroupNorm(norm_groups(dim), dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, 2, stride=2))
    return nn.Sequential(*layers)


def norm_groups(dim: int) -> int:
    """GroupNorm groups: 32 when they divide ``dim`` (the usual choice), else fewer, with at
    least 2 channels per group, so a 1x1 map (a CNN's last stage on a small crop) still has
    more than one value per group."""
    return math.gcd(32, max(1, dim // 2))


class MultiLevelBackbone(nn.Module):
    """``forward(x [B,3,S,S]) -> [B, C_i, h_i, w_i]`` per level, finest first.

    Args:
        net: the timm model (weights already loaded; pruned here).
        kind: ``vit`` or ``cnn``.
        vit_levels: ViTs: level scales relative to the patch grid, finest first.

    Attributes:
        channels: ``C_i`` of each level.
        strides: pixels per cell of each level (input side / map side).
    """

    net: Any  # timm models expose forward_intermediates / feature_info

    def __init__(self, net: nn.Module, kind: str, vit_levels: list[float], patch: int) -> None:
        super().__init__()
        self.net, self.kind = net, kind
        if kind == "vit":
            dim = int(self.net.num_features)
            self.take = vit_block_indices(len(self.net.blocks), len(vit_levels))
            self.rescale = nn.ModuleList(_rescale(dim, s) for s in vit_levels)
            self.channels = [dim] * len(vit_levels)
            self.strides = [patch / s for s in vit_levels]
        else:
            info = self.net.feature_info
            self.take = list(range(max(0, len(info) - 4), len(info)))
            self.rescale = nn.ModuleList(nn.Identity() for _ in self.take)
            self.channels = [int(info[i]["num_chs"]) for i in self.take]
            self.strides = [float(info[i]["reduction"]) for i in self.take]
        # Unique indices: a shallow ViT maps several levels to one block.
        self.indices = sorted(set(self.take))
        self.net.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.net.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        by_index = dict(zip(self.indices, maps, strict=True))
        return [f(by_index[i]) for f, i in zip(self.rescale, self.take, strict=True)]
