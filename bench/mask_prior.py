"""How much does a mask's position alone tell? Coverage of BEiT's block masks against the
``uniform`` placement (issue 17), on the CIFAR (8x8, ratio 0.45) and ImageNet (14x14, 0.4)
grids.

For each setting, ``--n`` masks from ``build_mask_generator``'s generator estimate the per-cell
masking frequency; ``--n`` fresh masks then score a detector that ignores the image and says
"masked" wherever that frequency exceeds one half. Its accuracy is what REVDET gets for free
(98-99 % of masked tokens are replaced at our scale), against the majority rate ``1 - ratio``.

    python bench/mask_prior.py [--n 20000] [--out bench/results/mask_prior.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cimpt.data.masking import PLACEMENTS, BlockMaskGenerator
from records import git_commit, write_record

SETTINGS = ((8, 0.45), (14, 0.4))


def measure(grid: int, ratio: float, placement: str, n: int) -> dict[str, float]:
    gen = BlockMaskGenerator(grid, ratio, rng=0, placement=placement)
    freq = torch.stack([gen() for _ in range(n)]).float().mean(0)
    prior = freq > 0.5
    fresh = torch.stack([gen() for _ in range(n)])
    acc = (fresh == prior).float().mean().item()
    masked_share = fresh.float().mean().item()
    return {
        "grid": grid,
        "ratio": ratio,
        "placement": placement,
        "cell_freq_min": freq.min().item(),
        "cell_freq_max": freq.max().item(),
        "max_over_min": (freq.max() / freq.min().clamp_min(1e-9)).item(),
        "position_only_acc": acc,
        "majority_acc": max(masked_share, 1 - masked_share),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", default="bench/results/mask_prior.json")
    a = ap.parse_args(argv)
    t0 = time.time()
    rows = [measure(g, r, p, a.n) for g, r in SETTINGS for p in PLACEMENTS]
    print(
        "| grid | ratio | placement | cell freq min-max | max/min | position-only acc | majority |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['grid']}x{r['grid']} | {r['ratio']} | {r['placement']} | "
            f"{r['cell_freq_min']:.3f}-{r['cell_freq_max']:.3f} | {r['max_over_min']:.2f} | "
            f"{100 * r['position_only_acc']:.1f} % | {100 * r['majority_acc']:.1f} % |"
        )
    record = {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_masks": a.n,
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
    }
    write_record(record, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
