"""Corrupted Image Modeling as one module (Fang et al., ICLR 2023, arXiv 2202.03382).

``CIM.forward`` is docs/METHOD.md's "One training step", one short stage method per step:

    z      = golden_tokens(x_tok)              # 3. frozen tokenizer ids, no gradient
    logits = generator_step(x, mask, z)        # 4. small BEiT, CE on masked positions
    z_hat  = sample(logits, z, mask)           # 5. sample masked ids, no gradient
    x_cor  = corrupt(z_hat)                    # 6. decode the WHOLE grid, resize, normalize
    enh    = enhancer_step(x_cor, x, z, z_hat) # 7. RESPIX or REVDET
    loss   = gen_loss + enh_weight * enh_loss  # 8. both networks update every step

The model returns a dict of scalar tensors and never calls backward; the training loop owns
optimisation. The frozen tokenizer is deliberately not a registered submodule: it is neither
in ``state_dict`` (checkpoints) nor in ``parameters()`` (optimizer, DDP), yet ``.to(device)``
moves it along (see ``_apply``).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from cimpt.errors import CimptError
from cimpt.losses import (
    mlm_loss,
    respix_loss,
    revdet_loss,
    sliding_window_normalize,
    sliding_window_stats,
)
from cimpt.models.enhancer import Enhancer, build_enhancer
from cimpt.models.frozen_tokenizer import (
    TOKENIZER_PRECISIONS,
    FrozenTokenizerModule,
    check_token_grid,
    check_tokenizer,
)
from cimpt.models.generator import BEiTGenerator
from cimpt.models.heads import RespixHead, RevdetHead
from cimpt.models.modes import eval_mode
from cimpt.models.sampling import truncate_logits
from cimpt.tokenizers.base import ImageTokenizer

OBJECTIVES = ("respix", "revdet")
__all__ = ["CIM", "OBJECTIVES", "TOKENIZER_PRECISIONS", "build_cim"]


class CIM(FrozenTokenizerModule):
    """Generator + frozen tokenizer + enhancer with its head, trained jointly.

    Args:
        tokenizer: frozen image tokenizer (kept outside the module tree).
        generator: predicts token logits ``[B, g, g, V]`` from ``(x, mask)``.
        enhancer: per-position features ``[B, C, g, g]`` of the corrupted image.
        head: ``RespixHead`` for "respix", ``RevdetHead`` for "revdet".
        objective: "respix" or "revdet".
        mean, std: the dataset normalization of ``x`` (3 values each); ``x_cor`` gets the same.
        enh_weight: lambda in ``L = L_gen + lambda * L_enh``.
        respix_window: sliding-window side k for the RESPIX target; 0 means the patch size.
        respix_residual: RESPIX predicts ``x - x_cor`` (both dataset-normalized) instead of the
            sliding-window-normalized image (a choice, docs/METHOD.md step 7).
        temperature: sampling temperature T; an engine schedule may overwrite
            ``self.temperature`` every step.
        top_k: sample among the ``top_k`` most likely ids only (0: all).
        top_p: nucleus sampling: among the smallest set of ids whose tempered probability
            reaches ``top_p`` (1: all).
        tokenizer_precision: "fp32" (default) runs the frozen tokenizer in fp32 even inside
            the run's autocast; "amp" lets it follow autocast (faster, some ids flip).
    """

    mean: torch.Tensor
    std: torch.Tensor
    prior_replaced: torch.Tensor
    prior_seen: torch.Tensor

    def __init__(
        self,
        tokenizer: ImageTokenizer,
        generator: BEiTGenerator,
        enhancer: Enhancer,
        head: nn.Module,
        *,
        objective: str,
        mean: list[float] | tuple[float, ...],
        std: list[float] | tuple[float, ...],
        enh_weight: float = 1.0,
        respix_window: int = 0,
        respix_residual: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        tokenizer_precision: str = "fp32",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise CimptError(f"objective: '{objective}' is not one of {', '.join(OBJECTIVES)}")
        if respix_window < 0:
            raise CimptError(f"loss.respix_window: {respix_window} must be >= 0 (0: patch size)")
        self.attach_tokenizer(tokenizer, tokenizer_precision, enhancer.grid * enhancer.patch_size)
        self.generator = generator
        self.enhancer = enhancer
        self.head = head
        self.objective = objective
        self.enh_weight = float(enh_weight)
        self.respix_window = int(respix_window) or enhancer.patch_size
        self.respix_residual = bool(respix_residual)
        self.temperature = float(temperature)
        self.top_k, self.top_p = int(top_k), float(top_p)
        # Non-persistent: derived from the config, so kept out of checkpoints.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # REVDET's position-only baseline (revdet_prior_acc): running per-cell count of
        # replaced tokens and of images seen. Non-persistent: a diagnostic, re-estimated
        # after a resume within a few steps, and old checkpoints stay loadable.
        g = enhancer.grid
        self.register_buffer("prior_replaced", torch.zeros(g, g), persistent=False)
        self.register_buffer("prior_seen", torch.zeros(()), persistent=False)

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

    # ---- step 7 -----------------------------------------------------------------------------
    def respix_target(self, x: torch.Tensor, x_cor: torch.Tensor) -> torch.Tensor:
        """RESPIX regression target ``[B, 3, R, R]``.

        Default: ``x`` normalized by the mean/std of the k x k window around each pixel.
        With ``respix_residual``: ``x - x_cor`` (what the corruption changed).
        """
        if self.respix_residual:
            return x.float() - x_cor.float()
        return sliding_window_normalize(x, self.respix_window)

    def enhancer_step(
        self, x_cor: torch.Tensor, x: torch.Tensor, z: torch.Tensor, z_hat: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Enhancer loss on the corrupted image.

        Args:
            x_cor: ``[B, 3, R, R]`` normalized corrupted image (no gradient).
            x: ``[B, 3, R, R]`` normalized original.
            z, z_hat: ``[B, g, g]`` original and corrupted ids.

        Returns:
            ``{"enh_loss", "output"}`` plus, for RESPIX, ``"respix_loss"`` and
            ``"respix_vs_zero"`` (the loss over the loss of a zero prediction); for REVDET,
            ``"revdet_acc"`` and ``"revdet_pos"``. ``"output"`` is the head's raw output:
            pixels ``[B, 3, R, R]`` (RESPIX) or logits ``[B, g, g]`` (REVDET).
        """
        out = self.head(self.enhancer.features(x_cor))
        if self.objective == "respix":
            target = self.respix_target(x, x_cor)
            loss = respix_loss(out, target)
            # The loss a zero prediction would get: below 1 only if the enhancer learned.
            vs_zero = loss.detach() / target.float().pow(2).mean().clamp_min(1e-12)
            return {
                "enh_loss": loss,
                "respix_loss": loss.detach(),
                "respix_vs_zero": vs_zero,
                "output": out,
            }
        # A sampled id equal to the original is "not replaced" (paper; docs/METHOD.md step 7).
        loss, acc, pos = revdet_loss(out, z_hat != z)
        return {"enh_loss": loss, "revdet_acc": acc, "revdet_pos": pos, "output": out}

    # ---- step 8 -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One CIM training step's losses.

        Args:
            batch: ``{"x": [B, 3, R, R], "x_tok": [B, 3, T, T], "mask": [B, g, g] bool, ...}``.

        Returns:
            scalar tensors: "loss", "gen_loss", "enh_loss", "gen_acc", "replaced" (share of all
            positions whose id changed), "replaced_masked" (same among masked positions), and
            "respix_loss"/"respix_vs_zero" or
            "revdet_acc"/"revdet_pos"/"revdet_prior_acc"/"revdet_margin".
        """
        x, mask = batch["x"], batch["mask"].bool()
        z = self.golden_tokens(batch["x_tok"])
        check_token_grid(z, mask)
        logits, gen_loss, gen_acc = self.generator_step(x, mask, z)
        z_hat = self.sample(logits, z, mask)
        x_cor = self.corrupt(z_hat)
        enh = self.enhancer_step(x_cor, x, z, z_hat)
        enh.pop("output")
        enh_loss = enh.pop("enh_loss")
        changed = z_hat != z
        if self.objective == "revdet":
            enh["revdet_prior_acc"] = self.position_prior_accuracy(changed)
            enh["revdet_margin"] = enh["revdet_acc"] - enh["revdet_prior_acc"]
        return {
            "loss": gen_loss + self.enh_weight * enh_loss,
            "gen_loss": gen_loss.detach(),
            "enh_loss": enh_loss.detach(),
            "gen_acc": gen_acc,
            "replaced": changed.float().mean(),
            "replaced_masked": (changed & mask).sum().float() / mask.sum().clamp_min(1),
            **enh,
        }

    @torch.no_grad()
    def position_prior_accuracy(self, replaced: torch.Tensor) -> torch.Tensor:
        """Accuracy of a detector that ignores the image: "replaced" wherever the cell was
        replaced in more than half of the images seen before this batch.

        REVDET's fair baseline: block masks are not uniform over the grid (BEiT's favour
        the centre), so position alone beats the majority rate. Counts are updated after
        scoring (the prior never sees the batch it scores) and only in training mode.

        Args:
            replaced: ``[B, g, g]`` bool, ``z_hat != z``.

        Returns:
            scalar accuracy of the prior on this batch.
        """
        freq = self.prior_replaced / self.prior_seen.clamp_min(1)
        acc = ((freq > 0.5) == replaced).float().mean()
        if self.training:
            self.prior_replaced += replaced.sum(0).to(self.prior_replaced.dtype)
            self.prior_seen += replaced.shape[0]
        return acc

    @torch.no_grad()
    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detached CPU tensors for figures, computed in eval mode (no drop path).

        Returns:
            "original", "recon" (decode(z)), "corrupted": ``[B, 3, R, R]`` in [0, 1];
            "mask": ``[B, g, g]`` bool; RESPIX: "target_norm" and "prediction_norm" (the
            normalized target and output on one fixed scale) and "prediction" (the output
            in pixels, de-normalized with the corrupted image's window statistics), each
            ``[B, 3, R, R]`` in [0, 1];
            REVDET: "prob" ``[B, g, g]`` (sigmoid) and "replaced" ``[B, g, g]`` bool.
        """
        with eval_mode(self):
            x, mask = batch["x"], batch["mask"].bool()
            z = self.golden_tokens(batch["x_tok"])
            logits, _, _ = self.generator_step(x, mask, z)
            z_hat = self.sample(logits, z, mask)
            x_cor = self.corrupt(z_hat)
            out = self.enhancer_step(x_cor, x, z, z_hat)["output"].float()
            vis = {
                "original": self.denormalize(x),
                "recon": self.decode_image(z),
                "mask": mask,
                "corrupted": self.denormalize(x_cor),
            }
            if self.objective == "respix":
                target = self.respix_target(x, x_cor)
                vis["target_norm"] = _normalized_panel(target)
                vis["prediction_norm"] = _normalized_panel(out)
                vis["prediction"] = self.denormalize(self._respix_to_image(out, x_cor))
            else:
                vis["prob"] = torch.sigmoid(out)
                vis["replaced"] = z_hat != z
        return {k: v.detach().cpu() for k, v in vis.items()}

    def _respix_to_image(self, pred: torch.Tensor, x_cor: torch.Tensor) -> torch.Tensor:
        """RESPIX prediction -> dataset-normalized image, with only what the enhancer saw.

        The sliding-window statistics come from the corrupted image ``x_cor`` (the enhancer's
        input), never from the original: with the original's own statistics even a zero
        prediction would render as a blurred copy of the answer.
        """
        if self.respix_residual:
            return x_cor.float() + pred
        mean, std = sliding_window_stats(x_cor, self.respix_window)
        return pred * std + mean


