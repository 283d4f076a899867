"""Views of an image: CIM's two-resolution crop, a single view, and the evaluation view.

docs/METHOD.md step 1 (a choice borrowed from BEiT, Bao et al. 2022): ONE random-resized crop (and
one flip decision) of each image yields two views of the same content, ``x`` at the enhancer's
resolution R, normalized with the dataset mean/std, and ``x_tok`` at the tokenizer's
resolution T = grid * tokenizer_downsample, in [0, 1]. Because both views come from the same
box, token (i, j) of ``tokenizer.encode(x_tok)`` describes the same pixels as patch (i, j) of
``x``, which is what lets the generator predict the tokenizer's ids from ``x``'s patches.

Speed (the data pipeline must keep up with the model on one CPU worker): the crop box follows
torchvision's ``RandomResizedCrop.get_params`` rule exactly but draws all its random numbers
with ONE ``torch.rand`` call instead of about a dozen (``sample_crop_box``); each view is a
single torchvision ``resized_crop`` on the PIL image (PIL's resize is antialiased: it filters
over the whole source footprint); the uint8 -> float conversion and normalization are done in
numpy, which is cheaper than torch's per-op overhead on such small arrays. When T == R the
resized crop is shared. Resampling is bicubic by default (BEiT's choice); "bilinear" is
accepted. The torch RNG is seeded per DataLoader worker by PyTorch, so views are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cimpt.config import IMAGENET_MEAN, IMAGENET_STD

ImageLike = Image.Image | torch.Tensor

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _interpolation(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(
            f"interpolation must be one of {sorted(_INTERPOLATIONS)}, not '{name}'"
        ) from None


def _chw_uint8(img: ImageLike) -> np.ndarray:
    """RGB PIL image or uint8 tensor [3, H, W] -> contiguous uint8 array [3, H, W]."""
    if isinstance(img, Image.Image):
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return img.numpy()


def to_unit_tensor(img: ImageLike) -> torch.Tensor:
    """RGB PIL image or uint8 tensor [3, H, W] -> float32 tensor [3, H, W] in [0, 1]."""
    if isinstance(img, torch.Tensor) and img.dtype != torch.uint8:
        return img.float()
    return torch.from_numpy(_chw_uint8(img).astype(np.float32) * np.float32(1.0 / 255.0))


def sample_crop_box(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float], attempts: int = 10
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, h, w), torchvision's rule, from one ``torch.rand``.

    Up to ``attempts`` tries: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``; the first box that fits is
    placed uniformly. If none fits, the whole image is center-cropped to the nearest allowed
    aspect ratio (torchvision's fallback).
    """
    u = torch.rand(attempts, 4).tolist()
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for a, r, ut, ul in u:
        target = area * (scale[0] + a * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + r * (log_hi - log_lo))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            # min() guards the u == 1.0 edge, which would otherwise step one pixel outside.
            return (
                min(int(ut * (height - h + 1)), height - h),
                min(int(ul * (width - w + 1)), width - w),
                h,
                w,
            )
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _RandomCrop:
    """Shared parameters and the box/flip draw of the random-resized-crop transforms."""

    def __init__(
        self, scale: Sequence[float], ratio: Sequence[float], hflip: float, interpolation: str
    ) -> None:
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.interpolation = _interpolation(interpolation)

    def draw(self, img: ImageLike) -> tuple[tuple[int, int, int, int], bool]:
        """(top, left, height, width) of the crop box and the flip decision, from torch's RNG
        (seeded per DataLoader worker, so a fixed seed reproduces the views)."""
        _, h, w = F.get_dimensions(img)
        box = sample_crop_box(h, w, self.scale, self.ratio)
        flip = self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        return box, flip

    def view(
        self, img: ImageLike, box: tuple[int, int, int, int], size: int, flip: bool
    ) -> ImageLike:
        out = F.resized_crop(
            img, *box, size=[size, size], interpolation=self.interpolation, antialias=True
        )
        return F.horizontal_flip(out) if flip else out


class TwoViewTransform(_RandomCrop):
    """One random-resized crop + flip -> ``(x [3, R, R] normalized, x_tok [3, T, T] in [0, 1])``.

    Args:
        img_size: R, the enhancer's (and generator's) input side.
        tok_size: T, the tokenizer's input side (grid * tokenizer downsample).
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges.
        hflip: probability of a horizontal flip (the same flip for both views).
        mean, std: per-channel normalization of ``x`` only.
        interpolation: "bicubic" (default) or "bilinear"; always antialiased.
    """

    def __init__(
        self,
        img_size: int,
        tok_size: int,
        scale: Sequence[float] = (0.35, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__(scale, ratio, hflip, interpolation)
        self.img_size = int(img_size)
        self.tok_size = int(tok_size)
        # x = (u8 / 255 - mean) / std  ==  (u8 - 255 mean) * 1 / (255 std): one sub, one mul.
        self.mean = [float(m) for m in mean]
        self.std = [float(v) for v in std]
        self._shift = (np.array(self.mean, np.float32) * 255.0).reshape(3, 1, 1)
        self._scale = (1.0 / (np.array(self.std, np.float32) * 255.0)).reshape(3, 1, 1)

    def __call__(self, img: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        box, flip = self.draw(img)
        x_img = self.view(img, box, self.img_size, flip)
        tok_img = (
            x_img if self.tok_size == self.img_size else self.view(img, box, self.tok_size, flip)
        )
        x_u8 = _chw_uint8(x_img)
        x_tok = (
            to_unit_tensor(tok_img)
            if tok_img is not x_img
            else torch.from_numpy(x_u8.astype(np.float32) * np.float32(1.0 / 255.0))
        )
        x = torch.from_numpy((x_u8 - self._shift) * self._scale)
        return x, x_tok


class SingleViewTransform(_RandomCrop):
    """Random-resized crop + flip -> ``[3, S, S]`` in [0, 1] (tokenizer training)."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.35, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__(scale, ratio, hflip, interpolation)
        self.size = int(size)

    def __call__(self, img: ImageLike) -> torch.Tensor:
        box, flip = self.draw(img)
        return to_unit_tensor(self.view(img, box, self.size, flip))


class EvalTransform:
    """Deterministic held-out view: resize the shorter side, center crop -> ``[3, S, S]`` in [0, 1].

    ``crop_pct`` < 1 resizes the shorter side to ``round(size / crop_pct)`` first (the usual
    ImageNet evaluation, e.g. 0.875 for 224 from 256); the default 1.0 keeps the whole shorter
    side, which suits small images like CIFAR's.
    """

    def __init__(self, size: int, crop_pct: float = 1.0, interpolation: str = "bicubic") -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = int(size)
        self.resize_to = round(self.size / crop_pct)
        self.interpolation = _interpolation(interpolation)

    def __call__(self, img: ImageLike) -> torch.Tensor:
        img = F.resize(img, [self.resize_to], interpolation=self.interpolation, antialias=True)
        return to_unit_tensor(F.center_crop(img, [self.size, self.size]))
