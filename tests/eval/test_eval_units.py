"""Units of the evaluation package, each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cimpt.errors import CimptError
from cimpt.eval.accuracy import evaluate_classifier, topk_correct
from cimpt.eval.augment import FinetuneTransform, build_randaugment, posterize_at_least_one_bit
from cimpt.eval.knn import knn_predict


def test_topk_correct_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    labels = torch.randint(0, 7, (50,), generator=g)
    order = logits.argsort(dim=1, descending=True).tolist()
    for k in (1, 3, 5):
        expected = sum(int(labels[i]) in order[i][:k] for i in range(50))
        assert topk_correct(logits, labels, (k,)) == [expected]
    # k beyond the number of classes counts every row.
    assert topk_correct(logits[:, :3], labels.clamp(max=2), (5,)) == [50]


def test_knn_predict_matches_a_brute_force_vote() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 6))
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=40)
    query = rng.normal(size=(9, 6))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    k, t = 5, 0.07
    expected = np.zeros((9, 4))
    for q in range(9):
        sims = train @ query[q]
        for j in np.argsort(-sims)[:k]:
            expected[q, labels[j]] += np.exp(sims[j] / t)
    got = knn_predict(
        torch.tensor(train, dtype=torch.float32),
        torch.tensor(labels),
        torch.tensor(query, dtype=torch.float32),
        k,
        t,
        4,
        chunk=4,
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    # k larger than the memory bank uses every training image.
    assert knn_predict(
        torch.tensor(train, dtype=torch.float32),
        torch.tensor(labels),
        torch.tensor(query, dtype=torch.float32),
        500,
        t,
        4,
    ).shape == (9, 4)


def test_evaluate_classifier_matches_manual_counts() -> None:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(13, 3, 4, 4, generator=g)
    ys = torch.randint(0, 6, (13,), generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 6))
    data = [(xs[i], int(ys[i])) for i in range(13)]
    out = evaluate_classifier(model, data, batch_size=4, num_workers=0, device=torch.device("cpu"))
    with torch.no_grad():
        logits = model(xs)
    top1 = (logits.argmax(1) == ys).float().mean().item() * 100
    top5 = sum(int(ys[i]) in logits[i].topk(5).indices.tolist() for i in range(13)) / 13 * 100
    ce = torch.nn.functional.cross_entropy(logits, ys).item()
    assert out["val_top1"] == pytest.approx(top1)
    assert out["val_top5"] == pytest.approx(top5)
    assert out["val_loss"] == pytest.approx(ce, rel=1e-5)


def test_posterize_zero_bits_keeps_one_bit() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([gray] * 3, axis=-1))
    out = np.asarray(posterize_at_least_one_bit(img, 0))
    assert set(np.unique(out).tolist()) == {0, 128}  # 1 bit: the top bit only
    assert posterize_at_least_one_bit(img, 8) is img


def test_randaugment_survives_maximal_posterize() -> None:
    ra = build_randaugment("rand-m10-mstd0.5-inc1", 32, (0.5, 0.5, 0.5))
    poster = next(op for op in ra.ops if "Posterize" in op.name)
    poster.prob, poster.magnitude_std = 1.0, 0.0
    poster.magnitude = 10  # the increasing op reaches 0 bits here, which Pillow 13 rejects
    img = Image.new("RGB", (32, 32), (200, 100, 50))
    assert poster(img).size == (32, 32)


def test_bad_randaugment_string_is_a_clear_error() -> None:
    with pytest.raises(CimptError, match=r"finetune\.randaug"):
        build_randaugment("foo", 32, (0.5, 0.5, 0.5))


def test_finetune_transform_is_reproducible_under_a_torch_seed() -> None:
    tf = FinetuneTransform(
        16,
        (0.3, 1.0),
        (0.75, 1.33),
        0.5,
        "rand-m9-mstd0.5-inc1",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8))
    torch.manual_seed(5)
    a = tf(img)
    torch.manual_seed(5)
    b = tf(img)
    torch.manual_seed(6)
    c = tf(img)
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
