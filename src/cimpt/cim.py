"""Corrupted Image Modeling as one module (Fang et al., ICLR 2023, arXiv 2202.03382).

``CIM.forward`` is docs/METHOD.md's "One training step"; ``_pipeline`` runs steps 3-7, one
short stage method per step, for both ``forward`` and ``visualize``:

    z      = golden_tokens(x_tok)              # 3. frozen tokenizer ids, no gradient
    logits = generator_step(x, mask, z)        # 4. small BEiT, CE on masked positions
    z_hat  = sample(logits, z, mask)           # 5. sample masked ids, no gradient
    x_cor  = corrupt(z_hat)                    # 6. decode the WHOLE grid, resize, normalize
    out    = head(enhancer.features(x_cor))    # 7. the objective's head: RESPIX or REVDET
    loss   = gen_loss + enh_weight * enh_loss  # 8. both networks update every step

What differs between RESPIX and REVDET (head, target, loss, metrics, figure panels) is the
objective class in ``cim_objectives``; ``build.build_cim`` builds the module from a config.
The model returns a dict of scalar tensors and never calls backward; the training loop owns
optimisation. The frozen tokenizer is deliberately not a registered submodule: it is neither
in ``state_dict`` (checkpoints) nor in ``parameters()`` (optimizer, DDP), yet ``.to(device)``
moves it along (see ``_apply``).
"""

from __future__ import annotations

import torch

from cimpt.cim_objectives import Objective, Stages
from cimpt.losses import mlm_loss
from cimpt.models.enhancer import Enhancer
from cimpt.models.frozen_tokenizer import FrozenTokenizerModule, check_token_grid
from cimpt.models.generator import BEiTGenerator
from cimpt.models.modes import eval_mode
from cimpt.models.sampling import truncate_logits
from cimpt.tokenizers.base import ImageTokenizer

__all__ = ["CIM"]


