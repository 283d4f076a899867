"""Streaming dataset over WebDataset-layout tar shards, read with Python's ``tarfile``.

Large collections (ImageNet-scale pre-training, docs/METHOD.md "Recipes (choice)") are best
stored as a few hundred tar files read sequentially. The layout follows WebDataset: files of
one sample are adjacent in the tar and share a key, the member path up to the first dot of its
base name (``train/000123.jpg`` + ``train/000123.cls`` form sample ``train/000123``). The image
comes from the first of jpg/jpeg/png/webp present, the label from ``.cls`` (integer text),
else -1. The ``webdataset`` package is not needed.

Splitting: the shard list is the same on every process; each (DDP rank, DataLoader worker)
pair is one *stream*. With at least as many shards as streams, stream k reads shards
k, k + n, k + 2n, ... of the (seeded, per-epoch) shuffled shard order. With fewer shards than
streams, every stream reads every shard and keeps every n-th sample. Either way each sample is
seen exactly once per epoch over all streams.

Epochs: ``set_epoch(e)`` sets the shard order and shuffle-buffer seed. DataLoader workers hold
copies of the dataset, so with persistent workers a ``set_epoch`` in the main process does not
reach them; therefore every new ``__iter__`` on the same copy also advances the epoch by one
(``epoch = last set_epoch value + iterations started since``). Resuming mid-epoch is not
supported for streams: a resumed run starts the epoch it stopped in again.

Why not the ``webdataset`` package (checked against 1.0.2): a resumed run fast-forwards
``batch_in_epoch`` batches of the saved epoch, so the stream must be a function of (seed,
epoch, rank, worker). webdataset's shard and sample shuffles (``detshuffle``) seed from
their own iteration counter, which starts afresh in a restarted process (and in each new
worker copy) and has no ``set_epoch``; its ``split_by_node`` / ``split_by_worker`` split shards
only, leaving streams empty when there are fewer shards than ranks x workers; and its error
handlers drop broken samples where the collate here counts them. Adopting it would mean
replacing those three stages, keeping only its tar reading.
"""

from __future__ import annotations

import glob
import os
import random
import re
import tarfile
import warnings
from collections.abc import Callable, Iterator
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from cimpt.data.images import BrokenFileReporter, load_rgb_or_none
from cimpt.engine.distributed import distributed_rank_world
from cimpt.errors import CimptError

TAR_IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

_BRACE = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    """``shard-{000..009}.tar`` -> 10 names (zero padding kept); ``{a,b}`` -> alternatives."""
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACE.finditer(pattern):
        parts.append([pattern[pos : m.start()]])
        body = m.group(1)
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if rng:
            lo, hi = rng.group(1), rng.group(2)
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            parts.append([str(i).zfill(width) for i in range(int(lo), int(hi) + 1)])
        else:
            parts.append(body.split(","))
        pos = m.end()
    parts.append([pattern[pos:]])
    return ["".join(choice) for choice in product(*parts)]


def expand_shards(path: str, key: str = "data.path") -> list[str]:
    """A .tar file, a folder of .tar files, a glob, or a brace pattern -> sorted shard paths."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        shards = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not shards:
            raise CimptError(f"{key}: no .tar shards found in {path}")
        return shards
    shards = []
    for name in _expand_braces(path):
        if any(c in name for c in "*?["):
            shards.extend(sorted(glob.glob(name)))
        elif os.path.isfile(name):
            shards.append(name)
        else:
            raise CimptError(f"{key}: shard {name} does not exist")
    if not shards:
        raise CimptError(f"{key}: no .tar shards match {path}")
    return shards


def _sample_key(member_name: str) -> tuple[str, str]:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): WebDataset's key convention."""
    head, base = os.path.split(member_name)
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


