"""A recursive image-folder dataset whose first-level sub-folders give the class labels.

This is ``data.path`` in its most common form (docs/DESIGN.md, "The stable interface": class
sub-folders give labels). Unlike ``torchvision.datasets.ImageFolder`` it also accepts images
lying directly in the root (an unlabelled collection, label -1) and it never crashes on an
unreadable file (see ``cimpt.data.images``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from cimpt.data.images import IMAGE_EXTENSIONS, BrokenFileReporter, load_rgb_or_none
from cimpt.errors import CimptError

UNLABELLED = -1


def scan_images(root: Path) -> list[Path]:
    """All image files under ``root``, recursively, as sorted relative paths.

    Hidden files and folders (names starting with '.') are skipped: they are editor and OS
    debris such as ``.ipynb_checkpoints`` or macOS ``._photo.jpg`` resource forks, which carry
    an image extension without being images. Symlinked folders are not followed, so a link
    cycle cannot make the scan endless.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root))
    # Sorting by the string form makes the order (and hence max_images) platform-independent.
    return sorted(found, key=lambda p: p.as_posix())


def _no_images_message(root: Path, key: str) -> str:
    return f"{key}: no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursively), with class labels from first-level sub-folders.

    Labels: when every image lies somewhere inside a first-level sub-folder of ``root``, the
    sorted sub-folder names are the classes (``.classes``) and an image's label is the index of
    the sub-folder it is under. If any image lies directly in ``root``, the collection counts as
    unlabelled: ``.classes`` is empty and every label is -1.

    ``max_images > 0`` keeps the first N files in sorted path order; the classes are still taken
    from the whole folder so label ids do not depend on N.

    ``__getitem__`` returns ``(transform(rgb_pil_image), label)``, or ``None`` for a file that
    cannot be decoded (warned once per file; the collate counts it as skipped).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        max_images: int = 0,
        key: str = "data.path",
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise CimptError(f"{key}: {self.root} does not exist")
        if not self.root.is_dir():
            raise CimptError(f"{key}: {self.root} is not a folder")
        files = scan_images(self.root)
        if not files:
            raise CimptError(_no_images_message(self.root, key))
        labelled = all(len(f.parts) >= 2 for f in files)
        self.classes: list[str] = sorted({f.parts[0] for f in files}) if labelled else []
        index = {name: i for i, name in enumerate(self.classes)}
        if max_images > 0:
            files = files[:max_images]
        self.files = files
        self.labels: list[int] = [index[f.parts[0]] if labelled else UNLABELLED for f in files]
        self.transform = transform
        self._reporter = BrokenFileReporter()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        path = self.root / self.files[i]
        img = load_rgb_or_none(path, str(path), self._reporter)
        if img is None:
            return None
        return (self.transform(img) if self.transform is not None else img), self.labels[i]
