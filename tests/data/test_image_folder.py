"""ImageFolderDataset: labels, recursion, colour modes, broken files, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from image_files import png_bytes, solid

from cimpt.data import BrokenImageWarning, ImageCollate, ImageFolderDataset
from cimpt.errors import CimptError


def _items(ds: ImageFolderDataset) -> dict[str, tuple[np.ndarray, int] | None]:
    out: dict[str, tuple[np.ndarray, int] | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenImageWarning)
        for i, rel in enumerate(ds.files):
            item = ds[i]
            out[rel.as_posix()] = None if item is None else (np.asarray(item[0]), item[1])
    return out


def test_finds_images_recursively_with_labels(awkward_folder):
    root, cases = awkward_folder
    ds = ImageFolderDataset(root, transform=None)
    expected = sorted(rel for rel, outcome in cases.items() if outcome != "ignored")
    assert [f.as_posix() for f in ds.files] == expected
    assert ds.classes == ["cat", "dog"]
    for rel, label in zip(ds.files, ds.labels, strict=True):
        assert label == ds.classes.index(rel.parts[0])


def test_every_colour_mode_becomes_rgb(awkward_folder):
    root, cases = awkward_folder
    items = _items(ImageFolderDataset(root))
    for rel, outcome in cases.items():
        if outcome == "ok":
            arr, _ = items[rel]
            assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8, rel
    assert (items["cat/rgb.png"][0] == (200, 10, 10)).all()
    assert (items["cat/gray.png"][0] == 77).all()
    # Fully transparent palette / RGBA pixels are composited onto white.
    assert (items["cat/palette_transparent.png"][0] == 255).all()
    assert (items["dog/rgba.png"][0] == 255).all()
    # CMYK (0, 255, 255, 0) is pure red.
    cmyk = items["dog/cmyk.jpg"][0].astype(int)
    assert cmyk[..., 0].min() > 230 and cmyk[..., 1:].max() < 25
    # 16-bit values are rescaled, not clipped: 65535 -> 255, 32896 -> 128.
    deep = items["dog/deep16.png"][0]
    assert (deep[:, 4:] == 255).all() and (deep[:, :4] == 128).all()


def test_broken_files_return_none_and_warn_once(awkward_folder):
    root, cases = awkward_folder
    ds = ImageFolderDataset(root)
    broken = [i for i, rel in enumerate(ds.files) if cases[rel.as_posix()] == "broken"]
    assert len(broken) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # repeated reads of the same file warn only the first time
            for i in broken:
                assert ds[i] is None
    msgs = [str(w.message) for w in caught if issubclass(w.category, BrokenImageWarning)]
    assert len(msgs) == 2
    assert any("truncated.jpg" in m for m in msgs) and any("not_an_image.jpg" in m for m in msgs)


def test_collate_drops_and_counts_broken(awkward_folder):
    root, _ = awkward_folder

    def tensor(img):
        import torch

        return torch.from_numpy(np.array(img.resize((4, 4)))).permute(2, 0, 1).float()

    ds = ImageFolderDataset(root, transform=tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenImageWarning)
        batch = ImageCollate()([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 2
    assert batch["x"].shape == (len(ds) - 2, 3, 4, 4)
    assert batch["label"].tolist() == [lab for i, lab in enumerate(ds.labels) if ds[i] is not None]


def test_images_in_root_mean_unlabelled(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_bytes(solid((1, 1, 1))))
    (tmp_path / "top.png").write_bytes(png_bytes(solid((2, 2, 2))))
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == [] and ds.labels == [-1, -1]


def test_max_images_keeps_sorted_prefix_and_full_class_list(tmp_path: Path):
    for cls in ("b", "a", "c"):
        for k in range(3):
            (tmp_path / cls).mkdir(exist_ok=True)
            (tmp_path / cls / f"{k}.png").write_bytes(png_bytes(solid((k, k, k))))
    ds = ImageFolderDataset(tmp_path, max_images=4)
    assert [f.as_posix() for f in ds.files] == ["a/0.png", "a/1.png", "a/2.png", "b/0.png"]
    assert ds.classes == ["a", "b", "c"] and ds.labels == [0, 0, 0, 1]


def test_empty_and_missing_folders_are_clear_errors(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(CimptError, match=r"data.path: no images found under .*empty.*\.jpg"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(CimptError, match=r"data.path: .*nowhere does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    with pytest.raises(CimptError, match=r"data.val_path"):
        ImageFolderDataset(tmp_path / "nowhere", key="data.val_path")
