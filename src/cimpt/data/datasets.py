"""Choosing and building the data set of a run from the config (docs/METHOD.md, step 1).

``build_dataset(cfg, split, transform)`` turns ``data.source`` / ``data.path`` (train) or
``data.val_path`` (val) into a dataset whose items are ``(transform(rgb_pil_image), label)``
(label -1 when unlabelled) or ``None`` for an unreadable file:

- ``bundled``: the offline photographs of ``cimpt.data.bundled`` (the default: empty path);
- ``folder``: a recursive image folder, class sub-folders give labels;
- ``tar``: WebDataset-layout tar shards, streamed (an ``IterableDataset``);
- ``cifar10`` / ``cifar100``: torchvision's data sets, kept in ``data.cache_dir``.

``class_balanced_subset`` / ``labelled_subset`` implement ``data.label_fraction`` for
fine-tuning with few labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, Subset

from cimpt.config import RootConfig, tokenizer_resolution
from cimpt.data.bundled import BundledPhotos
from cimpt.data.folder import ImageFolderDataset
from cimpt.data.tar_shards import TarShardDataset
from cimpt.errors import CimptError

TORCHVISION_SETS = ("cifar10", "cifar100")

# Held-out bundled crops use another seed stream than the training crops. The photographs
# are the same, so this "val" split is only a smoke test, not a real held-out set.
_BUNDLED_VAL_SEED_OFFSET = 1_000_003


def _looks_like_tar(path: str) -> bool:
    if path.endswith(".tar") or "{" in path or "*" in path:
        return True
    p = Path(path).expanduser()
    if p.is_dir():
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
        return bool(entries) and all(e.is_file() and e.suffix == ".tar" for e in entries)
    return False


def resolve_source(source: str, path: str, key: str = "data.path") -> str:
    """``data.source`` ``auto`` -> the concrete source for ``path`` (see module docstring)."""
    if source != "auto":
        return source
    if not path:
        return "bundled"
    if path.lower() in TORCHVISION_SETS:
        return path.lower()
    if _looks_like_tar(path):
        return "tar"
    if Path(path).expanduser().is_dir():
        return "folder"
    raise CimptError(f"{key}: {path} does not exist")


def build_torchvision_cifar(
    name: str, train: bool, cache_dir: str, download: bool, transform: Callable[[Any], Any] | None
) -> Dataset:
    """torchvision CIFAR-10/100 in ``cache_dir``; CimptError saying how to provide it offline.

    torchvision unpickles the CIFAR batch files, but only after checking each file's MD5 against
    the official release, so a file that is not the official one is never unpickled.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = Path(cache_dir).expanduser()
    archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    try:
        return cls(root=str(root), train=train, download=download, transform=transform)
    except (OSError, RuntimeError) as exc:
        what = "download failed" if download else "not found and data.download=false"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CimptError(
            f"data.path: cannot load {name.upper()} ({what}: {reason}); when offline, put "
            f"{archive} (or its extracted folder) into {root}, or set data.path to an image "
            "folder"
        ) from None


def _limit(dataset: Dataset, max_images: int) -> Dataset:
    if max_images > 0 and max_images < len(dataset):  # type: ignore[arg-type]
        return Subset(dataset, range(max_images))
    return dataset


def build_dataset(
    cfg: RootConfig, split: str, transform: Callable[[Any], Any] | None
) -> Dataset | IterableDataset:
    """The dataset of ``split`` ("train" uses data.path, "val" uses data.val_path).

    A val split with an empty ``data.val_path`` is the test split of a CIFAR ``data.path``, or
    held-out-seed bundled crops when the training data is bundled; otherwise it is an error.
    """
    if split not in ("train", "val"):
        raise CimptError(f"split must be 'train' or 'val', not '{split}'")
    d = cfg.data
    key = "data.path" if split == "train" else "data.val_path"
    path = d.path if split == "train" else d.val_path
    source: str = d.source
    if split == "val" and not path:
        train_source = resolve_source(source, d.path)
        if train_source in TORCHVISION_SETS or train_source == "bundled":
            source = train_source
        else:
            raise CimptError("data.val_path: empty; set it to a labelled image folder")
    source = resolve_source(source, path, key)
    max_images = d.max_images
    if source == "bundled":
        seed = cfg.seed + (_BUNDLED_VAL_SEED_OFFSET if split == "val" else 0)
        n = d.bundled_samples
        n = min(n, max_images) if max_images > 0 else n
        # Crops are stored at twice the largest view so the random-resized crop downstream
        # still has real detail to zoom into.
        size = max(64, 2 * max(d.img_size, tokenizer_resolution(cfg)))
        return BundledPhotos(n, transform, size=size, seed=seed)
    if source in TORCHVISION_SETS:
        ds = build_torchvision_cifar(source, split == "train", d.cache_dir, d.download, transform)
        return _limit(ds, max_images)
    if source == "folder":
        return ImageFolderDataset(path, transform, max_images=max_images, key=key)
    if source == "tar":
        if not path:
            raise CimptError(f"{key}: empty, but data.source=tar needs shards")
        return TarShardDataset(
            path,
            transform,
            shuffle=split == "train",
            seed=cfg.seed,
            max_images=max_images,
            key=key,
        )
    raise CimptError(f"data.source: unknown source '{source}'")


def dataset_labels(dataset: Dataset) -> list[int]:
    """Labels of a map-style dataset without decoding images (-1 = unlabelled)."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return [int(v) for v in labels]
    if isinstance(dataset, BundledPhotos):
        return [-1] * len(dataset)
    raise CimptError(f"cannot read labels of a {type(dataset).__name__} without decoding it")


def dataset_classes(dataset: Dataset) -> list[str]:
    """Class names of a dataset (empty when unlabelled)."""
    if isinstance(dataset, Subset):
        return dataset_classes(dataset.dataset)
    return list(getattr(dataset, "classes", []) or [])


def class_balanced_subset(
    labels: Sequence[int], fraction: float, seed: int, classes: Sequence[str] | None = None
) -> list[int]:
    """Indices keeping ``round(fraction * n_c)`` random examples of every class c.

    Every class keeps at least one example: a fraction so small that a class would keep none
    is an error naming that class (silently dropping a class would change the task).
    Returns sorted indices; ``fraction == 1`` returns every index.
    """
    if not 0.0 < fraction <= 1.0:
        raise CimptError(f"data.label_fraction: must be in (0, 1], got {fraction}")
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    if lab.numel() and int(lab.min()) < 0:
        raise CimptError(
            "data.label_fraction: needs labelled data (class sub-folders), "
            "but the data set has unlabelled images"
        )
    if fraction == 1.0:
        return list(range(len(lab)))
    g = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for c in torch.unique(lab).tolist():
        idx = torch.nonzero(lab == c).flatten()
        k = round(fraction * len(idx))
        if k == 0:
            name = f"'{classes[c]}'" if classes is not None and c < len(classes) else str(c)
            raise CimptError(
                f"data.label_fraction: {fraction} leaves class {name} ({len(idx)} images) "
                "with no labelled example; use a larger fraction"
            )
        keep.extend(idx[torch.randperm(len(idx), generator=g)[:k]].tolist())
    return sorted(keep)


def labelled_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """``data.label_fraction`` applied to a map-style dataset (the dataset itself when 1)."""
    if fraction == 1.0:
        return dataset
    labels = dataset_labels(dataset)
    return Subset(dataset, class_balanced_subset(labels, fraction, seed, dataset_classes(dataset)))
