"""Evaluation over a whole split: sliding-window logits, one confusion matrix, a figure.

Images are sharded over DDP ranks without padding (rank r takes images r, r + world, ...),
so every pixel is counted once; the matrices are summed over ranks before the metrics are read
(``cimpt.seg.metrics``). Rank 0 also keeps its first images for the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cimpt.engine.distributed import distributed_rank_world
from cimpt.engine.precision import autocast
from cimpt.seg.figure import colorize, denormalize
from cimpt.seg.infer import predict_at, slide_logits
from cimpt.seg.metrics import ConfusionMeter

FigureRow = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class EvalSpec:
    """How to evaluate: window size and stride, classes, batch, figure rows, normalization."""

    crop: int
    stride: int
    num_classes: int
    ignore_index: int
    batch_size: int
    num_workers: int
    figure_images: int
    mean: list[float]
    std: list[float]


def _single(batch: list[Any]) -> Any:
    return batch[0]


def _figure_row(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, spec: EvalSpec) -> FigureRow:
    image = denormalize(x, spec.mean, spec.std)
    if image.shape[:2] != tuple(y.shape):  # shown at the label's size
        image = np.asarray(Image.fromarray(image).resize((y.shape[1], y.shape[0])))
    k, ign = spec.num_classes, spec.ignore_index
    return image, colorize(y, k, ign), colorize(pred, k, ign)


@torch.no_grad()
def evaluate_split(
    net: nn.Module,
    dataset: Dataset[Any],
    spec: EvalSpec,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, list[FigureRow]]:
    """The split's confusion matrix ``[K, K]`` (summed over ranks) and rank 0's figure rows.

    ``net`` maps ``[N, 3, crop, crop]`` to logits ``[N, K, crop, crop]`` and is run under the
    run's autocast (``train.amp``); logits are averaged and compared in fp32.
    """
    rank, world = distributed_rank_world()
    n = len(dataset)  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, range(rank, n, world)),
        batch_size=1,
        num_workers=spec.num_workers,
        collate_fn=_single,
    )
    meter = ConfusionMeter(spec.num_classes, spec.ignore_index, device)
    rows: list[FigureRow] = []
    # Figure rows spread over the split (consecutive video frames look alike).
    m, k = len(loader), spec.figure_images
    shown = {round(i * (m - 1) / max(1, k - 1)) for i in range(min(k, m))} if rank == 0 else set()
    for j, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        with autocast(device, amp_dtype):
            logits = slide_logits(net, x, spec.crop, spec.stride, spec.num_classes, spec.batch_size)
        pred = predict_at(logits.float(), (int(y.shape[0]), int(y.shape[1])))
        meter.add(pred, y)
        if j in shown:
            rows.append(_figure_row(x, y, pred, spec))
    return meter.reduce(), rows
