"""Patch views of images and masks shared by the pixel-regression baselines (MAE, SimMIM).

The patch vector layout is the one ``cimpt.models.heads.unpatchify`` inverts: (channel, row,
column) inside each patch, patches in row-major grid order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, g*p, g*p]`` -> ``[B, g*g, C*p*p]`` (inverse of ``unpatchify`` + flatten)."""
    cols = F.pixel_unshuffle(x, patch)  # [B, C*p*p, g, g]
    return cols.flatten(2).transpose(1, 2)


def mask_to_pixels(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Grid mask ``[B, g, g]`` -> pixel mask ``[B, 1, g*p, g*p]`` (each cell a p x p square)."""
    return mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's per-patch normalized target: each patch vector ``[..., D]`` minus its mean,
    divided by ``sqrt(var + eps)`` (unbiased variance, as MAE's ``norm_pix_loss``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_input_panel(img: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Figure panel: ``img [B, 3, R, R]`` in [0, 1] with masked cells shown mid-grey."""
    m = mask_to_pixels(mask.bool(), patch)
    return torch.where(m, torch.full_like(img, 0.5), img)
