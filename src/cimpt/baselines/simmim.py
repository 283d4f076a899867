"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022) as a
``cimpt pretrain`` objective.

One step: masks of square *mask patches* (``simmim.mask_patch_size`` px, larger than the
model's patches) are drawn by the data pipeline; the encoder sees every patch, masked ones
replaced by a learned [MASK] embedding (ViT) or colour (CNN, ``masked_input``); a one-layer
linear head predicts each patch's pixels; the loss is L1 on the masked pixels of the
dataset-normalized image, averaged over masked pixels and channels, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from cimpt.baselines.masked_input import MaskEmbedding
from cimpt.baselines.patches import mask_to_pixels, masked_input_panel
from cimpt.models.enhancer import Enhancer
from cimpt.models.heads import RespixHead
from cimpt.models.modes import eval_mode


class SimMIM(nn.Module):
    """Encoder on the masked image + linear pixel head + masked L1.

    Args:
        enhancer: ViT or CNN ``Enhancer``.
        mean, std: dataset normalization of ``x`` (for figures).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, enhancer: Enhancer, *, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.enhancer = enhancer
        self.mask_embed = MaskEmbedding(enhancer)
        # SimMIM's head: a 1x1 convolution to stride**2 * 3 values + pixel shuffle, i.e. one
        # linear map per grid position, which is exactly RespixHead.
        self.head = RespixHead(enhancer.out_dim, enhancer.patch_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def no_weight_decay(self) -> set[str]:
        names = {f"enhancer.{n}" for n in self.enhancer.no_weight_decay()}
        return names | {"mask_embed.token"}

    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, R, R]``, ``mask [B, g, g]`` -> predicted image ``[B, 3, R, R]``."""
        return self.head(self.mask_embed.features(self.enhancer, x, mask))

    def loss(self, pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean ``|pred - x|`` over the masked pixels and the 3 channels; ``pred``, ``x``
        ``[B, 3, R, R]``, ``mask [B, g, g]``."""
        m = mask_to_pixels(mask, self.enhancer.patch_size).float()  # [B, 1, R, R]
        err = (pred.float() - x.float()).abs() * m
        return err.sum() / (m.sum() * x.shape[1]).clamp_min(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"x", "mask"}`` -> ``{"loss", "simmim_loss"}``."""
        x, mask = batch["x"], batch["mask"].bool()
        loss = self.loss(self.predict(x, mask), x, mask)
        return {"loss": loss, "simmim_loss": loss.detach()}

    @torch.no_grad()
    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panels in [0, 1]: "original", "mask", "masked_input", "reconstruction" (visible
        pixels copied, masked ones the raw prediction, de-normalized with the dataset's
        mean and std only)."""
        with eval_mode(self):
            x, mask = batch["x"], batch["mask"].bool()
            pred = self.predict(x, mask).float()
            p = self.enhancer.patch_size
            rec = torch.where(mask_to_pixels(mask, p), pred, x.float())
            original = (x.float() * self.std + self.mean).clamp(0, 1)
            panels = {
                "original": original,
                "mask": mask,
                "masked_input": masked_input_panel(original, mask, p),
                "reconstruction": (rec * self.std + self.mean).clamp(0, 1),
            }
        return {k: v.detach().cpu() for k, v in panels.items()}
