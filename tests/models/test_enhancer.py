"""The enhancer wrapper: timm ViT per-position features and clear errors for bad names."""

from __future__ import annotations

import pytest
import torch

from cimpt.errors import CimptError
from cimpt.models.enhancer import Enhancer

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.mark.parametrize(
    ("name", "extra", "prefix"),
    [
        ("vit_tiny_patch16_224", {}, 1),  # [CLS]
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),  # [CLS] + 4 registers
        ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, 0),
        ("deit_tiny_distilled_patch16_224", {}, 2),  # [CLS] + distillation token
        ("eva02_tiny_patch14_224", {}, 1),  # another ViT family (rotary embeddings)
    ],
)
def test_vit_features_are_the_patch_tokens_on_the_grid(
    name: str, extra: dict[str, object], prefix: int
) -> None:
    # features() reads timm's forward_intermediates; it must equal, bit for bit, what
    # forward_features gives for the patch tokens (the accessor it replaced).
    torch.manual_seed(0)
    enh = Enhancer(name, 32, 4, 0.0, {**TINY, **extra}).eval()
    assert enh.grid == 8 and enh.out_dim == 32 and enh.patch_size == 4
    x = torch.randn(2, 3, 32, 32)
    feats = enh.features(x)
    assert feats.shape == (2, 32, 8, 8)
    tokens = enh.backbone.forward_features(x)  # [2, prefix + 64, 32]; prefix tokens first
    assert tokens.shape[1] == prefix + 64
    for i in range(8):
        for j in range(8):
            assert torch.equal(feats[:, :, i, j], tokens[:, prefix + i * 8 + j])


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


def test_bad_kwargs_and_unreachable_grid_are_clear_errors() -> None:
    with pytest.raises(CimptError, match="embeddim"):
        Enhancer("vit_tiny_patch16_224", 32, 4, 0.0, {"embeddim": 32})
    # resnet18's strides are 2, 4, 8, 16, 32: a 12-pixel grid cell is none of them.
    with pytest.raises(
        CimptError,
        match=r"^enhancer.patch_size: 12 is not a feature stride of "
        r"'resnet18' \(strides 2, 4, 8, 16, 32\)",
    ):
        Enhancer("resnet18", 48, 12, 0.0, {})


def test_cnn_features_merge_every_stage_from_the_grid_down() -> None:
    torch.manual_seed(0)
    enh = Enhancer("resnet18", 64, 8, 0.0, {}, neck_dim=16).eval()
    # strides 2, 4, 8, 16, 32: the grid stride 8 is stage 2; stages 2..4 feed the neck.
    assert enh.kind == "cnn" and enh.stages == [2, 3, 4] and enh.out_dim == 16 and enh.grid == 8
    x = torch.randn(2, 3, 64, 64)
    feats = enh.features(x)
    assert feats.shape == (2, 16, 8, 8)
    # Independent recomputation of the top-down merge from timm's own stage outputs.
    b = enh.backbone
    x1 = b.maxpool(b.act1(b.bn1(b.conv1(x))))
    s2 = b.layer2(b.layer1(x1))
    s3 = b.layer3(s2)
    s4 = b.layer4(s3)
    lat = enh.neck.lateral
    top = lat[2](s4)
    top = lat[1](s3) + torch.nn.functional.interpolate(top, size=(4, 4), mode="nearest")
    top = lat[0](s2) + torch.nn.functional.interpolate(top, size=(8, 8), mode="nearest")
    torch.testing.assert_close(feats, enh.neck.smooth(top))
    # The deepest stage gets gradient from the grid features (it is pre-trained too).
    feats.sum().backward()
    # (timm zero-initializes each block's last BatchNorm, so look at the shortcut conv.)
    assert b.layer4[0].downsample[0].weight.grad.abs().sum() > 0
