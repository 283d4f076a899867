"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022), as a ``cimpt pretrain`` objective.

One step, with ``N = g*g`` patches and ``K = N - round(ratio * N)`` visible ones:

    keep, restore = split(mask)            # visible ids first, in grid order; exact K per image
    latent = encoder(x[keep])              # the ViT sees only the K visible patches (+ [CLS])
    pred   = decoder(latent, restore)      # light Transformer, own [MASK] and position embeddings
    loss   = MSE(pred, target) on masked patches only; target = per-patch normalized pixels

The encoder is the run's timm ViT with its own (learned) position embeddings, so the encoder
is the same network CIM trains (MAE uses fixed sine-cosine ones; docs/METHOD_CHOICES.md).
A CNN cannot drop input patches, so ``objective=mae`` needs a ViT.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from cimpt.baselines.patches import (
    mask_to_pixels,
    masked_input_panel,
    normalize_patches,
    patchify,
)
from cimpt.errors import CimptError
from cimpt.models.enhancer import Enhancer
from cimpt.models.heads import unpatchify
from cimpt.models.modes import eval_mode

_layer_norm = partial(nn.LayerNorm, eps=1e-6)


def split_visible(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that gather the visible patches first, and the permutation that undoes it.

    Args:
        mask: ``[B, g, g]`` bool with the same number of masked cells in every image.

    Returns:
        ``(order [B, N], restore [B, N])``: ``order[:, :K]`` are the visible patch indices in
        grid order, ``order[:, K:]`` the masked ones; ``restore = argsort(order)`` so that
        ``seq.gather(1, restore)`` puts a sequence in ``order`` back into grid order.
    """
    flat = mask.flatten(1).to(torch.uint8)  # 0 = visible sorts first
    order = torch.argsort(flat, dim=1, stable=True)
    return order, torch.argsort(order, dim=1)


def _gather(seq: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``seq [B, N, C]`` rows ``idx [B, M]`` -> ``[B, M, C]``."""
    return seq.gather(1, idx.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))


class MAEDecoder(nn.Module):
    """MAE's decoder: embed, append [MASK] tokens, unshuffle, add fixed 2-D sine-cosine
    position embeddings, Transformer blocks, norm, linear to the patch pixels.

    Args:
        enc_dim: encoder width C.
        dim, depth, heads: decoder width, blocks and attention heads.
        grid: patch grid side g.
        patch: patch side p (the prediction is ``3 * p * p`` values per patch).
        num_prefix: encoder prefix tokens ([CLS], registers) carried through the decoder.
    """

    pos: torch.Tensor

    def __init__(
        self, enc_dim: int, dim: int, depth: int, heads: int, grid: int, patch: int, num_prefix: int
    ) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = build_sincos2d_pos_embed([grid, grid], dim)  # [N, dim], fixed as in MAE
        pos = torch.cat([torch.zeros(num_prefix, dim), pos])  # prefix tokens: zero position
        self.register_buffer("pos", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(
            *[
                Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=_layer_norm)  # type: ignore[arg-type]
                for _ in range(depth)
            ]
        )
        self.norm = _layer_norm(dim)
        self.pred = nn.Linear(dim, 3 * patch * patch)
        trunc_normal_(self.mask_token, std=0.02)
        self.apply(_init_linear)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """``latent [B, P + K, C]``, ``restore [B, N]`` -> predicted patches ``[B, N, 3*p*p]``."""
        h = self.embed(latent)
        prefix, visible = h[:, : self.num_prefix], h[:, self.num_prefix :]
        b, n = restore.shape
        filler = self.mask_token.to(h.dtype).expand(b, n - visible.shape[1], -1)
        tokens = _gather(torch.cat([visible, filler], dim=1), restore)  # grid order
        h = torch.cat([prefix, tokens], dim=1) + self.pos.to(h.dtype)
        h = self.norm(self.blocks(h))
        return self.pred(h[:, self.num_prefix :])


