"""mIoU, per-class IoU and pixel accuracy against a confusion matrix computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cimpt.seg.metrics import ConfusionMeter, confusion_matrix, iou_per_class, seg_scores

IGN = 9


def test_miou_matches_a_hand_computed_confusion_matrix() -> None:
    # 4 classes; class 3 appears in neither ground truth nor prediction; 3 pixels ignored.
    gt = torch.tensor([[0, 0, 0, 1], [1, 1, 2, IGN], [IGN, 2, 0, IGN]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0], [3, 2, 2, 0]])
    # valid pairs (gt, pred): (0,0) (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,2) (0,2)
    # (the ignored pixels carry predictions 0, 3 and 0, which must not count)
    expected = torch.tensor([[2, 1, 1, 0], [0, 2, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    m = confusion_matrix(pred, gt, 4, IGN)
    assert torch.equal(m, expected)
    # IoU = TP / (TP + FP + FN), FN off-diagonal in the row, FP in the column:
    #   class 0: TP 2, FN (row) 2, FP (col) 0 -> 2/4
    #   class 1: TP 2, FN 1, FP 1 -> 2/4
    #   class 2: TP 2, FN 0, FP 2 -> 2/4
    #   class 3: no pixel in either -> excluded (nan)
    ious = iou_per_class(m)
    assert ious[:3] == pytest.approx([0.5, 0.5, 0.5])
    assert math.isnan(ious[3])
    scores = seg_scores(m)
    assert scores.miou == pytest.approx(50.0)  # mean over the 3 present classes only
    assert scores.pixel_acc == pytest.approx(100.0 * 6 / 9)  # ignored pixels not counted


def test_an_absent_but_predicted_class_counts_as_zero() -> None:
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 predicted once, never true
    scores = seg_scores(confusion_matrix(pred, gt, 3, 255))
    # class 0: 1/(1+0+1) = 0.5; class 1: 2/2 = 1; class 2: 0/(0+1+0) = 0
    assert scores.iou == pytest.approx([50.0, 100.0, 0.0])
    assert scores.miou == pytest.approx(50.0)


def test_accumulating_batches_equals_one_matrix_over_the_split() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 6, (5, 7, 9), generator=g)  # 5 = ignore
    pred = torch.randint(0, 5, (5, 7, 9), generator=g)
    meter = ConfusionMeter(5, 5, torch.device("cpu"))
    for i in range(5):
        meter.add(pred[i], gt[i])
    whole = confusion_matrix(pred, gt, 5, 5)
    assert torch.equal(meter.reduce(), whole)
    # not the mean of per-image mIoUs
    per_image = [seg_scores(confusion_matrix(pred[i], gt[i], 5, 5)).miou for i in range(5)]
    assert seg_scores(whole).miou != pytest.approx(sum(per_image) / 5)
