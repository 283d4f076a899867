"""The CIM enhancer: any timm backbone, seen through one per-position feature accessor.

Fang et al., "Corrupted Image Modeling" (ICLR 2023, arXiv 2202.03382), Sec. 2: the enhancer
is the network kept after pre-training; it can be a ViT or a CNN and sees only the corrupted
image. Both objectives (RESPIX, REVDET) need one feature vector per token-grid position, so
the heads read ``Enhancer.features(x) -> [B, C, g, g]`` and never touch the backbone.

Extension point for CNNs (separate issue): add a branch to ``_backbone_kind`` that recognises
a CNN, build it with timm ``features_only=True`` (or ``forward_intermediates``) plus a small
upsampling decoder to the g x g grid, and implement ``_cnn_features`` with the same output
shape. Nothing outside this module has to change.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from cimpt.errors import CimptError


def _check_timm_name(name: str) -> None:
    """Fail early, with the config key, when timm does not know ``name``."""
    base = name.split(".", 1)[0]  # timm accepts "arch.pretrained_tag"
    if not (timm.is_model(name) or timm.is_model(base)):
        raise CimptError(f"enhancer.name: '{name}' is not a timm model")


def _create_vit(
    name: str, img_size: int, patch_size: int, drop_path: float, kwargs: dict[str, Any]
) -> Any:
    """``timm.create_model`` for a ViT sized for this image and patch, without a classifier."""
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=0, img_size=img_size, patch_size=patch_size,
            drop_path_rate=drop_path, **kwargs,
        )
    except TypeError as exc:
        # timm passes unknown keyword arguments to the model class, which raises TypeError
        # (a CNN does not take img_size/patch_size; a typo in enhancer.kwargs neither).
        first = str(exc).splitlines()[0]
        raise CimptError(
            f"enhancer.name: timm could not build '{name}' as a ViT with img_size={img_size}, "
            f"patch_size={patch_size}, kwargs={dict(kwargs)} ({first}); only ViT enhancers are "
            "supported so far"
        ) from None


def _backbone_kind(model: nn.Module) -> str:
    """'vit' for a patch-token transformer; the CNN path will add 'cnn' here."""
    if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        return "vit"
    raise CimptError(
        f"enhancer.name: {type(model).__name__} is not a ViT with patch tokens; "
        "only ViT enhancers are supported so far"
    )


class Enhancer(nn.Module):
    """A timm backbone with per-position features on the token grid.

    Args:
        name: timm model name (e.g. ``vit_tiny_patch16_224``; only the architecture is used,
            never downloaded weights).
        img_size: side R of the input image.
        patch_size: patch side; the grid is ``g = R / patch_size``.
        drop_path: stochastic depth rate.
        kwargs: extra timm keyword arguments (e.g. ``embed_dim``, ``depth``, ``num_heads``).

    Attributes:
        backbone: the timm model (what is exported and fine-tuned).
        patch_size: pixels per grid cell along each side.
        out_dim: channels C of ``features``.
        grid: side g of the feature grid.
    """

    # Any: timm models expose architecture-specific attributes (patch_embed, num_prefix_tokens).
    backbone: Any

    def __init__(
        self,
        name: str,
        img_size: int,
        patch_size: int,
        drop_path: float,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_timm_name(name)
        self.name = name
        self.backbone = _create_vit(name, img_size, patch_size, drop_path, dict(kwargs or {}))
        self.kind = _backbone_kind(self.backbone)
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.out_dim = int(self.backbone.num_features)
        built = tuple(self.backbone.patch_embed.grid_size)
        if built != (self.grid, self.grid):
            raise CimptError(
                f"enhancer: '{name}' built a {built[0]}x{built[1]} patch grid, expected "
                f"{self.grid}x{self.grid} (data.img_size / enhancer.patch_size)"
            )

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of the backbone's embeddings that skip weight decay."""
        own: set[str] = getattr(self.backbone, "no_weight_decay", lambda: set())()
        present = {n for n, _ in self.backbone.named_parameters()}
        return {f"backbone.{n}" for n in own if n in present}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position features on the token grid.

        Args:
            x: images ``[B, 3, R, R]``.

        Returns:
            ``[B, C, g, g]`` with ``C = out_dim``.
        """
        if self.kind == "vit":
            return self._vit_features(x)
        raise NotImplementedError(self.kind)  # the CNN path plugs in here

    def _vit_features(self, x: torch.Tensor) -> torch.Tensor:
        """ViT: final (normed) patch tokens, prefix tokens ([CLS], registers) dropped."""
        tokens = self.backbone.forward_features(x)  # [B, prefix + g*g, C]
        tokens = tokens[:, self.backbone.num_prefix_tokens:]
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``features``: ``[B, 3, R, R] -> [B, C, g, g]``."""
        return self.features(x)
