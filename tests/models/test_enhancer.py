"""The enhancer wrapper: timm ViT per-position features and clear errors for bad names."""

from __future__ import annotations

import pytest
import torch

from cimpt.errors import CimptError
from cimpt.models.enhancer import Enhancer

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def test_vit_features_are_the_patch_tokens_on_the_grid() -> None:
    torch.manual_seed(0)
    enh = Enhancer("vit_tiny_patch16_224", 32, 4, 0.0, TINY).eval()
    assert enh.grid == 8 and enh.out_dim == 32 and enh.patch_size == 4
    x = torch.randn(2, 3, 32, 32)
    feats = enh.features(x)
    assert feats.shape == (2, 32, 8, 8)
    tokens = enh.backbone.forward_features(x)  # [2, 1 + 64, 32]; [CLS] first
    for i in range(8):
        for j in range(8):
            torch.testing.assert_close(feats[:, :, i, j], tokens[:, 1 + i * 8 + j])


def test_backbone_is_a_timm_model_without_classifier() -> None:
    enh = Enhancer("vit_tiny_patch16_224", 32, 4, 0.1, TINY)
    assert enh.backbone.num_classes == 0
    assert len(enh.backbone.blocks) == 2
    assert {"backbone.pos_embed", "backbone.cls_token"} <= enh.no_weight_decay()
    names = {n for n, _ in enh.named_parameters()}
    assert enh.no_weight_decay() <= names


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(CimptError, match=r"^enhancer.name: 'foo' is not a timm model$"):
        Enhancer("foo", 32, 4, 0.0, {})


def test_cnn_and_bad_kwargs_are_clear_errors() -> None:
    with pytest.raises(CimptError, match="only ViT enhancers"):
        Enhancer("resnet18", 32, 4, 0.0, {})
    with pytest.raises(CimptError, match="embeddim"):
        Enhancer("vit_tiny_patch16_224", 32, 4, 0.0, {"embeddim": 32})
