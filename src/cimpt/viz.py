"""Pictures of what a pre-training objective does: one row per image, one column per stage.

CIM columns: original | tokenizer reconstruction | mask | corrupted image | enhancer output
(RESPIX: the normalized target and output on one fixed scale, then the output in pixels
de-normalized with the corrupted image's statistics, so nothing of the answer leaks into the
picture; REVDET: the predicted replaced-probability, with a colour bar, next to the true
replaced map). Maps are tinted so that they cannot be mistaken for each other: the mask
blue, the true replaced tokens red, the probability black to yellow. Baselines (MAE, SimMIM,
BEiT): original | [tokenizer recon] | mask | masked input | reconstruction. Maps on the token
grid are shown enlarged with nearest-neighbour.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from cimpt.atomic import write_png

# (panel key, column title) in display order; missing keys are left out.
COLUMNS = (
    ("original", "original"),
    ("recon", "tokenizer recon"),
    ("mask", "mask"),
    ("corrupted", "corrupted"),
    ("target_norm", "target (norm.)"),
    ("prediction_norm", "output (norm.)"),
    ("masked_input", "masked input"),
    ("reconstruction", "reconstruction"),
    ("prediction", "output (pixels)"),
    ("prob", "REVDET prob"),
    ("replaced", "replaced (true)"),
)


# Colours (RGB in [0, 1]) of the single-channel maps: value 1 is drawn in this colour.
TINTS = {"mask": (0.3, 0.55, 1.0), "replaced": (1.0, 0.25, 0.2), "prob": (1.0, 0.85, 0.0)}
HEADER, BAR = 16, 8  # title strip; colour-bar strip under it when a probability is drawn


def _as_rgb(t: torch.Tensor, size: int, tint: tuple[float, ...] | None = None) -> torch.Tensor:
    """``[B,3,H,W]`` or a map ``[B,g,g]`` -> ``[B,3,size,size]`` in [0, 1]; a map is drawn
    from black (0) to ``tint`` (1), grey when no tint is given."""
    t = t.detach().float().cpu()
    if t.ndim == 3:
        colour = torch.tensor(tint or (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        t = t.unsqueeze(1) * colour
    if t.shape[-1] != size:
        mode = "nearest" if t.shape[-1] < size // 2 else "bilinear"
        t = F.interpolate(t, size=(size, size), mode=mode)
    return t.clamp(0, 1)


def cim_grid(panels: dict[str, torch.Tensor], tile: int = 96) -> Image.Image:
    """Assemble the figure from ``CIM.visualize`` panels; each tile ``tile`` px wide."""
    cols = [(k, title) for k, title in COLUMNS if k in panels]
    if not cols:
        raise ValueError("no known panels to draw")
    pad = 2
    header = HEADER + (BAR if "prob" in panels else 0)
    tiles = torch.stack([_as_rgb(panels[k], tile, TINTS.get(k)) for k, _ in cols], 1)
    # Rows are images, columns are stages: [n, cols, 3, t, t] -> a white-padded grid.
    body = make_grid(tiles.flatten(0, 1), nrow=len(cols), padding=pad, pad_value=1.0)
    if tiles.shape[:2].numel() == 1:  # make_grid returns a lone tile without its padding
        body = F.pad(body, (pad, pad, pad, pad), value=1.0)
    arr = (body.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    canvas = Image.new("RGB", (arr.shape[1], header + arr.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(arr), (0, header))
    draw = ImageDraw.Draw(canvas)
    for c, (key, title) in enumerate(cols):
        x0 = pad + c * (tile + pad)
        draw.text((x0 + 2, 2), title, fill=(0, 0, 0))
        if key == "prob":
            _colour_bar(canvas, draw, (x0, HEADER - 2), tile, TINTS["prob"])
    return canvas


def _colour_bar(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    width: int,
    tint: tuple[float, ...],
) -> None:
    """A black-to-``tint`` gradient for probabilities 0..1, labelled at both ends."""
    x0, y0 = origin
    ramp = torch.linspace(0, 1, width).view(1, width, 1) * torch.tensor(tint).view(1, 1, 3)
    strip = (ramp.expand(BAR - 2, width, 3).numpy() * 255).round().astype("uint8")
    canvas.paste(Image.fromarray(strip), (x0, y0 + 1))
    draw.text((x0 + 1, y0 - 1), "0", fill=(255, 255, 255))
    draw.text((x0 + width - 7, y0 - 1), "1", fill=(0, 0, 0))


def save_cim_figure(panels: dict[str, torch.Tensor], path: str | Path, tile: int = 96) -> Path:
    return write_png(Path(path), cim_grid(panels, tile))
