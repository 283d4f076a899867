"""Losses checked against hand computations (naive loops, explicit formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from cimpt.losses import (
    mlm_loss,
    respix_loss,
    revdet_loss,
    sliding_window_normalize,
    sliding_window_stats,
)


def _naive_window(x: torch.Tensor, k: int, eps: float) -> tuple[torch.Tensor, ...]:
    """Per-pixel loop; window rows [i - k//2, i - k//2 + k - 1] clipped to the image."""
    b, c, h, w = x.shape
    out, mean, std = torch.empty(b, c, h, w), torch.empty(b, c, h, w), torch.empty(b, c, h, w)
    for bi in range(b):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    r0, c0 = max(i - k // 2, 0), max(j - k // 2, 0)
                    r1, c1 = min(i - k // 2 + k, h), min(j - k // 2 + k, w)
                    vals = [float(x[bi, ci, r, s]) for r in range(r0, r1) for s in range(c0, c1)]
                    m = sum(vals) / len(vals)
                    v = sum((u - m) ** 2 for u in vals) / len(vals)
                    mean[bi, ci, i, j] = m
                    std[bi, ci, i, j] = math.sqrt(v + eps)
                    out[bi, ci, i, j] = (float(x[bi, ci, i, j]) - m) / math.sqrt(v + eps)
    return out, mean, std


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_sliding_window_normalize_matches_naive_loop(k: int) -> None:
    torch.manual_seed(k)
    x = torch.randn(2, 3, 7, 6) * 2 + 0.5  # non-square, odd and even sides
    eps = 1e-6
    want, want_mean, want_std = _naive_window(x, k, eps)
    got = sliding_window_normalize(x, k, eps)
    mean, std = sliding_window_stats(x, k, eps)
    assert got.shape == x.shape
    torch.testing.assert_close(mean, want_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, want_std, atol=1e-5, rtol=1e-5)
    if k == 1:
        # A 1x1 window has zero variance: the result is 0 everywhere (not NaN).
        assert torch.all(got.abs() < 1e-2)
    else:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_sliding_window_larger_than_image() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    got = sliding_window_normalize(x, 9)
    # Every window covers the whole image: plain per-image standardisation.
    want = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-6)
    torch.testing.assert_close(got, want)


def _ce_by_hand(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    b, g = logits.shape[:2]
    total, count = 0.0, 0
    for bi in range(b):
        for i in range(g):
            for j in range(g):
                if mask[bi, i, j]:
                    row = logits[bi, i, j].double()
                    lse = math.log(sum(math.exp(float(t)) for t in row))
                    total += lse - float(row[target[bi, i, j]])
                    count += 1
    return total / count


def test_mlm_loss_is_ce_on_masked_positions_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 5)
    target = torch.randint(0, 5, (2, 3, 3))
    mask = torch.rand(2, 3, 3) > 0.5
    mask[0, 0, 0] = True
    loss, acc = mlm_loss(logits, target, mask)
    assert loss.item() == pytest.approx(_ce_by_hand(logits, target, mask), rel=1e-5)
    correct = (logits.argmax(-1) == target)[mask].float()
    assert acc.item() == pytest.approx(correct.mean().item())

    # Changing logits at unmasked positions does not change the loss.
    other = logits.clone()
    other[~mask] = torch.randn_like(other[~mask]) * 10
    loss2, acc2 = mlm_loss(other, target, mask)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert acc2.item() == pytest.approx(acc.item())


def test_mlm_loss_gradient_only_on_masked_logits() -> None:
    logits = torch.randn(1, 2, 2, 4, requires_grad=True)
    mask = torch.tensor([[[True, False], [False, True]]])
    loss, _ = mlm_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), mask)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[~mask] == 0)
    assert torch.all(logits.grad[mask].abs().sum(-1) > 0)


def test_mlm_loss_empty_mask_is_zero() -> None:
    loss, acc = mlm_loss(
        torch.randn(1, 2, 2, 3),
        torch.zeros(1, 2, 2, dtype=torch.long),
        torch.zeros(1, 2, 2, dtype=torch.bool),
    )
    assert loss.item() == 0.0 and acc.item() == 0.0


def test_respix_loss_is_mse_over_every_pixel() -> None:
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    want = sum(float(d) ** 2 for d in (pred - target).flatten()) / pred.numel()
    assert respix_loss(pred, target).item() == pytest.approx(want, rel=1e-5)


def test_revdet_loss_by_hand() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    labels = torch.tensor([[[True, True], [False, False]]])
    loss, acc, pos = revdet_loss(logits, labels)
    terms = []
    for s, y in zip(logits.flatten().tolist(), labels.flatten().tolist(), strict=True):
        p = 1 / (1 + math.exp(-s))
        terms.append(-math.log(p) if y else -math.log(1 - p))
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    # predictions: 1, 0, 1, 0 vs labels 1, 1, 0, 0 -> 2 of 4 right
    assert acc.item() == pytest.approx(0.5)
    assert pos.item() == pytest.approx(0.5)
