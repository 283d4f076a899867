"""BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022) as a
``cimpt pretrain`` objective, with the same frozen tokenizer files as CIM.

One step: the tokenizer turns the tokenizer view into ids ``z [B, g, g]``; BEiT's blockwise
mask (``mask.*``, the same generator CIM's generator uses) hides about 40 % of the patches;
the enhancer reads the image with masked patches replaced by a learned [MASK] embedding
(``masked_input``); a linear head predicts the id at every position; cross-entropy on masked
positions only. This is CIM's generator task done by the enhancer itself, so the two share
``mlm_loss``.
"""

from __future__ import annotations

import torch
from torch import nn

from cimpt.baselines.masked_input import MaskEmbedding
from cimpt.losses import mlm_loss
from cimpt.models.enhancer import Enhancer
from cimpt.models.frozen_tokenizer import FrozenTokenizerModule, check_token_grid
from cimpt.models.modes import eval_mode
from cimpt.tokenizers.base import ImageTokenizer


class TokenHead(nn.Module):
    """Linear per position -> logits over the vocabulary: ``[B, C, g, g] -> [B, g, g, V]``."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats.permute(0, 2, 3, 1))


class BEiT(FrozenTokenizerModule):
    """Masked-token prediction by the enhancer.

    Args:
        tokenizer: frozen tokenizer (kept outside the module tree, as in CIM).
        enhancer: ViT or CNN ``Enhancer``.
        vocab_size: ids the head predicts (the tokenizer's vocabulary).
        mean, std: dataset normalization of ``x`` (for figures).
        tokenizer_precision: "fp32" or "amp", as for CIM.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        tokenizer: ImageTokenizer,
        enhancer: Enhancer,
        vocab_size: int,
        *,
        mean: list[float],
        std: list[float],
        tokenizer_precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.attach_tokenizer(tokenizer, tokenizer_precision, enhancer.grid * enhancer.patch_size)
        self.enhancer = enhancer
        self.mask_embed = MaskEmbedding(enhancer)
        self.head = TokenHead(enhancer.out_dim, vocab_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def no_weight_decay(self) -> set[str]:
        names = {f"enhancer.{n}" for n in self.enhancer.no_weight_decay()}
        return names | {"mask_embed.token"}

    def logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, R, R]``, ``mask [B, g, g]`` -> ``[B, g, g, V]``."""
        return self.head(self.mask_embed.features(self.enhancer, x, mask))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"x", "x_tok", "mask"}`` -> ``{"loss", "beit_loss", "beit_acc"}`` (masked-token
        cross-entropy and top-1 accuracy)."""
        x, mask = batch["x"], batch["mask"].bool()
        z = self.golden_tokens(batch["x_tok"])
        check_token_grid(z, mask)
        loss, acc = mlm_loss(self.logits(x, mask), z, mask)
        return {"loss": loss, "beit_loss": loss.detach(), "beit_acc": acc}

    @torch.no_grad()
    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panels in [0, 1]: "original", "recon" (decode of the true ids), "mask",
        "reconstruction" (decode of the true ids with masked ones replaced by the argmax)."""
        with eval_mode(self):
            x, mask = batch["x"], batch["mask"].bool()
            z = self.golden_tokens(batch["x_tok"])
            guess = torch.where(mask, self.logits(x, mask).argmax(-1), z)
            panels = {
                "original": (x.float() * self.std + self.mean).clamp(0, 1),
                "recon": self.decode_image(z),
                "mask": mask,
                "reconstruction": self.decode_image(guess),
            }
        return {k: v.detach().cpu() for k, v in panels.items()}
