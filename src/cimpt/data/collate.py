"""Batching: stack views, draw one block mask per image, drop and count broken samples.

The mask is drawn here (docs/DESIGN.md lesson 8: views and masks belong to the data code), inside
the DataLoader worker, so the training step receives ready-made masks and the main process
spends no time on them (docs/METHOD.md step 2).

Broken files arrive as ``None`` (see ``cimpt.data.images``). They are dropped, and the batch
says how many in ``"skipped"``, a plain int that the training loop can sum across workers and
ranks. A batch may therefore be smaller than the batch size, and, if every sample was broken,
empty (``batch["label"].numel() == 0``); the loop should skip such a batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from cimpt.data.masking import BlockMaskGenerator
from cimpt.data.random_mask import RandomMaskGenerator

Sample = tuple[Any, int] | None


def _split_valid(samples: Sequence[Sample]) -> tuple[list[tuple[Any, int]], int]:
    valid = [s for s in samples if s is not None]
    return valid, len(samples) - len(valid)


def _labels(valid: list[tuple[Any, int]]) -> torch.Tensor:
    return torch.tensor([int(s[1]) for s in valid], dtype=torch.long)


class CIMCollate:
    """Samples ``((x [3,R,R], x_tok [3,T,T]), label) | None`` -> a CIM batch dict.

    Returns ``{"x": [B,3,R,R] float, "x_tok": [B,3,T,T] float, "mask": [B,g,g] bool,
    "label": [B] long, "skipped": int}`` with B the number of decodable samples.

    Reproducibility: in a DataLoader worker, the mask generator is reseeded once from
    ``torch.initial_seed()`` (which PyTorch sets to base_seed + worker_id, base_seed drawn from
    the loader's generator), so a run with a fixed seed draws the same masks and different
    workers draw different masks. In the main process the generator keeps its own seed.
    """

    def __init__(self, mask_generator: BlockMaskGenerator | RandomMaskGenerator) -> None:
        self.mask_generator = mask_generator
        self._seeded_for: tuple[int, int] | None = None

    def _seed_for_worker(self) -> None:
        info = get_worker_info()
        if info is None:
            return
        # (pid, worker id) identifies this worker process; a new epoch without persistent
        # workers starts new processes and hence reseeds from the new base seed.
        who = (os.getpid(), info.id)
        if who != self._seeded_for:
            self.mask_generator.reseed(torch.initial_seed())
            self._seeded_for = who

    def __call__(self, samples: Sequence[Sample], seed: int | None = None) -> dict[str, Any]:
        """``seed`` (from ``SeededCollate``) fixes this batch's masks; else the worker stream."""
        if seed is None:
            self._seed_for_worker()
        else:
            self.mask_generator.reseed(seed)
        valid, skipped = _split_valid(samples)
        g = self.mask_generator.grid
        if not valid:
            return {
                "x": torch.empty(0, 3, 0, 0),
                "x_tok": torch.empty(0, 3, 0, 0),
                "mask": torch.empty(0, g, g, dtype=torch.bool),
                "label": torch.empty(0, dtype=torch.long),
                "skipped": skipped,
            }
        return {
            "x": torch.stack([s[0][0] for s in valid]),
            "x_tok": torch.stack([s[0][1] for s in valid]),
            "mask": torch.stack([self.mask_generator() for _ in valid]),
            "label": _labels(valid),
            "skipped": skipped,
        }


class ImageCollate:
    """Single-view samples ``(x [3,S,S], label) | None`` -> ``{"x", "label", "skipped"}``."""

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        valid, skipped = _split_valid(samples)
        if not valid:
            return {
                "x": torch.empty(0, 3, 0, 0),
                "label": torch.empty(0, dtype=torch.long),
                "skipped": skipped,
            }
        return {
            "x": torch.stack([s[0] for s in valid]),
            "label": _labels(valid),
            "skipped": skipped,
        }
