"""build_dataset source selection, CIFAR offline errors, label-fraction subsets."""

from __future__ import annotations

import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from image_files import png_bytes, solid
from torch.utils.data import Subset

from cimpt.config import load_config
from cimpt.data import (
    BundledPhotos,
    ImageFolderDataset,
    TarShardDataset,
    build_dataset,
    class_balanced_subset,
    dataset_labels,
    labelled_subset,
    resolve_source,
)
from cimpt.errors import CimptError


def labelled_folder(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (root / cls / f"{k:03d}.png").write_bytes(png_bytes(solid((k, 0, 0))))
    return root


def test_resolve_source_rules(tmp_path: Path):
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "a.tar", "w"):
        pass
    (tmp_path / "imgs").mkdir()
    assert resolve_source("auto", "") == "bundled"
    assert resolve_source("auto", "CIFAR10") == "cifar10"
    assert resolve_source("auto", "cifar100") == "cifar100"
    assert resolve_source("auto", "x/shard-{000..009}.tar") == "tar"
    assert resolve_source("auto", "x/*.tar") == "tar"
    assert resolve_source("auto", str(tmp_path / "shards")) == "tar"
    assert resolve_source("auto", str(tmp_path / "imgs")) == "folder"
    assert resolve_source("folder", "whatever") == "folder"
    with pytest.raises(CimptError, match=r"data.path: .*missing does not exist"):
        resolve_source("auto", str(tmp_path / "missing"))


def test_build_each_source(tmp_path: Path):
    cfg = load_config(overrides=["data.bundled_samples=10"])
    assert isinstance(build_dataset(cfg, "train", None), BundledPhotos)
    val = build_dataset(cfg, "val", None)
    assert isinstance(val, BundledPhotos) and val.seed != 0
    folder = labelled_folder(tmp_path / "f", {"a": 3, "b": 2})
    cfg = load_config(overrides=[f"data.path={folder}", "data.max_images=4"])
    ds = build_dataset(cfg, "train", None)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 4
    with pytest.raises(CimptError, match=r"data.val_path: empty"):
        build_dataset(cfg, "val", None)
    cfg = load_config(overrides=[f"data.path={folder}", f"data.val_path={tmp_path / 'nope'}"])
    with pytest.raises(CimptError, match=r"data.val_path: .*nope does not exist"):
        build_dataset(cfg, "val", None)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(folder / "a" / "000.png", arcname="000.png")
    cfg = load_config(overrides=[f"data.path={tmp_path / 's.tar'}"])
    ds = build_dataset(cfg, "train", None)
    assert isinstance(ds, TarShardDataset) and [lab for _, lab in ds] == [-1]


def test_cifar_offline_gives_a_one_line_hint(tmp_path: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cfg = load_config(overrides=["data.path=cifar10", f"data.cache_dir={tmp_path}"])
    with pytest.raises(CimptError) as err:
        build_dataset(cfg, "train", None)
    msg = str(err.value)
    assert "\n" not in msg and "CIFAR10" in msg and "download failed" in msg
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and "image folder" in msg
    cfg = load_config(
        overrides=["data.source=cifar100", "data.download=false", f"data.cache_dir={tmp_path}"]
    )
    with pytest.raises(CimptError, match=r"CIFAR100 .*not found.*cifar-100-python.tar.gz"):
        build_dataset(cfg, "val", None)


def test_class_balanced_subset_keeps_every_class():
    labels = [0] * 50 + [1] * 20 + [2] * 10
    idx = class_balanced_subset(labels, 0.1, seed=0)
    assert Counter(labels[i] for i in idx) == {0: 5, 1: 2, 2: 1}
    assert idx == sorted(set(idx))
    assert class_balanced_subset(labels, 0.1, seed=0) == idx
    assert class_balanced_subset(labels, 0.1, seed=1) != idx
    assert class_balanced_subset(labels, 1.0, seed=0) == list(range(80))
    with pytest.raises(CimptError, match=r"class 'rare' .*3 images"):
        class_balanced_subset([0] * 100 + [1] * 3, 0.1, 0, classes=["common", "rare"])
    with pytest.raises(CimptError, match=r"unlabelled"):
        class_balanced_subset([-1, -1], 0.5, 0)


def test_labelled_subset_of_a_folder(tmp_path: Path):
    ds = ImageFolderDataset(labelled_folder(tmp_path, {"x": 10, "y": 4}))
    sub = labelled_subset(ds, 0.5, seed=0)
    assert isinstance(sub, Subset)
    assert Counter(dataset_labels(sub)) == {0: 5, 1: 2}
    assert labelled_subset(ds, 1.0, seed=0) is ds
