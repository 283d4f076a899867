"""Joint image + label transforms of segmentation (BEiT's / mmseg's training pipeline).

Training: resize so the shorter side is ``short_side``, times a random factor from
``scale_range``; pad to the crop with the mean colour (0 after normalization) and the ignore
id; a random ``crop x crop`` window; a horizontal flip. The image is resized bilinearly, the
label with nearest neighbour (pixel-centre aligned, as PIL resizes the image), so every label
pixel stays a real class id. Random draws use torch's default generator, which the engine
seeds per sample (``cimpt.data.seeded``), so a resumed run sees the same crops.

Evaluation: the image is resized to ``short_side`` only; the label keeps its stored size,
because the metrics are computed at the label's own resolution (the logits are resized to it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _scaled_size(size: tuple[int, int], short_side: int, factor: float) -> tuple[int, int]:
    """``(w, h)`` scaled so the shorter side is ``short_side * factor`` (0: as stored)."""
    w, h = size
    base = short_side / min(w, h) if short_side else 1.0
    s = base * factor
    return max(1, round(w * s)), max(1, round(h * s))


def normalize(img: Image.Image, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB image -> ``[3, H, W]`` float, normalized with ``mean``/``std`` (values in [0, 1])."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class SegTrainTransform:
    """Random scale, pad, crop and flip, applied jointly (module docstring).

    Returns ``x [3, crop, crop]`` float and ``y [crop, crop]`` long.
    """

    def __init__(
        self,
        crop: int,
        short_side: int,
        scale_range: tuple[float, float],
        hflip: float,
        mean: list[float],
        std: list[float],
        ignore_index: int,
    ) -> None:
        self.crop, self.short_side = crop, short_side
        self.scale_range, self.hflip = scale_range, hflip
        self.mean, self.std, self.ignore_index = mean, std, ignore_index

    def __call__(self, img: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.scale_range
        factor = lo + (hi - lo) * float(torch.rand(()))
        size = _scaled_size(img.size, self.short_side, factor)
        x = normalize(img.resize(size, Image.Resampling.BILINEAR), self.mean, self.std)
        y = torch.from_numpy(label)[None, None].float()
        y = F.interpolate(y, size=(size[1], size[0]), mode="nearest-exact")[0, 0].long()
        # Pad right/bottom up to the crop: mean colour for the image, ignore for the label.
        ph, pw = max(0, self.crop - size[1]), max(0, self.crop - size[0])
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        top = int(torch.randint(0, x.shape[1] - self.crop + 1, ()))
        left = int(torch.randint(0, x.shape[2] - self.crop + 1, ()))
        x = x[:, top : top + self.crop, left : left + self.crop]
        y = y[top : top + self.crop, left : left + self.crop]
        if float(torch.rand(())) < self.hflip:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class SegEvalTransform:
    """Image resized to ``short_side`` (``[3, h, w]``); label as stored (``[H, W]`` long)."""

    def __init__(self, short_side: int, mean: list[float], std: list[float]) -> None:
        self.short_side, self.mean, self.std = short_side, mean, std

    def __call__(self, img: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        size = _scaled_size(img.size, self.short_side, 1.0)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        return normalize(img, self.mean, self.std), torch.from_numpy(label)
