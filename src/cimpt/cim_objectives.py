"""CIM's two enhancer objectives, one class each (Fang et al., ICLR 2023, Sec. 2.2).

An objective is the enhancer's head plus everything that depends on which objective runs
(docs/METHOD.md step 7): its target, its loss and logged metrics, and its figure panels.
``CIM`` registers it as its ``head`` child and each class adds no parameter to the head it
extends, so checkpoint keys stay ``head.proj.*``. A new objective is one class here and
one entry in ``OBJECTIVES``.

* ``Respix`` (generative): restore the original pixels, normalized by a sliding window.
* ``Revdet`` (discriminative, like ELECTRA): tell which tokens were replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from cimpt.config import LossConfig
from cimpt.losses import respix_loss, revdet_loss, sliding_window_normalize, sliding_window_stats
from cimpt.models.enhancer import Enhancer
from cimpt.models.heads import RespixHead, RevdetHead

Tensor = torch.Tensor


@dataclass(frozen=True)
class Stages:
    """The tensors of one pass through docs/METHOD.md steps 3-7 (``CIM._pipeline``)."""

    x: Tensor  # [B, 3, R, R] dataset-normalized original
    mask: Tensor  # [B, g, g] bool
    z: Tensor  # [B, g, g] golden ids (step 3)
    logits: Tensor  # [B, g, g, V] generator logits (step 4) ...
    gen_loss: Tensor  # ... their masked cross-entropy ...
    gen_acc: Tensor  # ... and accuracy
    z_hat: Tensor  # [B, g, g] corrupted ids (step 5)
    x_cor: Tensor  # [B, 3, R, R] corrupted image normalized like x, no gradient (step 6)
    out: Tensor  # the objective head's output on x_cor (step 7)

    @property
    def replaced(self) -> Tensor:
        """``[B, g, g]`` bool: the id changed. A sample equal to the original is "not
        replaced" (paper; docs/METHOD.md step 7)."""
        return self.z_hat != self.z


class Objective(Protocol):
    """What ``CIM`` needs of an objective, an ``nn.Module``: its head (enhancer features
    ``[B, C, g, g]`` -> ``out``), ``loss`` (``L_enh`` and the logged scalar metrics) and
    ``panels`` (figure panels, keys of ``viz.COLUMNS``)."""

    def __call__(self, feats: Tensor) -> Tensor: ...
    def loss(self, s: Stages) -> tuple[Tensor, dict[str, Tensor]]: ...
    def panels(self, s: Stages, denormalize: Callable[[Tensor], Tensor]) -> dict[str, Tensor]: ...


class Respix(RespixHead):
    """RESPIX: regress every original pixel from the corrupted image (paper, Sec. 2.2).

    Args:
        dim, patch_size: of the linear per-position head (``RespixHead``).
        window: sliding-window side k of the target (>= 1).
        residual: predict ``x - x_cor`` instead (a choice, docs/METHOD.md step 7).
    """

    def __init__(self, dim: int, patch_size: int, window: int, residual: bool = False) -> None:
        super().__init__(dim, patch_size)
        self.window, self.residual = int(window), bool(residual)

    @classmethod
    def from_config(cls, loss: LossConfig, enhancer: Enhancer) -> Respix:
        p = enhancer.patch_size
        return cls(enhancer.out_dim, p, loss.respix_window or p, loss.respix_residual)

    def target(self, x: Tensor, x_cor: Tensor) -> Tensor:
        """Regression target ``[B, 3, R, R]``: ``x`` normalized by the mean/std of the k x k
        window around each pixel, or with ``residual`` ``x - x_cor`` (what corruption changed)."""
        if self.residual:
            return x.float() - x_cor.float()
        return sliding_window_normalize(x, self.window)

    def loss(self, s: Stages) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE over every pixel; ``respix_vs_zero`` is it over the loss of a zero prediction,
        below 1 only if the enhancer learned something."""
        target = self.target(s.x, s.x_cor)
        loss = respix_loss(s.out, target)
        vs_zero = loss.detach() / target.float().pow(2).mean().clamp_min(1e-12)
        return loss, {"respix_loss": loss.detach(), "respix_vs_zero": vs_zero}

    def panels(self, s: Stages, denormalize: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Panels "target_norm" and "prediction_norm" (target and output on one fixed scale)
        and "prediction" (the output in pixels), each ``[B, 3, R, R]`` in [0, 1]."""
        out = s.out.float()
        return {
            "target_norm": _normalized_panel(self.target(s.x, s.x_cor)),
            "prediction_norm": _normalized_panel(out),
            "prediction": denormalize(self._to_image(out, s.x_cor)),
        }

    def _to_image(self, pred: Tensor, x_cor: Tensor) -> Tensor:
        """Prediction -> dataset-normalized image, with only what the enhancer saw.

        The window statistics come from the corrupted image ``x_cor`` (the enhancer's input),
        never from the original: with the original's own statistics even a zero prediction
        would render as a blurred copy of the answer.
        """
        if self.residual:
            return x_cor.float() + pred
        mean, std = sliding_window_stats(x_cor, self.window)
        return pred * std + mean


