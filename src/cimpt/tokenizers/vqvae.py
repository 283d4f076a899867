"""A trainable VQ-VAE image tokenizer with an EMA codebook.

CIM needs a frozen image tokenizer (docs/METHOD.md, "The three networks"; Fang et al., ICLR
2023, Sec. 3). The paper uses the DALL-E dVAE, whose weights cannot be downloaded here, so
users train their own.
We use a VQ-VAE (van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017)
whose codebook is updated by exponential moving averages instead of gradients (appendix A.1 of
that paper; Razavi et al., "VQ-VAE-2", NeurIPS 2019), rather than a Gumbel-softmax dVAE:

* on a 2-core CPU it reaches good reconstructions in far fewer steps;
* it has no temperature schedule to tune (the Gumbel relaxation needs one);
* with dead-code restarts (codes that fall out of use are moved onto random encoder outputs of
  the current batch) most of the codebook stays in use, which CIM needs: the generator's
  vocabulary is the codebook, and unused codes are wasted classes.

Architecture (all convolutions, no normalization layers so that train and eval behave alike
and replicas need no synchronized statistics):

    encoder: 3x3 conv -> log2(downsample) x [4x4 stride-2 conv] -> res_blocks x ResBlock
             -> 1x1 projection to embed_dim                         [B, D, H/d, W/d]
    codebook: nearest neighbour in an EMA codebook of vocab_size x embed_dim
    decoder: 1x1 conv -> res_blocks x ResBlock -> log2(downsample) x [4x4 stride-2 transposed
             conv] -> 3x3 conv -> sigmoid                           [B, 3, H, W]

Channels double at each downsampling and reach ``width`` on the token grid, so the costly
full-resolution layers stay thin (the tokenizer runs in every CIM training step). The decoder
ends in a sigmoid rather than a clamp so that every output is a valid image in [0, 1] and the
gradient never vanishes for pixels outside the range, as it would under a hard clamp.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimpt.engine.distributed import all_reduce_sum, broadcast_from_main
from cimpt.engine.precision import full_precision
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.metrics import batch_psnr, codebook_stats

# Laplace smoothing constant for the EMA cluster sizes (VQ-VAE appendix A.1 / Sonnet).
_LAPLACE_EPS = 1e-5


class ResBlock(nn.Module):
    """Residual block ``x + conv1x1(relu(conv3x3(relu(x))))`` as in the VQ-VAE paper.

    Shapes: ``[B, C, h, w] -> [B, C, h, w]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _level_channels(width: int, levels: int) -> list[int]:
    """Channels at each resolution, full resolution first: halved per level up, at least 16."""
    return [max(width >> (levels - i), min(width, 16)) for i in range(levels + 1)]


