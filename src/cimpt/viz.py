"""Pictures of what a pre-training objective does: one row per image, one column per stage.

CIM columns: original | tokenizer reconstruction | mask | corrupted image | enhancer output
(RESPIX: the de-normalized prediction; REVDET: the predicted replaced-probability map next to
the true replaced map). Baselines (MAE, SimMIM, BEiT): original | [tokenizer recon] | mask |
masked input | reconstruction. Maps on the token grid are shown enlarged with
nearest-neighbour.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cimpt.atomic import write_png

# (panel key, column title) in display order; missing keys are left out.
COLUMNS = (
    ("original", "original"),
    ("recon", "tokenizer recon"),
    ("mask", "mask"),
    ("corrupted", "corrupted"),
    ("masked_input", "masked input"),
    ("reconstruction", "reconstruction"),
    ("prediction", "RESPIX output"),
    ("prob", "REVDET prob"),
    ("replaced", "replaced (true)"),
)


def _as_rgb(t: torch.Tensor, size: int) -> torch.Tensor:
    """``[B,3,H,W]`` or a map ``[B,g,g]`` -> ``[B,3,size,size]`` in [0, 1]."""
    t = t.detach().float().cpu()
    if t.ndim == 3:
        t = t.unsqueeze(1).expand(-1, 3, -1, -1)
    if t.shape[-1] != size:
        mode = "nearest" if t.shape[-1] < size // 2 else "bilinear"
        t = F.interpolate(t, size=(size, size), mode=mode)
    return t.clamp(0, 1)


def cim_grid(panels: dict[str, torch.Tensor], tile: int = 96) -> Image.Image:
    """Assemble the figure from ``CIM.visualize`` panels; each tile ``tile`` px wide."""
    cols = [(k, title) for k, title in COLUMNS if k in panels]
    if not cols:
        raise ValueError("no known panels to draw")
    n = panels[cols[0][0]].shape[0]
    header, pad = 16, 2
    width = len(cols) * (tile + pad) + pad
    height = header + n * (tile + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (key, title) in enumerate(cols):
        x0 = pad + c * (tile + pad)
        draw.text((x0 + 2, 2), title, fill=(0, 0, 0))
        images = _as_rgb(panels[key], tile)
        for r in range(n):
            arr = (images[r].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            canvas.paste(Image.fromarray(arr), (x0, header + pad + r * (tile + pad)))
    return canvas


def save_cim_figure(panels: dict[str, torch.Tensor], path: str | Path, tile: int = 96) -> Path:
    return write_png(Path(path), cim_grid(panels, tile))
