"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Per-batch means would weight small images like large ones and make mIoU depend on the batch
size; summing a ``K x K`` confusion matrix over every valid pixel of the split (all-reduced
over DDP ranks) and reading the metrics off it at the end does not.

- IoU of class c: ``TP / (TP + FP + FN)``, i.e. ``C[c,c] / (row_c + col_c - C[c,c])``;
- mIoU: the mean over classes whose union is non-zero. A class absent from both the ground
  truth and the predictions of the split has no IoU (``nan``, ``null`` in JSON) and is left
  out of the mean (as mmsegmentation does): it was neither to be found nor wrongly found.
  A class present in the ground truth but never predicted counts with IoU 0, and so does a
  class predicted but absent from the ground truth;
- pixel accuracy: ``trace(C) / sum(C)`` over valid pixels.

Pixels whose label is the ignore id are not counted anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimpt.engine import distributed as D


def confusion_matrix(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """``[K, K]`` int64 counts, rows = ground truth, columns = prediction.

    Args:
        pred: predicted class ids, any shape.
        label: ground-truth ids of the same shape; ``ignore_index`` pixels are skipped.
    """
    valid = label != ignore_index
    idx = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


class ConfusionMeter:
    """Accumulates ``confusion_matrix`` over batches; ``reduce`` sums it over DDP ranks."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def add(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Count one batch (``pred`` and ``label`` of equal shape, on the meter's device)."""
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def reduce(self) -> torch.Tensor:
        """The matrix summed over every rank (in place; a no-op when running alone)."""
        return D.all_reduce_sum(self.matrix)


def iou_per_class(matrix: torch.Tensor) -> list[float]:
    """IoU of each class from a confusion matrix; ``nan`` for a class with an empty union."""
    m = matrix.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    return [float(t / u) if u > 0 else math.nan for t, u in zip(tp, union, strict=True)]


@dataclass
class SegScores:
    """Metrics of one split, in percent: ``miou``, ``pixel_acc``, ``iou`` per class (nan:
    the class is absent from both ground truth and prediction)."""

    miou: float
    pixel_acc: float
    iou: list[float]


def seg_scores(matrix: torch.Tensor) -> SegScores:
    """``SegScores`` of a confusion matrix (module docstring for the definitions)."""
    ious = [100.0 * v for v in iou_per_class(matrix)]
    present = [v for v in ious if not math.isnan(v)]
    total = float(matrix.sum())
    return SegScores(
        miou=sum(present) / len(present) if present else math.nan,
        pixel_acc=100.0 * float(matrix.diag().sum()) / total if total else math.nan,
        iou=ious,
    )
