"""Two-resolution views share one crop; crop boxes follow RandomResizedCrop's rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from cimpt.data import EvalTransform, SingleViewTransform, TwoViewTransform
from cimpt.data.transforms import sample_crop_box

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def smooth_image(h: int = 150, w: int = 200) -> Image.Image:
    """Smooth but non-linear content: different crops look different (unlike a linear ramp,
    whose crops are all perfectly correlated with each other)."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    chans = [np.sin(7 * xx + 3 * yy**2), np.cos(5 * yy - 4 * xx * yy), np.sin(9 * xx * yy)]
    arr = np.stack([(c + 1) * 127.5 for c in chans], axis=-1)
    return Image.fromarray(arr.round().astype(np.uint8))


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_shapes_ranges_and_normalization():
    torch.manual_seed(0)
    x, x_tok = TwoViewTransform(32, 16, mean=MEAN, std=STD)(smooth_image())
    assert x.shape == (3, 32, 32) and x_tok.shape == (3, 16, 16)
    assert x.dtype == x_tok.dtype == torch.float32
    assert float(x_tok.min()) >= 0 and float(x_tok.max()) <= 1
    # With R == T the normalized view is exactly the [0, 1] view normalized.
    torch.manual_seed(1)
    x, x_tok = TwoViewTransform(24, 24, mean=MEAN, std=STD)(smooth_image())
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x, (x_tok - mean) / std, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_both_views_show_the_same_crop(seed: int):
    img = smooth_image()
    t = TwoViewTransform(32, 16, scale=(0.2, 0.6), mean=MEAN, std=STD, hflip=0.5)
    torch.manual_seed(seed)
    x, x_tok = t(img)
    torch.manual_seed(seed + 100)
    other_x, _ = t(img)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    x01 = x * std + mean
    x_small = tnf.avg_pool2d(x01[None], 2)[0]  # 32 -> 16 by averaging, independent of PIL
    assert corr(x_small, x_tok) > 0.99
    # Negative control: another draw is a different crop and does not match as well.
    other_small = tnf.avg_pool2d((other_x * std + mean)[None], 2)[0]
    assert corr(other_small, x_tok) < corr(x_small, x_tok) - 0.02


def test_flip_is_shared_and_mirrors():
    img = smooth_image()
    torch.manual_seed(3)
    plain = TwoViewTransform(16, 8, hflip=0.0)(img)
    torch.manual_seed(3)
    flipped = TwoViewTransform(16, 8, hflip=1.0)(img)
    # The box is drawn before the flip decision, so the same seed gives the same box.
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))
    torch.testing.assert_close(flipped[1], plain[1].flip(-1))


def test_crop_boxes_respect_scale_and_ratio():
    torch.manual_seed(0)
    scale, ratio = (0.3, 0.8), (0.75, 4 / 3)
    areas, boxes = [], []
    for _ in range(1000):
        top, left, h, w = sample_crop_box(120, 160, scale, ratio)
        assert top >= 0 and top + h <= 120 and left >= 0 and left + w <= 160
        # Rounding of h and w moves area and ratio by at most one pixel per side.
        assert (w - 0.5) / (h + 0.5) <= ratio[1] and (w + 0.5) / (h - 0.5) >= ratio[0]
        assert scale[0] - 0.02 <= h * w / (120 * 160) <= scale[1] + 0.02
        areas.append(h * w / (120 * 160))
        boxes.append((top, left, h, w))
    # Same distribution as torchvision's own RandomResizedCrop.get_params (which rejects the
    # same boxes that do not fit, so the mean area is below the middle of the range).
    ref = [
        RandomResizedCrop.get_params(torch.empty(3, 120, 160), list(scale), list(ratio))
        for _ in range(2000)
    ]
    ref_areas = [h * w / (120 * 160) for _, _, h, w in ref]
    ref_aspect = [w / h for _, _, h, w in ref]
    aspects = [w / h for _, _, h, w in boxes]
    assert abs(np.mean(areas) - np.mean(ref_areas)) < 0.02
    assert abs(np.median(aspects) - np.median(ref_aspect)) < 0.05


def test_crop_box_fallback_center_crops_to_allowed_ratio():
    # A 1x100 strip admits no box with aspect in [3/4, 4/3] at these scales: fallback.
    top, left, h, w = sample_crop_box(1, 100, (0.9, 1.0), (0.75, 4 / 3))
    assert (h, w) == (1, round(1 * 4 / 3)) and top == 0 and left == (100 - w) // 2


def test_single_view_and_eval_transform():
    img = smooth_image(40, 60)
    torch.manual_seed(0)
    v = SingleViewTransform(20)(img)
    assert v.shape == (3, 20, 20) and float(v.min()) >= 0 and float(v.max()) <= 1
    e = EvalTransform(20)(img)
    # Resize the shorter side 40 -> 20, center crop 20 wide out of 30: columns 5..25 of the
    # half-size image, compared with an independent PIL computation.
    ref = np.asarray(img.resize((30, 20), Image.Resampling.BICUBIC))[:, 5:25] / 255.0
    assert e.shape == (3, 20, 20)
    np.testing.assert_allclose(e.permute(1, 2, 0).numpy(), ref, atol=2 / 255)
    assert math.isclose(EvalTransform(224, crop_pct=0.875).resize_to, 256)