class Encoder(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> continuous latents ``[B, D, H/d, W/d]``."""

    def __init__(self, downsample: int, width: int, res_blocks: int, embed_dim: int) -> None:
        super().__init__()
        levels = int(math.log2(downsample))
        ch = _level_channels(width, levels)
        self.stem = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1) for i in range(levels)
        )
        self.res = nn.Sequential(*[ResBlock(ch[-1]) for _ in range(res_blocks)])
        self.proj = nn.Conv2d(ch[-1], embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the input: [0, 1] -> [-1, 1] conditions the first conv better.
        h = self.stem(x * 2.0 - 1.0)
        for conv in self.down:
            h = conv(F.relu(h))
        h = self.res(h)
        return self.proj(F.relu(h))


class Decoder(nn.Module):
    """Quantized latents ``[B, D, h, w]`` -> images ``[B, 3, h*d, w*d]`` in [0, 1]."""

    def __init__(self, downsample: int, width: int, res_blocks: int, embed_dim: int) -> None:
        super().__init__()
        levels = int(math.log2(downsample))
        ch = _level_channels(width, levels)[::-1]
        self.proj = nn.Conv2d(embed_dim, ch[0], 1)
        self.res = nn.Sequential(*[ResBlock(ch[0]) for _ in range(res_blocks)])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1) for i in range(levels)
        )
        self.out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.res(self.proj(z))
        for conv in self.up:
            h = conv(F.relu(h))
        return torch.sigmoid(self.out(F.relu(h)))


class EMACodebook(nn.Module):
    """Vector quantizer whose codes are EMA means of the encoder outputs assigned to them.

    Buffers (not parameters: no optimizer touches them):
        embedding ``[K, D]``: the codes; cluster_size ``[K]``: EMA of assignment counts per batch;
        embed_sum ``[K, D]``: EMA of the sum of vectors assigned to each code.

    Update per training batch (van den Oord et al. 2017, appendix A.1), with ``n_k`` the
    assignment counts and ``s_k`` the sums of assigned vectors::

        N_k <- decay * N_k + (1 - decay) * n_k
        m_k <- decay * m_k + (1 - decay) * s_k
        e_k <- m_k / ((N_k + eps) / (sum N + K eps) * sum N)      # Laplace smoothing

    Then every code with ``N_k < dead_code_threshold`` (``t``) is restarted on a random encoder
    output ``v`` of the current batch, with ``N_k = t`` and ``m_k = t v``: its mean is ``v``, and
    it survives the next update only if that batch assigns it at least ``t`` vectors, else it is
    restarted again (as in Jukebox, Dhariwal et al. 2020). A longer grace period (say
    ``N_k = 1``) would leave codes that landed on an unpopular vector idle for
    ``log(t) / log(decay)`` steps, which visibly slows early training. cluster_size starts at 0,
    so the first training batch restarts every code it did not use: a data-dependent init.
    """

    embedding: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor

    def __init__(
        self, vocab_size: int, embed_dim: int, decay: float, dead_code_threshold: float
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        # Random codes only matter before the first training batch, which restarts every code
        # it does not use; the zero statistics mean "no assignments seen yet".
        self.register_buffer("embedding", torch.randn(vocab_size, embed_dim))
        self.register_buffer("cluster_size", torch.zeros(vocab_size))
        self.register_buffer("embed_sum", torch.zeros(vocab_size, embed_dim))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Flat latents ``[N, D]`` -> ids ``[N]`` of the nearest codes (squared L2)."""
        # ||z||^2 is the same for every code, so only ||e||^2 - 2 z.e decides the argmin.
        # fp32 even under a bf16 autocast (train.amp): rounding would change the argmin.
        with full_precision(z.device):
            e = self.embedding.float()
            dist_ = (e * e).sum(1)[None, :] - 2.0 * z.float() @ e.t()
            return dist_.argmin(1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[...]`` -> codes ``[..., D]``."""
        return F.embedding(ids, self.embedding)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """One EMA step from flat latents ``[N, D]`` and their assigned ids ``[N]``.

        Under torch.distributed the counts and sums are all-reduced first, so every replica
        applies the same update and the codebooks stay identical.
        """
        z = z.float()
        counts = torch.bincount(ids, minlength=self.vocab_size).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, z)
        all_reduce_sum(counts)
        all_reduce_sum(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + _LAPLACE_EPS) / (n + self.vocab_size * _LAPLACE_EPS) * n
        self.embedding.copy_(self.embed_sum / smoothed[:, None])
        self.restart_dead_codes(z)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor) -> int:
        """Move codes with EMA usage below the threshold onto random rows of ``z`` ``[N, D]``.

        Returns the number of restarted codes. Rank 0 picks the vectors and broadcasts them.
        """
        dead = (self.cluster_size < self.dead_code_threshold).nonzero().flatten()
        n_dead = int(dead.numel())
        if n_dead == 0 or z.shape[0] == 0:
            return 0
        if z.shape[0] >= n_dead:  # distinct vectors when the batch has enough
            pick = torch.randperm(z.shape[0], device=z.device)[:n_dead]
        else:
            pick = torch.randint(0, z.shape[0], (n_dead,), device=z.device)
        fresh = z[pick].to(self.embedding.dtype).contiguous()
        broadcast_from_main(fresh)
        self.embedding[dead] = fresh
        self.embed_sum[dead] = fresh * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold
        return n_dead


def chroma_weighted_mse(recon: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """Pixel MSE with the colour part of the error weighted: ``[B, 3, H, W]`` x2 -> scalar.

    Each pixel's error ``e = recon - x`` (3 channels) splits into its grey part (the channel
    mean ``m``, equal in R, G and B) and its colour part ``e - m``, which are orthogonal, so
    ``|e|^2 = 3 m^2 + |e - m|^2``. The loss is ``(3 m^2 + weight |e - m|^2) / 3`` averaged over
    pixels: ``weight = 1`` is exactly the plain MSE. Why: in photos most of the error energy
    is in brightness, so the plain MSE lets a tokenizer spend its codes on brightness and
    return washed-out colour (``colour_kept`` in ``evaluate_tokenizer``); ``weight > 1`` makes
    colour errors cost more (docs/METHOD_CHOICES.md, "Tokenizer colour").
    """
    if weight == 1.0:  # the plain MSE, bit for bit (existing runs resume exactly)
        return F.mse_loss(recon, x)
    err = recon - x
    grey = err.mean(1, keepdim=True)
    colour = (err - grey).pow(2).sum(1)
    return (3.0 * grey.squeeze(1).pow(2) + weight * colour).mean() / 3.0


class VQVAE(ImageTokenizer):
    """VQ-VAE tokenizer: images ``[B, 3, H, W]`` in [0, 1] <-> ids ``[B, H/d, W/d]``.

    Args:
        vocab_size: number of codes K.
        downsample: pixels per token along each side d (a power of two).
        width: channels on the token grid (halved at each finer resolution, at least 16).
        res_blocks: residual blocks in the encoder and in the decoder.
        embed_dim: code dimension D.
        ema_decay: EMA decay of the codebook statistics.
        commitment: weight beta of the commitment loss ``||z_e - sg(e)||^2``.
        dead_code_threshold: EMA usage (assignments per batch) below which a code is restarted.
        chroma_weight: weight of the colour part of the reconstruction error against its grey
            part (``chroma_weighted_mse``); 1 is the plain pixel MSE.
    """

    def __init__(
        self,
        vocab_size: int = 1024,
        downsample: int = 4,
        width: int = 64,
        res_blocks: int = 2,
        embed_dim: int = 32,
        ema_decay: float = 0.99,
        commitment: float = 0.25,
        dead_code_threshold: float = 0.01,
        chroma_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise CimptError(f"tokenizer.downsample must be a power of two, got {downsample}")
        if vocab_size < 2 or width < 1 or embed_dim < 1 or res_blocks < 0:
            raise CimptError(
                "tokenizer sizes must be positive (vocab_size >= 2, width, embed_dim >= 1, "
                f"res_blocks >= 0), got {vocab_size}, {width}, {embed_dim}, {res_blocks}"
            )
        if not 0.0 <= ema_decay < 1.0:
            raise CimptError(f"tokenizer.ema_decay must be in [0, 1), got {ema_decay}")
        if not (math.isfinite(chroma_weight) and chroma_weight > 0.0):
            raise CimptError(
                f"tokenizer.chroma_weight must be positive and finite, got {chroma_weight}"
            )
        self.vocab_size = vocab_size
        self.downsample = downsample
        self._arch: dict[str, Any] = dict(
            vocab_size=vocab_size,
            downsample=downsample,
            width=width,
            res_blocks=res_blocks,
            embed_dim=embed_dim,
            ema_decay=ema_decay,
            commitment=commitment,
            dead_code_threshold=dead_code_threshold,
            chroma_weight=chroma_weight,
        )
        self.commitment = commitment
        self.chroma_weight = chroma_weight
        self.encoder = Encoder(downsample, width, res_blocks, embed_dim)
        self.codebook = EMACodebook(vocab_size, embed_dim, ema_decay, dead_code_threshold)
        self.decoder = Decoder(downsample, width, res_blocks, embed_dim)

    def arch_config(self) -> dict[str, Any]:
        return dict(kind="vqvae", **self._arch)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise CimptError(f"tokenizer input must be [B, 3, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise CimptError(
                f"tokenizer input {h}x{w} is not divisible by tokenizer.downsample="
                f"{self.downsample}"
            )

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``[B, D, h, w]`` -> (codes ``[B, D, h, w]``, ids ``[B, h, w]``)."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        ids = self.codebook.nearest(flat.float())
        codes = self.codebook.lookup(ids).to(z_e.dtype)
        return codes.view(b, h, w, d).permute(0, 3, 1, 2), ids.view(b, h, w)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training step on images ``[B, 3, H, W]`` in [0, 1] -> dict of scalar tensors.

        Keys: "loss" (= recon_loss + commitment * commit_loss, the only one with a gradient),
        "recon_loss" (pixel MSE, its colour part weighted by ``chroma_weight``), "commit_loss"
        (``||z_e - sg(e)||^2``), "psnr" (mean per image, dB), "perplexity" and "usage" (share
        of the K codes used in this batch). The EMA codebook update happens only in training
        mode.
        """
        self._check_input(x)
        z_e = self.encoder(x)
        codes, ids = self.quantize(z_e)
        commit_loss = F.mse_loss(z_e, codes.detach())
        if self.training:
            flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
            self.codebook.ema_update(flat, ids.flatten())
        # Straight-through estimator: the decoder's gradient w.r.t. the codes goes to z_e.
        z_q = z_e + (codes - z_e).detach()
        recon = self.decoder(z_q)
        recon_loss = chroma_weighted_mse(recon, x, self.chroma_weight)
        stats = codebook_stats(torch.bincount(ids.flatten(), minlength=self.vocab_size))
        return {
            "loss": recon_loss + self.commitment * commit_loss,
            "recon_loss": recon_loss.detach(),
            "commit_loss": commit_loss.detach(),
            "psnr": batch_psnr(recon.detach().float(), x.float()).mean(),
            "perplexity": stats["perplexity"],
            "usage": stats["usage"],
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> ids ``[B, H/d, W/d]`` (int64)."""
        self._check_input(x)
        return self.quantize(self.encoder(x))[1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` -> images ``[B, 3, h*d, w*d]`` in [0, 1]."""
        if ids.ndim != 3:
            raise CimptError(f"token ids must be [B, h, w], got {list(ids.shape)}")
        codes = self.codebook.lookup(ids.long()).permute(0, 3, 1, 2)
        return self.decoder(codes)
