"""Per-sample seeding: a sample depends only on (seed, epoch, index), never on call order,
and the caller's random stream is left as it was."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cimpt.data.seeded import SeededSamples, sample_seed


class _Noise(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(3)


def test_sample_depends_only_on_seed_epoch_index() -> None:
    ds = SeededSamples(_Noise(), seed=7)
    forward = [ds[k][0] for k in range(20)]  # epochs 0 and 1
    backward = [ds[k][0] for k in reversed(range(20))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(forward[3], forward[13])  # same index, next epoch: new draw
    assert ds[13][1] == sample_seed(7, 1, 3)
    assert not torch.equal(SeededSamples(_Noise(), seed=8)[3][0], forward[3])


def test_caller_stream_untouched() -> None:
    ds = SeededSamples(_Noise(), seed=0)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    ds[5]
    assert torch.equal(torch.rand(4), expected)


def test_seeds_are_distinct() -> None:
    seeds = {sample_seed(0, e, i) for e in range(5) for i in range(1000)}
    assert len(seeds) == 5000 and all(0 <= s < 2**63 for s in seeds)
