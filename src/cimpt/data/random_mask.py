"""Uniform random masks with an exact count: MAE's patch masking and SimMIM's mask patches.

- MAE (He et al., CVPR 2022, Sec. 3): "we randomly sample a subset of patches without
  replacement, following a uniform distribution", ratio 0.75; every image gets exactly
  ``round(ratio * g**2)`` masked patches, so the encoder's visible set has one length per
  batch. ``unit=1``.
- SimMIM (Xie et al., CVPR 2022, Sec. 3.1): random masking of square *mask patches* larger
  than the model's patches (32 px at 224 px input, ratio 0.6). Here a mask patch is
  ``unit x unit`` grid cells; exactly ``round(ratio * (g / unit)**2)`` of them are masked.

Both have the interface of ``BlockMaskGenerator`` (``grid``, ``reseed``, ``__call__`` giving a
bool ``[g, g]``), so ``CIMCollate`` draws them in the DataLoader workers the same way.
"""

from __future__ import annotations

import random

import torch

from cimpt.errors import CimptError


class RandomMaskGenerator:
    """Callable returning a uniform random mask ``[grid, grid]`` (bool, True = masked).

    Args:
        grid: side g of the patch grid.
        ratio: share of mask units masked, in (0, 1).
        unit: side of one mask unit in grid cells (1: MAE; SimMIM: mask patch / patch size);
            must divide ``grid``.
        rng: a ``random.Random``, an int seed, or None (seeded 0).
        key: the config key named in errors.
    """

    def __init__(
        self,
        grid: int,
        ratio: float,
        unit: int = 1,
        rng: random.Random | int | None = None,
        key: str = "mask ratio",
    ) -> None:
        if not 0.0 < ratio < 1.0:
            raise CimptError(f"{key}: {ratio} must be in (0, 1)")
        if unit < 1 or grid % unit:
            raise CimptError(
                f"mask unit of {unit} grid cells does not divide the {grid}x{grid} patch grid"
            )
        self.grid = grid
        self.unit = unit
        self.units = grid // unit
        self.num_masked = round(ratio * self.units**2)
        if not 0 < self.num_masked < self.units**2:
            raise CimptError(
                f"{key}: {ratio} masks {self.num_masked} of {self.units**2} mask units; "
                "at least one must be masked and one visible"
            )
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng or 0)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (used once per DataLoader worker)."""
        self.rng.seed(seed)

    def __call__(self) -> torch.Tensor:
        coarse = torch.zeros(self.units * self.units, dtype=torch.bool)
        coarse[self.rng.sample(range(self.units * self.units), self.num_masked)] = True
        coarse = coarse.view(self.units, self.units)
        return coarse.repeat_interleave(self.unit, 0).repeat_interleave(self.unit, 1)

    def __repr__(self) -> str:
        return (
            f"RandomMaskGenerator(grid={self.grid}, unit={self.unit}, "
            f"num_masked={self.num_masked} of {self.units**2})"
        )
