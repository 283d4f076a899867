"""BlockMaskGenerator: exact counts, BEiT-like contiguous blocks, aspect bounds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from cimpt.data import BlockMaskGenerator, auto_min_block
from cimpt.errors import CimptError


def components(mask: np.ndarray) -> list[int]:
    """Sizes of 4-connected components of True cells, by a plain flood fill."""
    g = mask.shape[0]
    seen = [[False] * g for _ in range(g)]
    sizes = []
    for i in range(g):
        for j in range(g):
            if mask[i][j] and not seen[i][j]:
                stack, size = [(i, j)], 0
                seen[i][j] = True
                while stack:
                    a, b = stack.pop()
                    size += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        u, v = a + da, b + db
                        if 0 <= u < g and 0 <= v < g and mask[u][v] and not seen[u][v]:
                            seen[u][v] = True
                            stack.append((u, v))
                sizes.append(size)
    return sizes


def neighbour_share(mask: np.ndarray) -> float:
    """Share of masked cells with at least one masked 4-neighbour."""
    g, hits, total = mask.shape[0], 0, 0
    for i in range(g):
        for j in range(g):
            if mask[i][j]:
                total += 1
                hits += any(
                    0 <= i + a < g and 0 <= j + b < g and mask[i + a][j + b]
                    for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))
                )
    return hits / max(total, 1)


def naive_beit(
    g: int, target: int, min_block: int, min_aspect: float, rng: random.Random, strict: bool
) -> np.ndarray:
    """An independent, loop-by-loop simulation of BEiT's rule (strict = BEiT's w < width)."""
    mask = [[False] * g for _ in range(g)]
    count = 0
    while count < target:
        budget = target - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, budget)
            aspect = math.exp(rng.uniform(math.log(min_aspect), math.log(1 / min_aspect)))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            fits = (h < g and w < g) if strict else (1 <= h <= g and 1 <= w <= g)
            if not fits or h < 1 or w < 1:
                continue
            top, left = rng.randint(0, g - h), rng.randint(0, g - w)
            new = [
                (i, j) for i in range(top, top + h) for j in range(left, left + w) if not mask[i][j]
            ]
            if 0 < len(new) <= budget:
                for i, j in new:
                    mask[i][j] = True
                added = len(new)
                break
        if added == 0:
            break
        count += added
    return np.array(mask)


@pytest.mark.parametrize("grid", [4, 8, 14])
def test_count_is_exact_for_every_seed(grid: int):
    for ratio in (0.1, 0.3, 0.45, 0.6, 0.75, 0.9):
        gen = BlockMaskGenerator(grid, ratio, rng=grid)
        target = round(ratio * grid * grid)
        for _ in range(150):
            m = gen()
            assert m.shape == (grid, grid) and m.dtype == torch.bool
            assert int(m.sum()) == target


def test_blocks_are_contiguous_and_match_an_independent_simulation():
    gen = BlockMaskGenerator(8, 0.45, rng=1)
    ours = [gen().numpy() for _ in range(400)]
    rng = random.Random(2)
    ref = [naive_beit(8, 29, auto_min_block(8), 0.3, rng, strict=False) for _ in range(400)]
    mean_ours = np.mean([np.mean(components(m)) for m in ours])
    mean_ref = np.mean([np.mean(components(m)) for m in ref])
    # Independent random masks of the same size form much smaller components.
    nrng = np.random.default_rng(0)
    rand = [nrng.permutation(64).reshape(8, 8) < 29 for _ in range(400)]
    mean_rand = np.mean([np.mean(components(m)) for m in rand])
    assert mean_ours > 2 * mean_rand and mean_ours > 5
    assert abs(mean_ours - mean_ref) / mean_ref < 0.15
    assert np.mean([neighbour_share(m) for m in ours]) > 0.95


def test_block_shapes_respect_area_and_aspect_bounds():
    gen = BlockMaskGenerator(14, 0.5, min_block=6, max_block=30, min_aspect=0.4, rng=0)
    n_blocks = 0
    for _ in range(200):
        mask, blocks = gen.sample()
        rebuilt = np.zeros((14, 14), dtype=bool)
        for top, left, h, w in blocks:
            n_blocks += 1
            assert top >= 0 and top + h <= 14 and left >= 0 and left + w <= 14
            assert h * w <= 30 + 2 * math.sqrt(30) + 1  # area <= max_block up to rounding
            # Log-uniform aspect in [0.4, 2.5], up to half a cell of rounding on each side.
            assert (h - 0.5) / (w + 0.5) <= 2.5 and (h + 0.5) / (w - 0.5) >= 0.4
            rebuilt[top : top + h, left : left + w] = True
        m = mask.numpy()
        assert (m[rebuilt]).all() and m.sum() - rebuilt.sum() >= 0
    assert n_blocks >= 200


def test_beit_setting_on_a_14x14_grid():
    assert auto_min_block(14) == 16
    gen = BlockMaskGenerator(14, 75 / 196, rng=3)
    assert gen.min_block == 16 and gen.max_block == 75
    ours = [gen().numpy() for _ in range(200)]
    assert all(m.sum() == 75 for m in ours)
    rng = random.Random(4)
    beit = [naive_beit(14, 75, 16, 0.3, rng, strict=True) for _ in range(200)]
    # BEiT itself is not exact but close; our masks have the same block structure.
    assert 70 <= np.mean([m.sum() for m in beit]) <= 75
    ours_comp = np.mean([np.mean(components(m)) for m in ours])
    beit_comp = np.mean([np.mean(components(m)) for m in beit])
    assert abs(ours_comp - beit_comp) / beit_comp < 0.2 and ours_comp > 15


def test_auto_min_block_and_reproducibility():
    assert [auto_min_block(g) for g in (2, 4, 8, 14, 16)] == [2, 2, 5, 16, 21]
    a, b = BlockMaskGenerator(8, 0.45, rng=7), BlockMaskGenerator(8, 0.45, rng=7)
    assert all((a() == b()).all() for _ in range(20))
    a.reseed(11)
    b.reseed(12)
    assert any((a() != b()).any() for _ in range(5))


def test_bad_arguments_are_cimpt_errors():
    with pytest.raises(CimptError, match=r"mask.ratio"):
        BlockMaskGenerator(8, 1.5)
    with pytest.raises(CimptError, match=r"mask.min_block"):
        BlockMaskGenerator(8, 0.5, min_block=-1)
    with pytest.raises(CimptError, match=r"mask.min_aspect"):
        BlockMaskGenerator(8, 0.5, min_aspect=0)


def _cell_frequency(gen: BlockMaskGenerator, n: int) -> torch.Tensor:
    return torch.stack([gen() for _ in range(n)]).float().mean(0)


def test_uniform_placement_keeps_count_and_blocks_and_flattens_coverage():
    beit = BlockMaskGenerator(8, 0.45, rng=0)
    uniform = BlockMaskGenerator(8, 0.45, rng=0, placement="uniform")
    masks = [uniform() for _ in range(300)]
    assert all(int(m.sum()) == round(0.45 * 64) for m in masks)
    # A roll keeps the shape: some cyclic shift of a uniform mask is a BEiT-placed mask.
    same = BlockMaskGenerator(8, 0.45, rng=7, placement="uniform")
    ref = BlockMaskGenerator(8, 0.45, rng=7)
    rolled, plain = same(), ref()
    shifts = [(dy, dx) for dy in range(8) for dx in range(8)]
    assert any(torch.equal(torch.roll(plain, s, (0, 1)), rolled) for s in shifts)
    # Coverage: BEiT's favours the centre by a wide margin; uniform stays near 0.45 everywhere.
    fb, fu = _cell_frequency(beit, 3000), _cell_frequency(uniform, 3000)
    assert fb.max() / fb.min() > 3
    assert fu.max() / fu.min() < 1.3 and abs(fu.mean().item() - 0.4531) < 1e-3


def test_unknown_placement_is_an_error():
    with pytest.raises(CimptError, match=r"mask\.placement"):
        BlockMaskGenerator(8, 0.45, placement="centre")