class TarShardDataset(IterableDataset):
    """Stream samples ``(transform(rgb_pil_image), label)`` from WebDataset-style tar shards.

    Args:
        path: a .tar file, a folder holding .tar files, a glob, or a brace pattern.
        transform: applied to each decoded RGB PIL image.
        shuffle: shuffle shard order by (seed, epoch) and samples through a buffer.
        seed: base seed for both shuffles.
        buffer_size: samples (undecoded bytes) held for the in-memory shuffle; small, since
            the shard order already randomizes at a coarse level.
        max_images: if > 0, the total is split evenly over all streams (ceil(N / streams) each).
        rank, world: DDP position; default from ``torch.distributed`` when initialized.

    Yields ``None`` for a sample whose image cannot be decoded, has no image member, or whose
    ``.cls`` is not an integer, and once for a shard that is unreadable or truncated (warned
    once); the collate drops and counts them.
    """

    def __init__(
        self,
        path: str,
        transform: Callable[[Any], Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 512,
        max_images: int = 0,
        rank: int | None = None,
        world: int | None = None,
        key: str = "data.path",
    ) -> None:
        super().__init__()
        self.shards = expand_shards(path, key)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = max(1, buffer_size)
        self.max_images = max_images
        self._rank_world = (rank, world)
        self.epoch = 0
        self._iters_since_set = 0
        self._reporter = BrokenFileReporter()

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order / buffer seed of ``epoch`` (see the module docstring)."""
        self.epoch = epoch
        self._iters_since_set = 0

    def _stream(self) -> tuple[int, int]:
        """(this stream's id, number of streams) over DDP ranks x DataLoader workers."""
        rank, world = self._rank_world
        if rank is None or world is None:
            rank, world = distributed_rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def _shard_order(self, epoch: int) -> list[str]:
        if not self.shuffle:
            return list(self.shards)
        # Same permutation on every process: all streams must agree on which shard is whose.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]

    def _raw_samples(self, shard: str) -> Iterator[tuple[str, dict[str, bytes]] | None]:
        """Group adjacent members by key; yield (key, {ext: bytes}), or None for a bad shard."""
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _sample_key(member.name)
                    if k != key and key is not None:
                        yield key, files
                        files = {}
                    key = k
                    f = tar.extractfile(member)
                    if f is not None:
                        files[ext] = f.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            # A truncated or corrupt shard: keep what was read, skip the rest of it.
            self._reporter.report(shard, exc)
            yield None
            return
        if key is not None:
            yield key, files

    def _decode(self, shard: str, key: str, files: dict[str, bytes]) -> tuple[Any, int] | None:
        name = f"{shard}:{key}"
        ext = next((e for e in TAR_IMAGE_EXTENSIONS if e in files), None)
        if ext is None:
            self._reporter.report(name, ValueError(f"no {'/'.join(TAR_IMAGE_EXTENSIONS)} member"))
            return None
        label = -1
        if "cls" in files:
            try:
                label = int(files["cls"].decode("utf-8").strip())
            except (UnicodeDecodeError, ValueError) as exc:
                self._reporter.report(name, exc)
                return None
        img = load_rgb_or_none(files[ext], f"{name}.{ext}", self._reporter)
        if img is None:
            return None
        return (self.transform(img) if self.transform is not None else img), label

    def _my_samples(self, epoch: int) -> Iterator[tuple[str, str, dict[str, bytes]] | None]:
        """This stream's share of the epoch's (shard, key, files), in shard order."""
        stream, streams = self._stream()
        order = self._shard_order(epoch)
        by_shard = len(order) >= streams
        if by_shard:
            if len(order) % streams:
                warnings.warn(
                    f"{len(order)} tar shards do not divide evenly over {streams} streams "
                    "(ranks x workers): some streams get one shard more",
                    stacklevel=2,
                )
            order = order[stream::streams]
        n = 0
        for shard in order:
            for item in self._raw_samples(shard):
                if item is None:
                    # Count a broken shard once, on the stream that owns it.
                    if by_shard or stream == 0:
                        yield None
                    continue
                if by_shard or n % streams == stream:
                    yield shard, item[0], item[1]
                n += 1

    def __iter__(self) -> Iterator[tuple[Any, int] | None]:
        epoch = self.epoch + self._iters_since_set
        self._iters_since_set += 1
        stream, streams = self._stream()
        limit = -(-self.max_images // streams) if self.max_images > 0 else -1
        rng = random.Random(f"{self.seed}/{epoch}/{stream}")
        buffer: list[tuple[str, str, dict[str, bytes]] | None] = []
        emitted = 0
        for item in self._my_samples(epoch):
            if limit >= 0 and emitted >= limit:
                return
            if not self.shuffle:
                emitted += 1
                yield self._decode(*item) if item is not None else None
                continue
            if len(buffer) < self.buffer_size:
                buffer.append(item)
                continue
            j = rng.randrange(len(buffer))
            out, buffer[j] = buffer[j], item
            emitted += 1
            yield self._decode(*out) if out is not None else None
        rng.shuffle(buffer)
        for out in buffer:
            if limit >= 0 and emitted >= limit:
                return
            emitted += 1
            yield self._decode(*out) if out is not None else None