class CIM(FrozenTokenizerModule):
    """Generator + frozen tokenizer + enhancer with its head, trained jointly.

    Args:
        tokenizer: frozen image tokenizer (kept outside the module tree).
        generator: predicts token logits ``[B, g, g, V]`` from ``(x, mask)``.
        enhancer: per-position features ``[B, C, g, g]`` of the corrupted image.
        head: the objective (``cim_objectives.Respix`` or ``Revdet``), registered as ``head``:
            its parameters are the checkpoint's ``head.*``.
        mean, std: the dataset normalization of ``x`` (3 values each); ``x_cor`` gets the same.
        enh_weight: lambda in ``L = L_gen + lambda * L_enh``.
        temperature: sampling temperature T; an engine schedule may overwrite
            ``self.temperature`` every step.
        top_k: sample among the ``top_k`` most likely ids only (0: all).
        top_p: nucleus sampling: among the smallest set of ids whose tempered probability
            reaches ``top_p`` (1: all).
        tokenizer_precision: "fp32" (default) runs the frozen tokenizer in fp32 even inside
            the run's autocast; "amp" lets it follow autocast (faster, some ids flip).
    """

    head: Objective
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        tokenizer: ImageTokenizer,
        generator: BEiTGenerator,
        enhancer: Enhancer,
        head: Objective,
        *,
        mean: list[float] | tuple[float, ...],
        std: list[float] | tuple[float, ...],
        enh_weight: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        tokenizer_precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.attach_tokenizer(tokenizer, tokenizer_precision, enhancer.grid * enhancer.patch_size)
        self.generator = generator
        self.enhancer = enhancer
        self.head = head
        self.enh_weight = float(enh_weight)
        self.temperature = float(temperature)
        self.top_k, self.top_p = int(top_k), float(top_p)
        # Non-persistent: derived from the config, so kept out of checkpoints.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def no_weight_decay(self) -> set[str]:
        """Full parameter names without weight decay: position embeddings, [CLS], [MASK]."""
        names = {f"generator.{n}" for n in self.generator.no_weight_decay()}
        names |= {f"enhancer.{n}" for n in self.enhancer.no_weight_decay()}
        present = {n for n, _ in self.named_parameters()}
        return names & present

    # ---- docs/METHOD.md step 3: golden_tokens (FrozenTokenizerModule) ----------------------
    # ---- step 4 -----------------------------------------------------------------------------
    def generator_step(
        self, x: torch.Tensor, mask: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generator logits and its masked cross-entropy.

        Args:
            x: ``[B, 3, R, R]`` normalized.
            mask: ``[B, g, g]`` bool.
            z: golden ids ``[B, g, g]``.

        Returns:
            ``(logits [B, g, g, V], gen_loss, gen_acc)``.
        """
        logits = self.generator(x, mask)
        loss, acc = mlm_loss(logits, z, mask)
        return logits, loss, acc

    # ---- step 5 -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, logits: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Corrupted ids: ``z`` outside the mask, a sample of ``softmax(logits / T)`` inside.

        Uses the Gumbel-max trick, ``argmax(logits + T * G)`` with ``G ~ Gumbel(0, 1)``, which
        is an exact sample of ``softmax(logits / T)`` for T > 0 and becomes argmax as T -> 0
        without dividing by T. No gradient flows back to the generator (paper, Sec. 2).
        With ``top_k`` / ``top_p`` the distribution is first restricted to the k most likely
        ids / the nucleus (our options, not the paper's: docs/METHOD_CHOICES.md).

        Args:
            logits: ``[B, g, g, V]``.
            z: ``[B, g, g]`` int64.
            mask: ``[B, g, g]`` bool.

        Returns:
            z_hat ``[B, g, g]`` int64.
        """
        # Static shapes: every position is sampled and ``where`` keeps the original id outside
        # the mask, so no host-device sync and no data-dependent shape (GPU, torch.compile).
        scores = truncate_logits(logits.detach().float(), self.top_k, self.top_p, self.temperature)
        if self.temperature > 0:
            # G = -log(-log(U)); torch.rand + log is several times faster on CPU than
            # exponential_ and this runs over B x g x g x V values every step.
            u = torch.rand_like(scores).clamp_(min=torch.finfo(scores.dtype).tiny)
            scores = scores - self.temperature * torch.log(-torch.log(u))
        z_hat = torch.where(mask.bool(), scores.argmax(-1), z)
        return z_hat

    # ---- step 6: decode_image (FrozenTokenizerModule) --------------------------------
    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """[0, 1] image -> dataset-normalized, like ``x``. Shapes ``[B, 3, H, W]``."""
        return (img - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize``, clamped to [0, 1]. Shapes ``[B, 3, H, W]``."""
        return (x.float() * self.std + self.mean).clamp(0.0, 1.0)

    def corrupt(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The corrupted image: the whole grid decoded, so unmasked areas are reconstructions.

        Args:
            z_hat: ``[B, g, g]``.

        Returns:
            x_cor ``[B, 3, R, R]`` normalized like ``x``.
        """
        return self.normalize(self.decode_image(z_hat))

    # ---- steps 3-7, shared by forward and visualize -----------------------------------------
    def _pipeline(self, batch: dict[str, torch.Tensor]) -> Stages:
        """Mask -> golden tokens -> generator -> sample -> corrupt -> enhancer and head.

        Args:
            batch: ``{"x": [B, 3, R, R], "x_tok": [B, 3, T, T], "mask": [B, g, g] bool, ...}``.
        """
        x, mask = batch["x"], batch["mask"].bool()
        z = self.golden_tokens(batch["x_tok"])
        check_token_grid(z, mask)
        logits, gen_loss, gen_acc = self.generator_step(x, mask, z)
        z_hat = self.sample(logits, z, mask)
        x_cor = self.corrupt(z_hat)
        out = self.head(self.enhancer.features(x_cor))
        return Stages(x, mask, z, logits, gen_loss, gen_acc, z_hat, x_cor, out)

    # ---- step 8 -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One CIM training step's losses.

        Args:
            batch: ``{"x": [B, 3, R, R], "x_tok": [B, 3, T, T], "mask": [B, g, g] bool, ...}``.

        Returns:
            scalar tensors: "loss", "gen_loss", "enh_loss", "gen_acc", "replaced" (share of all
            positions whose id changed), "replaced_masked" (same among masked positions), and
            the objective's metrics ("respix_loss"/"respix_vs_zero" or
            "revdet_acc"/"revdet_pos"/"revdet_prior_acc"/"revdet_margin").
        """
        s = self._pipeline(batch)
        enh_loss, metrics = self.head.loss(s)
        replaced = s.replaced
        return {
            "loss": s.gen_loss + self.enh_weight * enh_loss,
            "gen_loss": s.gen_loss.detach(),
            "enh_loss": enh_loss.detach(),
            "gen_acc": s.gen_acc,
            "replaced": replaced.float().mean(),
            "replaced_masked": (replaced & s.mask).sum().float() / s.mask.sum().clamp_min(1),
            **metrics,
        }

    @torch.no_grad()
    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detached CPU tensors for figures, computed in eval mode (no drop path).

        Returns:
            "original", "recon" (decode(z)), "corrupted": ``[B, 3, R, R]`` in [0, 1];
            "mask": ``[B, g, g]`` bool; then the objective's panels (``Respix.panels``,
            ``Revdet.panels``).
        """
        with eval_mode(self):
            s = self._pipeline(batch)
            vis = {
                "original": self.denormalize(s.x),
                "recon": self.decode_image(s.z),
                "mask": s.mask,
                "corrupted": self.denormalize(s.x_cor),
                **self.head.panels(s, self.denormalize),
            }
        return {k: v.detach().cpu() for k, v in vis.items()}
