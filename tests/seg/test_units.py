"""Units of segmentation: joint transforms, sliding windows, feature levels, pos-embed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed
from torch import nn

from cimpt.seg.backbone import MultiLevelBackbone, vit_block_indices
from cimpt.seg.decoder import UperNet
from cimpt.seg.figure import seg_figure
from cimpt.seg.infer import slide_logits, window_starts
from cimpt.seg.model import fit_pos_embed
from cimpt.seg.transforms import SegEvalTransform, SegTrainTransform

MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def _coded_pair(w: int, h: int) -> tuple[Image.Image, np.ndarray]:
    """Image whose red channel is 10 * class id, and that label (classes 0..4 by column)."""
    label = (np.arange(w)[None, :].repeat(h, 0) * 5 // w).astype(np.int64)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = 10 * label
    return Image.fromarray(img), label


def test_train_transform_moves_image_and_label_together() -> None:
    img, label = _coded_pair(40, 30)
    tf = SegTrainTransform(16, 0, (0.5, 2.0), 0.5, MEAN, STD, ignore_index=255)
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        x, y = tf(img, label)
        assert x.shape == (3, 16, 16) and y.shape == (16, 16) and y.dtype == torch.long
        # nearest: no blended ids; 255 where a scale below 1 needed padding
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        # Away from class edges the image still encodes the label under it.
        red = (x[0] * 255 / 10).round().long()
        inner = (y[:, 1:-1] == y[:, :-2]) & (y[:, 1:-1] == y[:, 2:]) & (y[:, 1:-1] != 255)
        assert inner.any() and torch.equal(red[:, 1:-1][inner], y[:, 1:-1][inner])
        flips += int(y[0, 0] > y[0, -1])  # classes grow left to right unless flipped
    assert 0 < flips < 20


def test_small_images_are_padded_with_the_ignore_id() -> None:
    img, label = _coded_pair(10, 8)
    torch.manual_seed(0)
    x, y = SegTrainTransform(16, 0, (1.0, 1.0), 0.0, MEAN, STD, ignore_index=99)(img, label)
    assert (y[8:] == 99).all() and (y[:, 10:] == 99).all()
    assert torch.equal(y[:8, :10], torch.from_numpy(label))
    assert (x[:, 8:] == 0).all()  # the mean colour after normalization


def test_eval_transform_resizes_the_image_and_keeps_the_label() -> None:
    img, label = _coded_pair(40, 30)
    x, y = SegEvalTransform(15, MEAN, STD)(img, label)
    assert x.shape == (3, 15, 20) and torch.equal(y, torch.from_numpy(label))


def test_windows_cover_the_image_with_the_last_one_flush() -> None:
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(40, 16, 10) == [0, 10, 20, 24]
    for n, crop, stride in [(37, 16, 10), (64, 16, 16), (17, 16, 5)]:
        starts = window_starts(n, crop, stride)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s : s + crop] = True
        assert covered.all() and starts[-1] == n - crop


def test_sliding_window_equals_whole_image_for_a_pointwise_net() -> None:
    net = nn.Conv2d(3, 4, 1)  # per-pixel: every window agrees where they overlap
    x = torch.randn(3, 23, 37)
    with torch.no_grad():
        whole = net(x[None])[0]
    got = slide_logits(net, x, crop=16, stride=10, num_classes=4, batch_size=3)
    assert got.shape == (4, 23, 37)
    torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    small = x[:, :9, :12]  # smaller than the crop: padded, then cut back
    torch.testing.assert_close(slide_logits(net, small, 16, 10, 4, 2), whole[:, :9, :12])


def test_block_indices_are_evenly_spaced() -> None:
    assert vit_block_indices(12, 4) == [2, 5, 8, 11]
    assert vit_block_indices(6, 4) == [1, 2, 4, 5]
    assert vit_block_indices(1, 4) == [0, 0, 0, 0]


def _vit(img: int = 32) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=img, patch_size=4, embed_dim=32, depth=4, num_heads=2,
        num_classes=0,
    )  # fmt: skip


def test_vit_levels_and_cnn_stages_give_a_pyramid_and_every_weight_a_gradient() -> None:
    x = torch.randn(2, 3, 32, 32)
    vit = MultiLevelBackbone(_vit(), "vit", [4.0, 2.0, 1.0, 0.5], patch=4)
    cnn = MultiLevelBackbone(timm.create_model("resnet10t", num_classes=0), "cnn", [], patch=8)
    for bb, sides in ((vit, [32, 16, 8, 4]), (cnn, [8, 4, 2, 1])):
        feats = bb(x)
        assert [f.shape[-1] for f in feats] == sides
        assert [f.shape[1] for f in feats] == bb.channels
        assert [32 / s for s in sides] == bb.strides
        head = UperNet(bb.channels, 8, 5)
        out = head(feats)
        assert out.shape == (2, 5, sides[0], sides[0])
        out.sum().backward()
        params = [*bb.named_parameters(), *head.named_parameters()]
        unused = [n for n, p in params if p.grad is None]
        assert not unused  # DDP needs a gradient for every parameter
    assert vit.take == [0, 1, 2, 3]


def test_pos_embed_is_resampled_to_the_new_grid() -> None:
    small, big = _vit(32), _vit(64)
    state = small.state_dict()
    fitted = fit_pos_embed(state, big)
    want = resample_abs_pos_embed(state["pos_embed"], [16, 16], old_size=[8, 8])
    assert fitted["pos_embed"].shape == big.pos_embed.shape
    torch.testing.assert_close(fitted["pos_embed"], want)
    torch.testing.assert_close(fitted["pos_embed"][:, :1], state["pos_embed"][:, :1])  # [CLS]
    big.load_state_dict(fitted)
    assert fit_pos_embed(state, small) is state  # same grid: untouched


def test_a_level_that_is_not_a_power_of_two_is_an_error() -> None:
    from cimpt.errors import CimptError

    with pytest.raises(CimptError, match=r"segment\.vit_levels: 3\.0"):
        MultiLevelBackbone(_vit(), "vit", [3.0], patch=4)


def test_figure_tiles_sit_at_their_row_and_column(tmp_path: Path) -> None:
    # Labels of one size; the image twice as large, shown bilinear-resized to the label size.
    rng = np.random.default_rng(0)
    rows = [
        tuple(
            rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((8, 10, 3), (4, 5, 3), (4, 5, 3))
        )
        for _ in range(2)
    ]
    out = np.asarray(Image.open(seg_figure(rows, tmp_path / "f.png")).convert("RGB"))
    header, pad, w, h = 16, 2, 10, 8  # tiles take the largest size present
    assert out.shape == (header + 2 * (h + pad) + pad, 3 * (w + pad) + pad, 3)
    body = out[header:].copy()
    for r, row in enumerate(rows):
        for c, arr in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            if c == 0:
                want = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
            else:  # class colours: each label pixel becomes a 2x2 block, no blending
                want = arr.repeat(2, 0).repeat(2, 1)
            np.testing.assert_array_equal(body[y : y + h, x : x + w], want)
            body[y : y + h, x : x + w] = 255
    assert (body == 255).all()