class Revdet(RevdetHead):
    """REVDET: one replaced / not-replaced logit per position, label ``z_hat != z``.

    Logged against a position-only baseline (``revdet_prior_acc``): block masks are not
    uniform over the grid (BEiT's favour the centre), so position alone beats the majority
    rate.

    Args:
        dim: feature channels C.
        grid: token grid side g.
    """

    prior_replaced: Tensor
    prior_seen: Tensor

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__(dim)
        # Running per-cell count of replaced tokens and of images seen. Non-persistent: a
        # diagnostic, re-estimated within a few steps after a resume, and old checkpoints
        # stay loadable.
        self.register_buffer("prior_replaced", torch.zeros(grid, grid), persistent=False)
        self.register_buffer("prior_seen", torch.zeros(()), persistent=False)

    @classmethod
    def from_config(cls, loss: LossConfig, enhancer: Enhancer) -> Revdet:
        return cls(enhancer.out_dim, enhancer.grid)

    def loss(self, s: Stages) -> tuple[Tensor, dict[str, Tensor]]:
        """Binary cross-entropy over all positions; accuracy, share of positives, the
        position prior's accuracy and the margin over it."""
        replaced = s.replaced
        loss, acc, pos = revdet_loss(s.out, replaced)
        prior = self.prior_accuracy(replaced)
        metrics = {"revdet_acc": acc, "revdet_pos": pos, "revdet_prior_acc": prior}
        return loss, {**metrics, "revdet_margin": acc - prior}

    def panels(self, s: Stages, denormalize: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        """Panels "prob" (sigmoid of the logits) and "replaced" (the truth), ``[B, g, g]``."""
        return {"prob": torch.sigmoid(s.out.float()), "replaced": s.replaced}

    @torch.no_grad()
    def prior_accuracy(self, replaced: Tensor) -> Tensor:
        """Accuracy of a detector that ignores the image: "replaced" wherever the cell was
        replaced in more than half of the images seen before this batch.

        Counts are updated after scoring (the prior never sees the batch it scores) and only
        in training mode.

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


#: ``objective`` -> how to build it from the root config and the built enhancer.
OBJECTIVES: dict[str, Callable[[LossConfig, Enhancer], Objective]] = {
    "respix": Respix.from_config,
    "revdet": Revdet.from_config,
}


def _normalized_panel(t: Tensor, span: float = 3.0) -> Tensor:
    """A normalized map ``[B, 3, R, R]`` shown in [0, 1] with one fixed scale: -span -> 0,
    0 -> 0.5, +span -> 1 (the same for target and prediction, so they compare honestly)."""
    return ((t.float().clamp(-span, span) + span) / (2 * span)).clamp(0, 1)
