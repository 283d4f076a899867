"""Real photographs that ship inside an installed wheel: the offline default data set.

``cimpt demo`` and any run with an empty ``data.path`` must work on a machine with no network
and no data set on disk. scikit-image (a dependency) installs a handful of public-domain and
CC0 test photographs as plain files in ``skimage/data/`` (the larger ones in its registry are
fetched on demand with ``pooch``; those are not used here). The files are located with
``importlib`` and decoded with PIL, so nothing is ever downloaded and ``skimage`` itself is not
even imported.

The set keeps natural photographs only: the synthetic images (``color``, ``chessboard_*``,
``logo``, ``phantom``), text scans and binary silhouettes are left out because they would teach
a tokenizer flat colours and hard edges that natural images lack. Grayscale photographs are
kept and converted to RGB (three equal channels), which adds texture variety (grass, gravel,
brick, the moon).

Each sample is a random square crop (a fresh view per index, seeded by ``(seed, index)`` so an
epoch is deterministic given the seed), resized to ``size`` and returned as a PIL image,
label -1. The downstream transform then applies its own random-resized crop.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from cimpt.data.images import decode_rgb
from cimpt.errors import CimptError

# Colour photographs first, then grayscale ones (converted to RGB on load).
BUNDLED_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)

# Crop side as a fraction of the photo's shorter side: small enough for many distinct views,
# large enough that a crop still shows an object part rather than a flat patch.
_MIN_SIDE, _MAX_SIDE = 0.25, 1.0


def bundled_photo_dir() -> Path:
    """Folder holding scikit-image's installed sample photographs (no import, no network)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CimptError(
            "data.path is empty and the bundled photographs are unavailable: "
            "install scikit-image or set data.path to an image folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def bundled_photo_paths() -> list[Path]:
    """Paths of the bundled photographs; CimptError if any is missing."""
    root = bundled_photo_dir()
    paths = [root / name for name in BUNDLED_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CimptError(
            f"data.path is empty and bundled photographs are missing from {root}: "
            f"{', '.join(missing)}; reinstall scikit-image or set data.path to an image folder"
        )
    return paths


class BundledPhotos(Dataset):
    """``num_samples`` random square crops of the bundled photographs, as RGB PIL images.

    ``__getitem__(i)`` -> ``(transform(crop), -1)`` where ``crop`` is ``size x size``.
    """

    def __init__(
        self,
        num_samples: int = 2048,
        transform: Callable[[Any], Any] | None = None,
        size: int = 64,
        seed: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise CimptError(f"data.bundled_samples: must be positive, got {num_samples}")
        self.paths = bundled_photo_paths()
        self.num_samples = num_samples
        self.transform = transform
        self.size = size
        self.seed = seed
        self.classes: list[str] = []  # unlabelled
        self._photos: list[Image.Image] | None = None  # decoded lazily, once per process

    def photos(self) -> list[Image.Image]:
        if self._photos is None:
            self._photos = [decode_rgb(p) for p in self.paths]
        return self._photos

    def __len__(self) -> int:
        return self.num_samples

    def crop(self, i: int) -> Image.Image:
        """The deterministic crop of index ``i``: photo, side and position from ``(seed, i)``."""
        rng = random.Random(f"cimpt-bundled/{self.seed}/{i}")
        photo = rng.choice(self.photos())
        w, h = photo.size
        side = max(1, round(rng.uniform(_MIN_SIDE, _MAX_SIDE) * min(w, h)))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        box = (left, top, left + side, top + side)
        return photo.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        img = self.crop(i)
        return (self.transform(img) if self.transform is not None else img), -1
