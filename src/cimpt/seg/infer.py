"""Sliding-window inference (mmseg's ``slide`` mode, which BEiT uses on ADE20K).

The network is trained on ``crop x crop`` windows; at test time it sees windows of the same
size (so a ViT keeps the position embeddings it was trained with) at ``stride`` steps that
cover the whole image, the last window flush with the border. Overlapping logits are averaged.
An image smaller than the crop is padded (right/bottom, mean colour) and the padding cut off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one side: every ``stride``, the last flush with the end."""
    if length <= crop:
        return [0]
    n = -(-(length - crop) // stride) + 1  # ceil
    return [min(i * stride, length - crop) for i in range(n)]


@torch.no_grad()
def slide_logits(
    net: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    crop: int,
    stride: int,
    num_classes: int,
    batch_size: int,
) -> torch.Tensor:
    """Logits ``[K, h, w]`` of one image ``x [3, h, w]``.

    Args:
        net: ``[N, 3, crop, crop] -> [N, K, crop, crop]`` logits.
        batch_size: windows per forward pass.
    """
    _, h, w = x.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    xp = F.pad(x, (0, pw, 0, ph), value=0.0)
    H, W = xp.shape[-2:]
    tops, lefts = window_starts(H, crop, stride), window_starts(W, crop, stride)
    boxes = [(t, left) for t in tops for left in lefts]
    total = torch.zeros(num_classes, H, W, device=x.device)
    count = torch.zeros(1, H, W, device=x.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        windows = torch.stack([xp[:, t : t + crop, left : left + crop] for t, left in chunk])
        logits = net(windows).float()
        for (t, left), lg in zip(chunk, logits, strict=True):
            total[:, t : t + crop, left : left + crop] += lg
            count[:, t : t + crop, left : left + crop] += 1
    return (total / count)[:, :h, :w]


def predict_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids ``[H, W]`` at the label's ``size`` from logits ``[K, h, w]`` (bilinear)."""
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits[None], size, mode="bilinear")[0]
    return logits.argmax(0)