def _normalized_panel(t: torch.Tensor, span: float = 3.0) -> torch.Tensor:
    """A normalized map ``[B, 3, R, R]`` shown in [0, 1] with one fixed scale: -span -> 0,
    0 -> 0.5, +span -> 1 (the same for target and prediction, so they compare honestly)."""
    return ((t.float().clamp(-span, span) + span) / (2 * span)).clamp(0, 1)


def build_cim(cfg: DictConfig, tokenizer: ImageTokenizer) -> CIM:
    """Build the CIM module from the root config and a (loaded) tokenizer.

    The generator sees the enhancer's view ``x`` cut in the enhancer's patches, so both share
    the token grid; the generator predicts ``cfg.tokenizer.vocab_size`` ids.
    """
    check_tokenizer(tokenizer, cfg)
    g, e = cfg.generator, cfg.enhancer
    generator = BEiTGenerator(
        img_size=int(cfg.data.img_size),
        patch_size=int(e.patch_size),
        vocab_size=int(cfg.tokenizer.vocab_size),
        embed_dim=int(g.embed_dim),
        depth=int(g.depth),
        num_heads=int(g.num_heads),
        mlp_ratio=float(g.mlp_ratio),
    )
    enhancer = build_enhancer(cfg)
    head: nn.Module = (
        RespixHead(enhancer.out_dim, enhancer.patch_size)
        if cfg.objective == "respix"
        else RevdetHead(enhancer.out_dim)
    )
    return CIM(
        tokenizer,
        generator,
        enhancer,
        head,
        objective=str(cfg.objective),
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        enh_weight=float(cfg.loss.enh_weight),
        respix_window=int(cfg.loss.respix_window),
        respix_residual=bool(cfg.loss.respix_residual),
        temperature=float(g.temperature),
        top_k=int(g.top_k),
        top_p=float(g.top_p),
        tokenizer_precision=str(cfg.tokenizer.precision),
    )