def _init_linear(m: nn.Module) -> None:
    # MAE: xavier_uniform for linear weights, zero biases.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MAE(nn.Module):
    """Masked autoencoder around the run's ViT enhancer.

    Args:
        enhancer: a ViT ``Enhancer`` (the encoder kept after pre-training).
        decoder: ``MAEDecoder``.
        norm_pix_loss: regress per-patch normalized pixels (MAE's default) instead of pixels.
        mean, std: dataset normalization of ``x`` (for figures).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        enhancer: Enhancer,
        decoder: MAEDecoder,
        *,
        norm_pix_loss: bool,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        if enhancer.kind != "vit":
            raise CimptError(
                f"objective: mae needs a ViT enhancer (its encoder drops the masked patches "
                f"from the input sequence, which a CNN cannot do); '{enhancer.name}' is a CNN: "
                "use objective=simmim, beit, respix or revdet"
            )
        self.enhancer = enhancer
        self.decoder = decoder
        self.norm_pix_loss = bool(norm_pix_loss)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def no_weight_decay(self) -> set[str]:
        names = {f"enhancer.{n}" for n in self.enhancer.no_weight_decay()}
        return names | {"decoder.mask_token"}

    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder on the visible patches only: ``x [B, 3, R, R]``, ``keep [B, K]`` ->
        ``[B, P + K, C]`` (P prefix tokens), after the backbone's final norm."""
        bb = self.enhancer.backbone
        tokens = bb._pos_embed(bb.patch_embed(x))  # [B, P + N, C], positions added first
        p = bb.num_prefix_tokens
        tokens = torch.cat([tokens[:, :p], _gather(tokens[:, p:], keep)], dim=1)
        return bb.norm(bb.blocks(bb.norm_pre(tokens)))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Regression target ``[B, N, 3*p*p]``: the normalized image's patches, each
        normalized by its own mean and std when ``norm_pix_loss``."""
        t = patchify(x.float(), self.enhancer.patch_size)
        return normalize_patches(t) if self.norm_pix_loss else t

    def encode_visible(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder half of a step: ``x [B, 3, R, R]``, ``mask [B, g, g]`` ->
        ``(latent [B, P + K, C], restore [B, N])`` for ``decoder(latent, restore)``."""
        order, restore = split_visible(mask)
        counts = mask.flatten(1).sum(1)
        if bool((counts != counts[0]).any()):
            raise CimptError("mae: every image of a batch needs the same number of masked patches")
        keep = order[:, : mask[0].numel() - int(counts[0])]
        return self.encode(x, keep), restore

    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted patches ``[B, N, 3*p*p]`` for every position (only masked ones count)."""
        return self.decoder(*self.encode_visible(x, mask))

    def loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean over masked patches of the per-patch mean squared error between
        ``pred [B, N, 3*p*p]`` and ``target(x)``; ``mask [B, g, g]``."""
        per_patch = (pred.float() - self.target(x)).pow(2).mean(dim=-1)  # [B, N]
        m = mask.flatten(1).float()
        return (per_patch * m).sum() / m.sum().clamp_min(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"x": [B, 3, R, R], "mask": [B, g, g]}`` -> ``{"loss", "mae_loss"}``."""
        x, mask = batch["x"], batch["mask"].bool()
        loss = self.loss(self.predict(x, mask), x, mask)
        return {"loss": loss, "mae_loss": loss.detach()}

    @torch.no_grad()
    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panels in [0, 1]: "original", "mask", "masked_input", "reconstruction" (visible
        patches copied, masked ones predicted). With ``norm_pix_loss`` the prediction is
        brought back to pixels with each masked patch's *true* mean and std, as in MAE's own
        figures: the panel shows structure, not the patch's brightness."""
        with eval_mode(self):
            x, mask = batch["x"], batch["mask"].bool()
            pred = self.predict(x, mask).float()
            if self.norm_pix_loss:
                t = patchify(x.float(), self.enhancer.patch_size)
                pred = pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
            g, p = self.enhancer.grid, self.enhancer.patch_size
            rec = unpatchify(pred.view(x.shape[0], g, g, -1), p)
            m = mask_to_pixels(mask, p)
            original = (x.float() * self.std + self.mean).clamp(0, 1)
            rec = (torch.where(m, rec, x.float()) * self.std + self.mean).clamp(0, 1)
            panels = {
                "original": original,
                "mask": mask,
                "masked_input": masked_input_panel(original, mask, p),
                "reconstruction": rec,
            }
        return {k: v.detach().cpu() for k, v in panels.items()}
