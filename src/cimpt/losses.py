"""Losses of Corrupted Image Modeling (Fang et al., ICLR 2023, arXiv 2202.03382).

* ``mlm_loss``: the generator's masked-token cross-entropy (docs/METHOD.md step 4, as in BEiT).
* ``respix_loss`` with ``sliding_window_normalize``: the enhancer's RESPIX target, the original
  image normalized by the mean and std of a sliding window around each pixel (step 7).
* ``revdet_loss``: the enhancer's REVDET per-position replaced-token detection (step 7).

Every loss is computed in float32 so that bf16 autocast does not degrade the reductions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Target id of positions a loss must skip (never a real token id).
_IGNORE = -100


def mlm_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy on masked positions only.

    Args:
        logits: ``[B, g, g, V]``.
        target: golden token ids ``[B, g, g]`` (int64).
        mask: ``[B, g, g]`` bool, True where the patch was masked.

    Returns:
        ``(loss, acc)``: scalar mean CE over masked positions, and the fraction of masked
        positions whose argmax equals the target. Both are 0 when nothing is masked.
    """
    # Static shapes (no boolean indexing): every position goes through the cross-entropy and
    # unmasked ones are ignored, so a GPU never waits for the host to learn how many are
    # masked and torch.compile sees one graph. The extra CE work is B*g*g*V, small next to
    # the generator's head.
    mask = mask.bool()
    flat = logits.reshape(-1, logits.shape[-1]).float()  # [B*g*g, V]
    tgt = target.reshape(-1).masked_fill(~mask.reshape(-1), _IGNORE)
    count = mask.sum().clamp_min(1)
    loss = F.cross_entropy(flat, tgt, ignore_index=_IGNORE, reduction="sum") / count
    acc = (flat.argmax(-1) == tgt).sum().float() / count  # an ignored target never matches
    return loss, acc.detach()


def sliding_window_stats(
    x: torch.Tensor, k: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std of the k x k window around each pixel, float32 ``[B, C, H, W]``.

    See ``_window_stats64`` for the window definition.
    """
    mean, std = _window_stats64(x, k, eps)
    return mean.float(), std.float()


def _window_stats64(
    x: torch.Tensor, k: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std over the k x k window around each pixel (stride 1, per channel).

    Windows are clipped at the border: only pixels inside the image count (``avg_pool2d`` with
    ``count_include_pad=False``). For odd k the window is centred. For even k it spans
    ``k/2`` pixels before the pixel and ``k/2 - 1`` after it along each axis (the pixel sits
    just after the window's geometric centre).

    Args:
        x: ``[B, C, H, W]``.
        k: window side (>= 1).
        eps: added to the variance before the square root.

    Returns:
        ``(mean, std)``, each ``[B, C, H, W]`` float64; ``std = sqrt(var + eps)`` with the
        population variance of the window.
    """
    if k < 1:
        raise ValueError(f"sliding window size must be >= 1, got {k}")
    # E[x^2] - E[x]^2 cancels badly in float32 for flat windows (var << mean^2), where the
    # division by std amplifies the error; centring per image and float64 keep it exact. This is
    # a 3-channel pooling, negligible next to the networks.
    centre = x.double().mean(dim=(-2, -1), keepdim=True)
    x = x.double() - centre
    h, w = x.shape[-2:]
    pad = k // 2

    def window_mean(t: torch.Tensor) -> torch.Tensor:
        # With padding k//2, output i averages input rows [i - k//2, i - k//2 + k - 1]: centred
        # for odd k; for even k there is one extra output row/column, which is cropped.
        out = F.avg_pool2d(t, k, stride=1, padding=pad, count_include_pad=False)
        return out[..., :h, :w]

    mean = window_mean(x)
    var = (window_mean(x * x) - mean * mean).clamp_min(0.0)  # clamp: rounding can go < 0
    return mean + centre, torch.sqrt(var + eps)


def sliding_window_normalize(x: torch.Tensor, k: int, eps: float = 1e-6) -> torch.Tensor:
    """RESPIX target: ``(x - mean_k) / sqrt(var_k + eps)``; see ``sliding_window_stats``.

    Args:
        x: ``[B, C, H, W]``.

    Returns:
        ``[B, C, H, W]`` float32.
    """
    mean, std = _window_stats64(x, k, eps)
    return ((x.double() - mean) / std).float()


def respix_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel (docs/METHOD.md step 7: the loss covers all pixels).

    Args:
        pred: ``[B, 3, R, R]``.
        target: ``[B, 3, R, R]``.
    """
    return F.mse_loss(pred.float(), target.float())


def revdet_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary cross-entropy over all positions for replaced-token detection.

    Args:
        logits: ``[B, g, g]`` (positive means "replaced").
        labels: ``[B, g, g]`` bool, ``z_hat != z``.

    Returns:
        ``(loss, acc, pos_share)``: mean BCE, accuracy of ``logits > 0``, and the share of
        positive labels.
    """
    logits = logits.float()
    y = labels.float()
    loss = F.binary_cross_entropy_with_logits(logits, y)
    acc = ((logits > 0) == labels.bool()).float().mean()
    return loss, acc.detach(), y.mean()
