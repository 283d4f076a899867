"""TarShardDataset: shard patterns, exactly-once splitting over ranks x workers, broken data."""

from __future__ import annotations

import io
import tarfile
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from image_files import jpeg_bytes, png_bytes, solid

import cimpt.data.tar_shards as tar_shards
from cimpt.data import BrokenImageWarning, ImageCollate, TarShardDataset, expand_shards
from cimpt.errors import CimptError


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, n_shards: int, per_shard: int) -> list[int]:
    """Shard s holds samples with labels s * 100 + k; the pixel value encodes the label too."""
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for k in range(per_shard):
                label = s * 100 + k
                img = solid((label % 256, label // 256, 7))
                # Alternate formats; png is lossless so the label can be read back from pixels.
                if k % 2:
                    _add(tar, f"s{s}/{k:04d}.png", png_bytes(img))
                else:
                    _add(tar, f"s{s}/{k:04d}.jpg", jpeg_bytes(img))
                _add(tar, f"s{s}/{k:04d}.cls", str(label).encode())
                labels.append(label)
    return labels


def _labels(ds: TarShardDataset) -> list[int]:
    return [item[1] for item in ds if item is not None]


def _labels_as_worker(ds: TarShardDataset, worker: int, workers: int, monkeypatch) -> list[int]:
    info = SimpleNamespace(id=worker, num_workers=workers)
    monkeypatch.setattr(tar_shards, "get_worker_info", lambda: info)
    try:
        return _labels(ds)
    finally:
        monkeypatch.setattr(tar_shards, "get_worker_info", lambda: None)


def test_shard_patterns(tmp_path: Path):
    write_shards(tmp_path / "shards", 4, 1)
    d = tmp_path / "shards"
    names = [str(d / f"shard-{i:06d}.tar") for i in range(4)]
    assert expand_shards(str(d)) == names
    assert expand_shards(str(d / "shard-*.tar")) == names
    assert expand_shards(str(d / "shard-{000001..000003}.tar")) == names[1:]
    assert expand_shards(str(d / "shard-00000{0,2}.tar")) == [names[0], names[2]]
    assert expand_shards(names[3]) == [names[3]]
    with pytest.raises(CimptError, match=r"shard .*shard-000008.tar does not exist"):
        expand_shards(str(d / "shard-{000008..000009}.tar"))
    with pytest.raises(CimptError, match=r"no .tar shards"):
        expand_shards(str(tmp_path / "nothing-*.tar"))


def test_single_stream_reads_every_sample_once_with_labels(tmp_path: Path):
    labels = write_shards(tmp_path, 3, 5)
    ds = TarShardDataset(str(tmp_path), shuffle=False)
    items = [x for x in ds if x is not None]
    assert [lab for _, lab in items] == labels
    for img, lab in items:
        arr = np.asarray(img)
        assert img.mode == "RGB" and abs(int(arr[0, 0, 0]) - lab % 256) <= 3


@pytest.mark.parametrize("n_shards", [8, 3])  # >= streams (shard split), < streams (sample split)
def test_ranks_and_workers_see_each_sample_once(tmp_path: Path, monkeypatch, n_shards: int):
    labels = write_shards(tmp_path, n_shards, 3)
    seen: Counter[int] = Counter()
    per_stream = []
    for rank in range(2):
        ds = TarShardDataset(str(tmp_path), seed=5, buffer_size=4, rank=rank, world=2)
        ds.set_epoch(1)
        for worker in range(2):
            got = _labels_as_worker(ds, worker, 2, monkeypatch)
            per_stream.append(got)
            ds.set_epoch(1)
            seen.update(got)
    assert sorted(seen) == sorted(labels) and set(seen.values()) == {1}
    assert all(per_stream)  # every stream got work


def test_shuffle_depends_on_seed_and_epoch_not_on_content(tmp_path: Path):
    labels = write_shards(tmp_path, 6, 4)
    ds = TarShardDataset(str(tmp_path), seed=0, buffer_size=3)
    e0 = _labels(ds)  # first iteration: epoch 0
    e1 = _labels(ds)  # a second iteration on the same copy advances to epoch 1
    ds.set_epoch(0)
    again = _labels(ds)
    assert sorted(e0) == sorted(e1) == sorted(labels)
    assert e0 == again and e0 != e1 and e0 != labels


def test_max_images_is_split_over_streams(tmp_path: Path, monkeypatch):
    write_shards(tmp_path, 4, 5)
    ds = TarShardDataset(str(tmp_path), max_images=6, shuffle=False)
    assert len(_labels(ds)) == 6
    per_worker = [len(_labels_as_worker(ds, w, 2, monkeypatch)) for w in range(2)]
    assert per_worker == [3, 3]


def test_broken_members_and_truncated_shards_are_skipped_and_counted(tmp_path: Path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        _add(tar, "good.png", png_bytes(solid((1, 2, 3))))
        _add(tar, "good.cls", b"4")
        _add(tar, "nolabel.png", png_bytes(solid((1, 2, 3))))
        _add(tar, "bad.jpg", b"not a jpeg")
        _add(tar, "bad.cls", b"1")
        _add(tar, "badlabel.png", png_bytes(solid((1, 2, 3))))
        _add(tar, "badlabel.cls", b"cat")
        _add(tar, "onlylabel.cls", b"2")
    full = tmp_path / "b.tar"
    with tarfile.open(full, "w") as tar:
        for k in range(4):
            _add(tar, f"{k}.png", png_bytes(solid((k, k, k), size=32)))
    with tarfile.open(full) as tar:
        third = tar.getmembers()[2]
    cut = third.offset_data + third.size // 2  # truncated in the middle of member "2.png"
    full.write_bytes(full.read_bytes()[:cut])
    ds = TarShardDataset(str(tmp_path), shuffle=False, transform=lambda im: np.zeros(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(ds)
    good = [x for x in items if x is not None]
    # a.tar: "good" and "nolabel"; b.tar: the two samples before the cut.
    assert [lab for _, lab in good] == [4, -1, -1, -1]
    nones = sum(x is None for x in items)
    assert nones == 4  # bad image, bad label, label without image, truncated shard b
    assert sum(issubclass(w.category, BrokenImageWarning) for w in caught) == 4
    batch = ImageCollate()([None if x is None else (torch.zeros(3, 2, 2), x[1]) for x in items])
    assert batch["skipped"] == 4 and batch["x"].shape[0] == len(good)
