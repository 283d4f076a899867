"""Blockwise masks over the patch grid, as in BEiT (Bao et al., ICLR 2022, Algorithm 1).

docs/METHOD.md step 2: CIM's generator is a small BEiT (Fang et al., ICLR 2023), so its input is
masked the BEiT way, in blocks of contiguous patches rather than independent random patches
(the exact numbers are a documented choice, see below). Masking whole blocks removes the easy
shortcut of copying a neighbouring patch, so the generator must model content, and the
corrupted image then has coherent replaced regions for the enhancer to find.

The rule, per block: draw an area uniformly in [min_block, remaining budget], a log-uniform
aspect ratio in [min_aspect, 1 / min_aspect], turn them into a rounded height and width, place
the block at a uniformly random position, and accept it when the number of *newly* masked
cells is positive and does not exceed the remaining budget. Blocks are drawn until the target
count is reached or 10 attempts in a row fail.

Two documented differences from BEiT:

- **Exact count.** BEiT stops when placement stalls, so its masks can fall a few cells short of
  the target. We then fill the remaining cells with uniformly random single unmasked cells,
  so every mask has exactly ``round(ratio * grid**2)`` cells and the mask ratio is what the
  config says (the losses' normalization and the logged statistics depend on it).
- **Minimum block for small grids.** BEiT's minimum block is 16 of 196 cells (a 14x14 grid).
  ``min_block=0`` scales that area fraction to the grid: ``max(2, round(16 * grid**2 / 196))``
  (5 cells on CIFAR's 8x8 grid), never below 2 so that a block is still a block.
  ``max_block=0`` means the whole target count, as in BEiT.

Placement (``mask.placement``): ``beit`` places blocks as above, which masks central cells far
more often than corners (a block must fit inside the grid; at 8x8 with ratio 0.45, corners
about 14 % of the time and central cells about 75 %). ``uniform`` then rolls the finished mask
by a uniformly random cyclic shift along each axis (``torch.roll``, wrapping around the
edges): the block shapes and the exact count are kept, a block that crosses an edge
continues on the opposite side, and every cell is masked with probability exactly
``count / grid**2`` (averaged over the shifts, each cell visits every position once).

Blocks may span the full grid side (BEiT requires them to be strictly smaller); this only
matters on tiny grids, where BEiT's rule would forbid many legal shapes.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from cimpt.errors import CimptError

Block = tuple[int, int, int, int]  # (top, left, height, width)

#: ``mask.placement`` values (module doc).
PLACEMENTS = ("beit", "uniform")
# BEiT's retry budget for one block before placement counts as stalled.
_ATTEMPTS_PER_BLOCK = 10


def auto_min_block(grid: int) -> int:
    """BEiT's minimum block (16 of 196 cells) scaled to a ``grid x grid`` grid, at least 2."""
    return max(2, round(16 * grid * grid / 196))


class BlockMaskGenerator:
    """Callable returning a BEiT-style block mask: bool tensor ``[grid, grid]``, True = masked.

    Args:
        grid: side of the patch/token grid.
        ratio: fraction of cells to mask; exactly ``round(ratio * grid**2)`` are masked.
        min_block: minimum block area in cells; 0 = ``auto_min_block(grid)``.
        max_block: maximum block area in cells; 0 = the target count.
        min_aspect: aspect ratios are drawn log-uniformly from [min_aspect, 1 / min_aspect].
        rng: a ``random.Random``, an int seed, or None (seeded 0). Reseed per DataLoader worker
            with ``reseed`` (``CIMCollate`` does this) so workers draw different masks.
        placement: "beit" (BEiT's, centre-biased) or "uniform" (rolled by a random shift).
    """

    def __init__(
        self,
        grid: int,
        ratio: float,
        min_block: int = 0,
        max_block: int = 0,
        min_aspect: float = 0.3,
        rng: random.Random | int | None = None,
        placement: str = "beit",
    ) -> None:
        if placement not in PLACEMENTS:
            raise CimptError(f"mask.placement: '{placement}' is not one of {', '.join(PLACEMENTS)}")
        self.placement = placement
        if grid <= 0:
            raise CimptError(f"mask grid must be positive, got {grid}")
        if not 0.0 <= ratio < 1.0:
            raise CimptError(f"mask.ratio: must be in [0, 1), got {ratio}")
        if min_block < 0 or max_block < 0:
            raise CimptError("mask.min_block / mask.max_block: must be >= 0 (0 = automatic)")
        if min_aspect <= 0:
            raise CimptError(f"mask.min_aspect: must be positive, got {min_aspect}")
        self.grid = grid
        self.num_masked = round(ratio * grid * grid)
        self.min_block = min_block or auto_min_block(grid)
        self.max_block = max_block or self.num_masked
        lo, hi = sorted((min_aspect, 1.0 / min_aspect))
        self.log_aspect = (math.log(lo), math.log(hi))
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng or 0)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (used once per DataLoader worker)."""
        self.rng.seed(seed)

    def _place_block(self, mask: np.ndarray, budget: int) -> tuple[Block, int] | None:
        """Try to add one block adding 1 to ``budget`` new cells: (block, new cells) or None."""
        g, rng = self.grid, self.rng
        lo, hi = sorted((self.min_block, budget))  # as BEiT: uniform(min, max) in either order
        for _ in range(_ATTEMPTS_PER_BLOCK):
            area = rng.uniform(lo, hi)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (1 <= h <= g and 1 <= w <= g):
                continue
            top, left = rng.randint(0, g - h), rng.randint(0, g - w)
            window = mask[top : top + h, left : left + w]
            new = h * w - int(np.count_nonzero(window))
            if 0 < new <= budget:
                window[...] = True
                return (top, left, h, w), new
        return None

    def sample(self) -> tuple[torch.Tensor, list[Block]]:
        """A mask ``[grid, grid]`` (bool) and the blocks placed before any single-cell fill
        (and, with ``uniform`` placement, before the roll)."""
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        blocks: list[Block] = []
        count = 0
        while count < self.num_masked:
            budget = min(self.num_masked - count, self.max_block)
            placed = self._place_block(mask, budget)
            if placed is None:
                break
            blocks.append(placed[0])
            count += placed[1]
        if count < self.num_masked:
            # Placement stalled: make the count exact with random single cells (module doc).
            free = np.flatnonzero(~mask.ravel()).tolist()
            for i in self.rng.sample(free, self.num_masked - count):
                mask.flat[i] = True
        out = torch.from_numpy(mask)
        if self.placement == "uniform":
            shift = (self.rng.randrange(self.grid), self.rng.randrange(self.grid))
            out = torch.roll(out, shifts=shift, dims=(0, 1))
        return out, blocks

    def __call__(self) -> torch.Tensor:
        return self.sample()[0]

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid={self.grid}, num_masked={self.num_masked}, "
            f"min_block={self.min_block}, max_block={self.max_block}, "
            f"placement={self.placement}, "
            f"aspect=[{math.exp(self.log_aspect[0]):.3g}, {math.exp(self.log_aspect[1]):.3g}])"
        )
