"""The pre-training figure: tiles placed on a white-padded grid under a title strip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cimpt.viz import BAR, HEADER, cim_grid


def _expected_tile(t: torch.Tensor, tint: tuple[float, float, float] | None) -> np.ndarray:
    """One panel image -> the uint8 tile written out: a map is ``value * tint``, an image is
    clipped to [0, 1]; both are already ``tile`` pixels here, so nothing is resized."""
    if t.ndim == 2:
        t = t.unsqueeze(0) * torch.tensor(tint or (1.0, 1.0, 1.0)).view(3, 1, 1)
    return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")


@pytest.mark.parametrize(("n", "keys"), [(3, ("original", "mask", "prob")), (1, ("mask",))])
def test_every_tile_sits_at_its_row_and_column(n: int, keys: tuple[str, ...]) -> None:
    tile, pad = 8, 2
    torch.manual_seed(0)
    panels = {
        k: torch.rand(n, tile, tile) if k in ("mask", "prob") else torch.rand(n, 3, tile, tile)
        for k in keys
    }
    out = np.asarray(cim_grid(panels, tile))
    header = HEADER + (BAR if "prob" in keys else 0)
    cols = len(keys)
    assert out.shape == (header + n * (tile + pad) + pad, cols * (tile + pad) + pad, 3)
    tints = {"mask": (0.3, 0.55, 1.0), "prob": (1.0, 0.85, 0.0)}
    body = out[header:].copy()
    for r in range(n):
        for c, key in enumerate(keys):
            y, x = pad + r * (tile + pad), pad + c * (tile + pad)
            want = _expected_tile(panels[key][r], tints.get(key))
            np.testing.assert_array_equal(body[y : y + tile, x : x + tile], want)
            body[y : y + tile, x : x + tile] = 255
    assert (body == 255).all()  # everything between the tiles is white padding
