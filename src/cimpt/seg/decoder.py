"""UperNet (Xiao et al. 2018): a pyramid pooling module on the coarsest level and an FPN.

The decoder of the paper's ADE20K experiment (after BEiT), written here compactly (see
docs/METHOD_CHOICES.md for why no library's): 1x1 laterals to ``dim`` channels, PPM (pooled
to 1, 2, 3, 6 cells) on the coarsest level, a top-down pathway with 3x3 convolutions, every
level upsampled to the finest and fused by a 3x3 convolution, dropout 0.1 and a 1x1
classifier. Normalization is GroupNorm rather than mmseg's SyncBN: independent of the batch
size (small on a CPU) and the same under DDP without synchronizing statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cimpt.seg.backbone import norm_groups


def conv_norm_act(cin: int, cout: int, k: int, groups: int = 0) -> nn.Sequential:
    """``k x k`` convolution (same padding, no bias), GroupNorm (``groups``; 0: up to 32),
    ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.GroupNorm(groups or norm_groups(cout), cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size, mode="bilinear")


class PyramidPooling(nn.Module):
    """PPM: ``[B, cin, h, w] -> [B, dim, h, w]`` from the input and its pooled versions."""

    def __init__(self, cin: int, dim: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        # One group (over all channels) for the pooled maps: the 1x1 bin has one value per
        # channel, too few for per-group statistics of a few channels.
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_norm_act(cin, dim, 1, groups=1))
            for b in bins
        )
        self.fuse = conv_norm_act(cin + len(bins) * dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class UperNet(nn.Module):
    """Multi-level features (finest first) -> logits ``[B, num_classes, h_0, w_0]``.

    Args:
        channels: channels of each input level, finest first.
        dim: decoder width.
        num_classes: output classes.
    """

    def __init__(self, channels: list[int], dim: int, num_classes: int) -> None:
        super().__init__()
        self.ppm = PyramidPooling(channels[-1], dim)
        self.lateral = nn.ModuleList(conv_norm_act(c, dim, 1) for c in channels[:-1])
        self.smooth = nn.ModuleList(conv_norm_act(dim, dim, 3) for _ in channels[:-1])
        self.fuse = conv_norm_act(len(channels) * dim, dim, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = self.ppm(feats[-1])
        lat = [f(x) for f, x in zip(self.lateral, feats[:-1], strict=True)] + [top]
        for i in range(len(lat) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[-2:])
        outs = [f(x) for f, x in zip(self.smooth, lat[:-1], strict=True)] + [lat[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(fused))
