"""Throughput of the CIM data pipeline: decode + two views + block mask + collate.

Measures images/s delivered by a DataLoader with ONE worker over the CIFAR-10 train image
folder (R = 32, tokenizer view 32, 8x8 mask grid, batch 256), after a warm-up, for about 20 s.
Prints a table and writes ``bench/results/data_throughput.json``.

Usage:
    python bench/bench_data.py [PATH] [--seconds 20] [--workers 1] [--batch-size 256]
PATH defaults to ~/.cache/cimpt/data/CIFAR-10-images/train (JPEGs in class sub-folders).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from cimpt.data import (
    BlockMaskGenerator,
    CIMCollate,
    ImageFolderDataset,
    ResumableSampler,
    TwoViewTransform,
    build_loader,
)
from cimpt.data.seeded import SeededCollate, SeededSamples
from cimpt.errors import CimptError
from records import git_commit, write_record

DEFAULT_PATH = "~/.cache/cimpt/data/CIFAR-10-images/train"
RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def measure(
    path: str, workers: int, batch_size: int, seconds: float, warmup_batches: int
) -> dict[str, float]:
    """Run the loader; return images/s and batch statistics over the measured window."""
    dataset = ImageFolderDataset(path, TwoViewTransform(32, 32))
    collate = CIMCollate(BlockMaskGenerator(grid=8, ratio=0.45, rng=0))
    # Exactly what the training engine builds: per-sample seeds (cimpt.data.seeded).
    sampler = ResumableSampler(len(dataset), seed=0, encode_epoch=True)
    loader = build_loader(
        SeededSamples(dataset, 0), batch_size, workers, SeededCollate(collate), sampler, seed=0
    )
    images = batches = skipped = 0
    it = iter(loader)
    for _ in range(warmup_batches):  # worker start-up and first-batch latency excluded
        next(it)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        images += batch["x"].shape[0]
        skipped += batch["skipped"]
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": images / elapsed,
        "images": images,
        "batches": batches,
        "skipped": skipped,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=DEFAULT_PATH)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup-batches", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    path = os.path.expanduser(args.path)
    if not os.path.isdir(path):
        print(
            f"error: CIFAR-10 image folder not found at {path}; pass the path of a folder of "
            "images (e.g. CIFAR-10-images/train with class sub-folders)",
            file=sys.stderr,
        )
        return 2
    try:
        res = measure(path, args.workers, args.batch_size, args.seconds, args.warmup_batches)
    except CimptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = {
        "benchmark": "data_throughput",
        "pipeline": "ImageFolder JPEG decode + TwoViewTransform(32, 32) + "
        "BlockMaskGenerator(grid=8, ratio=0.45) + CIMCollate, with the engine's "
        "per-sample seeding (SeededSamples/SeededCollate)",
        "path": path,
        "workers": args.workers,
        "batch_size": args.batch_size,
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    print(f"{'metric':<14} {'value':>12}")
    for key in ("workers", "batch_size", "batches", "images", "skipped", "seconds", "images_per_s"):
        print(f"{key:<14} {record[key]:>12}")
    write_record(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
