"""Fine-tuning augmentation (docs/METHOD.md, fine-tuning recipe): timm's RandAugment and mixup.

``FinetuneTransform``: random-resized crop, horizontal flip, RandAugment, normalization.
timm's RandAugment draws from Python's ``random`` and NumPy's global generator; both are
seeded here from torch's generator (and restored after), so each sample's augmentation
follows the engine's per-sample seed (exact resume).

Pillow 13 rejects ``ImageOps.posterize`` with 0 bits, which timm's increasing-posterize op
reaches at high magnitudes (m9 with a magnitude std). Those ops keep 1 bit instead, the
strongest posterize Pillow still allows (older Pillow turned 0 bits into a black image).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, rand_augment_transform
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as F

from cimpt.config import DataConfig, FinetuneConfig
from cimpt.data.transforms import to_unit_tensor
from cimpt.errors import CimptError


def posterize_at_least_one_bit(img: Image.Image, bits: int, **_: Any) -> Image.Image:
    """timm's posterize op, with ``bits`` clamped to [1, 8] (see module docstring)."""
    bits = max(1, int(bits))
    return img if bits >= 8 else ImageOps.posterize(img, bits)


def build_randaugment(spec: str, size: int, mean: Sequence[float]) -> Any:
    """timm's RandAugment from a string like ``rand-m9-mstd0.5-inc1`` (posterize made safe)."""
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        ra = rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError, KeyError) as exc:
        raise CimptError(
            f"finetune.randaug: '{spec}' is not a timm RandAugment string "
            f"such as rand-m9-mstd0.5-inc1 ({exc})"
        ) from None
    for op in ra.ops:
        if "Posterize" in op.name:
            op.aug_fn = posterize_at_least_one_bit
    return ra


class FinetuneTransform:
    """PIL image -> normalized ``[3, size, size]``: crop, flip, RandAugment (optional)."""

    def __init__(
        self,
        size: int,
        scale: Sequence[float],
        ratio: Sequence[float],
        hflip: float,
        randaug: str,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.crop = RandomResizedCrop(
            size,
            scale=tuple(scale),
            ratio=tuple(ratio),
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        )
        self.hflip = float(hflip)
        self.randaug = build_randaugment(randaug, size, mean) if randaug else None
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.crop(img)
        if float(torch.rand(())) < self.hflip:
            img = F.hflip(img)
        if self.randaug is not None:
            img = self._randaug_seeded(img, int(torch.randint(0, 2**62, ())))
        return F.normalize(to_unit_tensor(img), self.mean, self.std)

    def _randaug_seeded(self, img: Image.Image, seed: int) -> Image.Image:
        assert self.randaug is not None
        saved_py, saved_np = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.randaug(img)
        finally:
            random.setstate(saved_py)
            np.random.set_state(saved_np)


class NormalizedEval:
    """Held-out view: ``EvalTransform`` (resize + center crop) then normalization."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        from cimpt.data import EvalTransform

        self.view = EvalTransform(size)
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return F.normalize(self.view(img), self.mean, self.std)


def build_finetune_transforms(
    d: DataConfig, f: FinetuneConfig
) -> tuple[FinetuneTransform, NormalizedEval]:
    train = FinetuneTransform(
        d.img_size, f.crop_scale, d.crop_ratio, d.hflip, f.randaug, d.mean, d.std
    )
    return train, NormalizedEval(d.img_size, d.mean, d.std)


def build_mixup(f: FinetuneConfig, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` (mixup/cutmix with label smoothing), or None when both are off."""
    if (f.mixup <= 0 and f.cutmix <= 0) or f.mixup_prob <= 0:
        return None
    return Mixup(
        mixup_alpha=f.mixup,
        cutmix_alpha=f.cutmix,
        prob=f.mixup_prob,
        label_smoothing=f.smoothing,
        num_classes=num_classes,
    )
