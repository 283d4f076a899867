"""The segmentation network: a (pre-trained) enhancer, its feature levels, and UperNet.

Pre-trained weights come from any source ``cimpt finetune`` accepts (``cimpt.eval.source``).
A ViT is rebuilt at the crop size (``data.img_size``), so its patch grid differs from the
pre-training one; its absolute position embeddings are resampled to the new grid with timm's
``resample_abs_pos_embed`` (bicubic over the 2-D grid, prefix tokens kept) before loading,
once, so the network then runs at a fixed size like the pre-trained one.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from cimpt.config import RootConfig
from cimpt.eval.classifier import is_vit_args, load_backbone_into
from cimpt.eval.source import BackboneSource
from cimpt.export import timm_args
from cimpt.seg.backbone import MultiLevelBackbone
from cimpt.seg.decoder import UperNet


def fit_pos_embed(state: dict[str, torch.Tensor], net: Any) -> dict[str, torch.Tensor]:
    """``state`` with its ViT ``pos_embed`` resampled to ``net``'s patch grid (if it differs).

    ``pos_embed`` is ``[1, prefix + g*g, C]`` (prefix: [CLS] and registers, unless the model
    keeps them out of the embedding); only the ``g x g`` part is interpolated.
    """
    old = state.get("pos_embed")
    if old is None or old.shape == net.pos_embed.shape:
        return state
    prefix = 0 if getattr(net, "no_embed_class", False) else int(net.num_prefix_tokens)
    side = round((old.shape[1] - prefix) ** 0.5)
    grid = list(net.patch_embed.grid_size)
    new = resample_abs_pos_embed(old, grid, old_size=[side, side], num_prefix_tokens=prefix)
    return {**state, "pos_embed": new}


class SegNet(nn.Module):
    """``forward(x [B,3,S,S]) -> logits [B, K, S, S]`` (decoder output upsampled bilinearly)."""

    def __init__(self, backbone: MultiLevelBackbone, decoder: UperNet) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.backbone(x))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear")

    def no_weight_decay(self) -> set[str]:
        """The timm backbone's embeddings (pos_embed, cls_token, ...): no weight decay."""
        fn = getattr(self.backbone.net, "no_weight_decay", None)
        return set(fn()) if callable(fn) else set()


def build_seg_net(cfg: RootConfig, source: BackboneSource | None, num_classes: int) -> SegNet:
    """The timm enhancer of ``cfg`` at the crop size, ``source``'s weights loaded, + UperNet."""
    args = {**timm_args(cfg), "num_classes": 0, "drop_path_rate": cfg.enhancer.drop_path}
    net: Any = timm.create_model(pretrained=False, **args)
    kind = "vit" if is_vit_args(args) else "cnn"
    if source is not None:
        state = fit_pos_embed(source.state, net) if kind == "vit" else source.state
        load_backbone_into(net, state, str(source.path))
    levels = list(cfg.segment.vit_levels)
    backbone = MultiLevelBackbone(net, kind, levels, cfg.enhancer.patch_size)
    decoder = UperNet(backbone.channels, cfg.segment.decoder_dim, num_classes)
    return SegNet(backbone, decoder)


class SegModel(nn.Module):
    """``forward(batch)`` -> ``{"loss", "pixel_acc"}`` for the engine.

    ``batch``: ``{"x": [B,3,S,S], "label": [B,S,S] long}``; the loss is per-pixel
    cross-entropy with ``ignore_index`` pixels left out; ``pixel_acc`` (percent, this batch's
    valid pixels) is a rough training signal only.
    """

    def __init__(self, net: SegNet, ignore_index: int) -> None:
        super().__init__()
        self.net, self.ignore_index = net, ignore_index

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        y = batch["label"]
        logits = self.net(batch["x"]).float()
        loss = F.cross_entropy(logits, y, ignore_index=self.ignore_index)
        valid = y != self.ignore_index
        hits = (logits.detach().argmax(1) == y) & valid
        acc = 100.0 * hits.sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "pixel_acc": acc}

    def no_weight_decay(self) -> set[str]:
        return self.net.no_weight_decay()
