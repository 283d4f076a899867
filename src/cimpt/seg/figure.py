"""The evaluation figure: one row per image, columns image | ground truth | prediction.

Colours are fixed per class id (the Pascal VOC colour map, shifted by one so that no class is
black), so figures of different runs and steps compare at a glance; ignored pixels are black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from cimpt.atomic import write_png

TITLES = ("image", "ground truth", "prediction")


def palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: VOC's bit-interleaved map for ids 1..K."""
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        v, rgb = c + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((v >> ch) & 1) << shift
            v >>= 3
        out[c] = rgb
    return out


def colorize(label: torch.Tensor, num_classes: int, ignore_index: int) -> np.ndarray:
    """Class ids ``[H, W]`` -> ``[H, W, 3]`` uint8; ids outside 0..K-1 (ignore) are black."""
    ids = label.cpu().numpy()
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    valid = (ids >= 0) & (ids < num_classes) & (ids != ignore_index)
    out[valid] = palette(num_classes)[ids[valid]]
    return out


def denormalize(x: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """Normalized ``[3, H, W]`` -> ``[H, W, 3]`` uint8."""
    img = x.cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def seg_figure(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Write ``rows`` of (image, truth, prediction) uint8 ``[H, W, 3]`` arrays as one PNG.

    Each tile is shown at the label's size (the image is resized to it).
    """
    tiles = [[Image.fromarray(a) for a in row] for row in rows]
    w = max(t.size[0] for row in tiles for t in row)
    h = max(t.size[1] for row in tiles for t in row)
    header, pad = 16, 2
    # Class maps keep hard edges: nearest neighbour, never a blend of two colours.
    sized = [
        np.asarray(
            t.resize((w, h), Image.Resampling.BILINEAR if c == 0 else Image.Resampling.NEAREST)
        )
        for row in tiles
        for c, t in enumerate(row)
    ]
    body = make_grid(
        torch.from_numpy(np.stack(sized)).permute(0, 3, 1, 2), nrow=3, padding=pad, pad_value=255
    )
    canvas = Image.new("RGB", (body.shape[2], header + body.shape[1]), "white")
    canvas.paste(Image.fromarray(body.permute(1, 2, 0).numpy()), (0, header))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(TITLES):
        draw.text((pad + c * (w + pad) + 2, 2), title, fill=(0, 0, 0))
    return write_png(path, canvas)
