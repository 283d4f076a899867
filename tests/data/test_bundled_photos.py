"""BundledPhotos: real photographs from the installed scikit-image wheel, no network at all."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest

from cimpt.data import BUNDLED_PHOTOS, BundledPhotos
from cimpt.data.bundled import bundled_photo_paths


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is forbidden in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_photos_are_plain_files_that_decode_offline(offline):
    paths = bundled_photo_paths()
    assert [p.name for p in paths] == list(BUNDLED_PHOTOS) and len(paths) >= 10
    ds = BundledPhotos(8, size=32, seed=0)
    photos = ds.photos()
    assert all(p.mode == "RGB" and min(p.size) >= 256 for p in photos)
    # The colour photographs really are in colour (channels differ), e.g. the astronaut.
    astro = np.asarray(photos[BUNDLED_PHOTOS.index("astronaut.png")]).astype(int)
    assert np.abs(astro[..., 0] - astro[..., 2]).mean() > 10


def test_crops_are_deterministic_per_index_and_seed(offline):
    a = BundledPhotos(32, size=24, seed=1)
    b = BundledPhotos(32, size=24, seed=1)
    c = BundledPhotos(32, size=24, seed=2)
    assert len(a) == 32
    img, label = a[5]
    assert label == -1 and img.size == (24, 24) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(b[5][0]))
    crops = [np.asarray(a[i][0]) for i in range(32)]
    assert len({c.tobytes() for c in crops}) == 32  # every index is a different view
    assert sum(np.array_equal(crops[i], np.asarray(c[i][0])) for i in range(32)) <= 2
    with pytest.raises(IndexError):
        a[32]


def test_transform_is_applied(offline):
    ds = BundledPhotos(4, transform=lambda im: np.asarray(im).shape, size=16)
    assert ds[0] == ((16, 16, 3), -1)
