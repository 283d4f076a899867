"""ResumableSampler: deterministic epochs, exact mid-epoch resume, disjoint rank shards."""

from __future__ import annotations

import pytest
from torch.utils.data import IterableDataset

from cimpt.data import ImageCollate, ResumableSampler, build_loader


def test_epoch_order_is_a_seeded_permutation():
    s = ResumableSampler(50, shuffle=True, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1
    assert list(ResumableSampler(50, shuffle=True, seed=3)) == e0
    assert list(ResumableSampler(50, shuffle=False)) == list(range(50))


@pytest.mark.parametrize("start", [0, 1, 7, 24, 25])
def test_set_start_resumes_with_the_tail_of_the_epoch(start: int):
    s = ResumableSampler(100, shuffle=True, seed=0, rank=1, world=4)
    s.set_epoch(5)
    full = list(s)
    s.set_start(start)
    assert list(s) == full[start:] and len(s) == len(full) - start
    s.set_epoch(6)  # a new epoch starts from its beginning again
    assert len(list(s)) == 25


@pytest.mark.parametrize(
    ("n", "world", "drop_last"), [(100, 4, True), (103, 4, True), (103, 4, False), (7, 3, False)]
)
def test_rank_shards_are_disjoint_and_cover(n: int, world: int, drop_last: bool):
    shards = []
    for rank in range(world):
        s = ResumableSampler(n, shuffle=True, seed=9, rank=rank, world=world, drop_last=drop_last)
        s.set_epoch(2)
        shards.append(list(s))
    sizes = {len(x) for x in shards}
    assert len(sizes) == 1  # equal shares keep DDP ranks in step
    union = [i for x in shards for i in x]
    if drop_last:
        assert len(set(union)) == len(union) == (n // world) * world
    else:
        assert set(union) == set(range(n)) and len(union) == -(-n // world) * world
        assert len(union) - len(set(union)) == len(union) - n  # only the padding repeats


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match=r"rank"):
        ResumableSampler(10, rank=2, world=2)


class Stream(IterableDataset):
    def __iter__(self):
        import torch

        for i in range(5):
            yield torch.zeros(3, 2, 2), i


def test_loader_gives_iterable_datasets_no_sampler():
    loader = build_loader(Stream(), 2, 0, ImageCollate(), drop_last=False)
    assert [b["label"].tolist() for b in loader] == [[0, 1], [2, 3], [4]]
