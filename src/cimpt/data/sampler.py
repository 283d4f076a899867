"""A resumable, rank-sharded sampler and the DataLoader factory.

Long pre-training runs are interrupted; ``resume=auto`` (docs/DESIGN.md, "The stable interface")
should continue with exactly the samples the interrupted epoch had not yet seen. The order of
an epoch is a pure function of (seed, epoch), so a resumed run recomputes it and skips the
first ``i`` samples with ``set_start(i)``. Sharding across ranks follows
``torch.utils.data.DistributedSampler``: rank r takes positions r, r + world, ... of the
epoch's order, so the ranks' shards are disjoint and together cover the (padded or truncated)
epoch.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from cimpt.engine.distributed import distributed_rank_world


class ResumableSampler(Sampler[int]):
    """Indices of this rank's share of a (seeded, per-epoch) permutation of ``range(n)``.

    Args:
        dataset_len: n, the number of samples.
        shuffle: permute with ``torch.Generator`` seeded by ``seed + epoch``; else 0..n-1.
        seed: base seed, the same on every rank.
        rank, world: this process's DDP rank and the number of ranks.
        drop_last: drop the tail so every rank gets ``n // world`` samples; otherwise pad by
            repeating the start of the order so every rank gets ``ceil(n / world)``.

        encode_epoch: yield ``epoch * n + index`` instead of ``index``, for
            ``cimpt.data.seeded.SeededSamples`` (per-sample seeds that know the epoch).

    ``set_epoch(e)`` selects the epoch (and resets the start to 0); ``set_start(i)`` then
    skips the first ``i`` samples of this rank's order for that epoch.
    """

    def __init__(
        self,
        dataset_len: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
        encode_epoch: bool = False,
    ) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world={world})")
        if dataset_len < (world if drop_last else 1):
            raise ValueError(f"{dataset_len} samples cannot be shared by {world} ranks")
        self.dataset_len = dataset_len
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.encode_epoch = encode_epoch
        self.epoch = 0
        self.start = 0
        per_rank = dataset_len // world if drop_last else -(-dataset_len // world)
        self.num_samples = per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside this rank's {self.num_samples} samples")
        self.start = start

    def epoch_order(self) -> list[int]:
        """This rank's full order for the current epoch (ignoring ``start``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world
        if total > len(order):  # pad (drop_last=False) by wrapping around
            order = (order * (-(-total // len(order))))[:total]
        return order[:total][self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()[self.start :]
        if self.encode_epoch:
            offset = self.epoch * self.dataset_len
            order = [offset + i for i in order]
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples - self.start


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed (base + worker id),
    so third-party transforms that use them are reproducible and differ between workers."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # A scheduler's stop (timeout, scancel, kill -- -PGID) signals the whole process group.
    # Workers ignore it so that the main process can finish its step and checkpoint; they
    # end when the main process shuts the loader down (or exits: they watch their parent).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(
    dataset: Dataset | IterableDataset,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
    sampler: Sampler[int] | None = None,
    seed: int = 0,
    drop_last: bool = True,
    persistent: bool = True,
    prefetch_factor: int = 4,
    shuffle: bool = True,
) -> DataLoader:
    """A DataLoader with this project's defaults.

    Map-style datasets without a sampler get ``ResumableSampler(len, shuffle, seed)`` sharded
    over the torch.distributed ranks when initialized;
    IterableDatasets get none (they split and shuffle themselves). Workers are seeded from a
    ``torch.Generator`` seeded with ``seed`` (reproducible masks and crops), kept alive
    between epochs when ``persistent`` (worker start-up is slow), and prefetch
    ``prefetch_factor`` batches each. Memory is pinned when CUDA is available.
    """
    iterable = isinstance(dataset, IterableDataset)
    if not iterable and sampler is None:
        rank, world = distributed_rank_world()
        sampler = ResumableSampler(
            len(dataset),  # type: ignore[arg-type]
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world=world,
            drop_last=False,
        )
    workers = max(0, int(num_workers))
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {
            "persistent_workers": persistent,
            "prefetch_factor": prefetch_factor,
            "worker_init_fn": _seed_worker,
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=None if iterable else sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
