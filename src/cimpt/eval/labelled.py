"""Labelled train/val data for fine-tuning and linear probing, checked before any work.

``data.path`` must have labels (class sub-folders, or cifar10/cifar100), ``data.val_path``
the same classes; ``data.label_fraction`` keeps a class-balanced, seeded share of the
training labels (``cimpt.data.class_balanced_subset``). Every failure is one line naming the
key, raised before the run directory is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from cimpt.config import RootConfig
from cimpt.data import build_dataset, dataset_classes, dataset_labels, labelled_subset
from cimpt.errors import CimptError


@dataclass
class LabelledData:
    """``train`` (after the label fraction), ``val``, the class names, and sizes."""

    train: Dataset[Any]
    val: Dataset[Any]
    classes: list[str]
    n_train_total: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def labelled_split(
    cfg: RootConfig, split: str, transform: Callable[[Any], Any] | None
) -> tuple[Dataset[Any], list[str]]:
    """The ``split`` dataset and its class names; an error unless every image has a label."""
    key = "data.path" if split == "train" else "data.val_path"
    where = (cfg.data.path if split == "train" else cfg.data.val_path) or "the bundled photos"
    ds = build_dataset(cfg, split, transform)
    if isinstance(ds, IterableDataset):
        raise CimptError(
            f"{key}: {where} is streamed tar shards; evaluation needs an image "
            "folder with one sub-folder per class (or cifar10/cifar100)"
        )
    labels = dataset_labels(ds)
    classes = dataset_classes(ds)
    if not classes or any(v < 0 for v in labels):
        raise CimptError(
            f"{key}: {where} has no labels; evaluation needs one sub-folder per "
            "class (images directly in the folder count as unlabelled)"
        )
    return ds, classes


def build_labelled_data(
    cfg: RootConfig,
    train_transform: Callable[[Any], Any] | None,
    val_transform: Callable[[Any], Any] | None,
    label_fraction: float | None = None,
) -> LabelledData:
    """Train and val splits with the same classes; the train split cut to the label fraction."""
    train, classes = labelled_split(cfg, "train", train_transform)
    val, val_classes = labelled_split(cfg, "val", val_transform)
    if val_classes != classes:
        raise CimptError(
            f"data.val_path: its classes {val_classes[:5]}{'...' if len(val_classes) > 5 else ''}"
            f" differ from data.path's {classes[:5]}{'...' if len(classes) > 5 else ''}"
        )
    fraction = cfg.data.label_fraction if label_fraction is None else label_fraction
    n_total = len(train)  # type: ignore[arg-type]
    train = labelled_subset(train, fraction, cfg.seed)
    return LabelledData(train, val, classes, n_total)
