"""Enhancer heads for the two CIM objectives (Fang et al., ICLR 2023, Sec. 2.2).

Both read the enhancer's per-position features ``[B, C, g, g]``:

* ``RespixHead`` (RESPIX, generative): "for a ViT the head is linear" (docs/METHOD.md step 7):
  each position predicts the ``patch_size**2 * 3`` pixels of its patch, then the patches are
  put back in place to form a ``[B, 3, R, R]`` image.
* ``RevdetHead`` (REVDET, discriminative, like ELECTRA): one replaced/not-replaced logit per
  position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Put per-position patch values back into an image.

    Args:
        patches: ``[B, g, g, 3 * p * p]``; the last axis is ordered (channel, row, column)
            inside the patch.
        patch_size: ``p``.

    Returns:
        images ``[B, 3, g*p, g*p]``; position (i, j) fills rows ``i*p:(i+1)*p`` and columns
        ``j*p:(j+1)*p``.
    """
    # pixel_shuffle expects [B, C*p*p, g, g] with exactly this (c, row, col) ordering.
    return F.pixel_shuffle(patches.permute(0, 3, 1, 2), patch_size)


class RespixHead(nn.Module):
    """Linear per token -> patch pixels, unpatchified to an image.

    Args:
        dim: feature channels C.
        patch_size: patch side p.
    """

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, 3 * patch_size * patch_size)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, C, g, g]`` -> predicted pixels ``[B, 3, g*p, g*p]``."""
        return unpatchify(self.proj(feats.permute(0, 2, 3, 1)), self.patch_size)


class RevdetHead(nn.Module):
    """Linear per position -> one replaced-token logit.

    Args:
        dim: feature channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, C, g, g]`` -> logits ``[B, g, g]`` (positive means "replaced")."""
        return self.proj(feats.permute(0, 2, 3, 1)).squeeze(-1)
