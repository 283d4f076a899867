"""Tokenizer metrics, logged by ``VQVAE`` in training and by ``evaluate`` on held-out images
(a module of their own: the models must not import the evaluation command and its loader)."""

from __future__ import annotations

import torch

# PSNR of a perfect reconstruction would be infinite; clamping the MSE caps it at 100 dB.
_MIN_MSE = 1e-10


def batch_psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]: ``[B, C, H, W]`` x2 -> ``[B]``.

    ``10 log10(1 / MSE)`` with the MSE over all pixels and channels of each image.
    """
    mse = (recon.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(_MIN_MSE))


def codebook_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Code histogram ``[K]`` -> {"perplexity": exp(entropy), "usage": share of codes used}.

    Perplexity is the effective number of codes in use (K for a uniform histogram); an empty
    histogram gives perplexity 1 and usage 0. Both are scalar tensors.
    """
    counts = counts.float()
    p = counts / counts.sum().clamp_min(1.0)
    # 0 * log 0 = 0: xlogy handles the unused codes.
    entropy = -torch.special.xlogy(p, p).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}
