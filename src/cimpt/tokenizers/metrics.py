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


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Per-image colourfulness of Hasler and Suesstrunk (2003): ``[B, 3, H, W]`` -> ``[B]``.

    With the opponent channels ``rg = R - G`` and ``yb = (R + G) / 2 - B`` over each image's
    pixels, ``sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` (population
    statistics; images in [0, 1], so the paper's 0-255 values are 255 times these). A grey
    image scores 0. A tokenizer that washes colour out scores its reconstructions lower than
    the originals (``evaluate_tokenizer``'s ``colour_kept``).
    """
    x = images.float().flatten(2)  # [B, 3, HW]
    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    spread = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    level = (rg.mean(1).square() + yb.mean(1).square()).sqrt()
    return spread + 0.3 * level
