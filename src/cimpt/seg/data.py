"""Segmentation folders: ``SPLIT/images/NAME.jpg|png`` paired with ``SPLIT/labels/NAME.png``.

A label file is a single-channel PNG (mode ``L`` or ``P``; 16-bit ``I;16`` is accepted for
many classes) whose pixel values are class ids ``0 .. num_classes - 1`` or the ignore id.
Every pair is checked before training (``check_pair``): a missing label file, an RGB label,
a label whose size differs from its image and a class id out of range each stop the command
with one ``error:`` line naming the file. The check decodes every label once (CamVid's 468
training and validation labels: well under a second), because a bad value found inside a
DataLoader worker half-way through a run would surface as a multi-line worker traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cimpt.data.folder import scan_images
from cimpt.data.images import to_rgb
from cimpt.errors import CimptError

#: Label modes holding one class id per pixel (``P``: palette indices, as in Pascal VOC).
LABEL_MODES = ("L", "P", "I", "I;16")

# (image [3,H,W] float, label [H,W] long) from (RGB image, label array [H,W])
PairTransform = Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SegPair:
    """One image file and its label file."""

    image: Path
    label: Path


def scan_split(root: str | Path, key: str) -> list[SegPair]:
    """Every image under ``root/images`` with its label ``root/labels/<same stem>.png``.

    Raises ``CimptError`` (naming ``key`` and the path) for a missing folder, an empty one,
    or an image without a label file.
    """
    root = Path(root).expanduser()
    images, labels = root / "images", root / "labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise CimptError(
                f"{key}: {folder} is not a folder (a segmentation split is "
                "SPLIT/images/NAME.jpg|png with SPLIT/labels/NAME.png)"
            )
    pairs = []
    for rel in scan_images(images):
        label = (labels / rel).with_suffix(".png")
        if not label.is_file():
            raise CimptError(f"{key}: {images / rel} has no label file {label}")
        pairs.append(SegPair(images / rel, label))
    if not pairs:
        raise CimptError(f"{key}: no images under {images}")
    return pairs


def _open(path: Path) -> Image.Image:
    """Open an image lazily (header only); a file PIL cannot read is an error naming it."""
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise CimptError(f"cannot read {path} ({exc})") from None


def read_label(path: Path) -> np.ndarray:
    """The class-id array ``[H, W]`` of a label file (int64)."""
    with _open(path) as img:
        if img.mode not in LABEL_MODES:
            kind = "an RGB" if img.mode.startswith("RGB") else f"a mode-{img.mode}"
            raise CimptError(
                f"{path}: {kind} label file; labels must be single-channel PNGs of class ids "
                "(mode L or P), so convert a colour-coded label to ids first"
            )
        try:
            return np.asarray(img, dtype=np.int64)
        except OSError as exc:  # truncated file: the header was fine, the pixels are not
            raise CimptError(f"cannot read {path} ({exc})") from None


def check_pair(pair: SegPair, num_classes: int, ignore_index: int) -> None:
    """Raise ``CimptError`` naming the file unless ``pair`` is a usable image and label."""
    with _open(pair.image) as img:
        size = img.size
    label = read_label(pair.label)
    if (label.shape[1], label.shape[0]) != size:
        raise CimptError(
            f"{pair.label}: label is {label.shape[1]}x{label.shape[0]} but its image "
            f"{pair.image} is {size[0]}x{size[1]}"
        )
    bad = label[(label >= num_classes) & (label != ignore_index)]
    if bad.size or (label < 0).any():
        value = int(bad.max()) if bad.size else int(label.min())
        raise CimptError(
            f"{pair.label}: class id {value} is outside 0..{num_classes - 1} "
            f"(segment.num_classes={num_classes}) and is not segment.ignore_index={ignore_index}"
        )


class SegFolder(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Checked image/label pairs through a joint ``transform``.

    Item ``i`` is ``(x [3, H, W] float, y [H, W] long)``; the sizes depend on the transform.
    """

    def __init__(self, pairs: list[SegPair], transform: PairTransform) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[i]
        with _open(pair.image) as img:
            rgb = to_rgb(img)
            rgb.load()
        return self.transform(rgb, read_label(pair.label))


def build_split(
    root: str | Path, key: str, num_classes: int, ignore_index: int, transform: PairTransform
) -> SegFolder:
    """Scan and check every pair of one split (module docstring), then wrap them."""
    pairs = scan_split(root, key)
    for pair in pairs:
        check_pair(pair, num_classes, ignore_index)
    return SegFolder(pairs, transform)


class SegCollate:
    """Training samples of one crop size -> ``{"x": [B,3,S,S], "label": [B,S,S] long}``."""

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        return {
            "x": torch.stack([x for x, _ in samples]),
            "label": torch.stack([y for _, y in samples]),
        }
