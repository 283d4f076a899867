"""Helpers writing tiny image files of every awkward kind (used by the data tests)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def solid(color: tuple[int, int, int], size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def write_awkward_images(root: Path) -> dict[str, str]:
    """Write one file per awkward case; return {relative path: expected outcome}.

    Outcomes: "ok" (decodes to RGB) or "broken" (must be skipped, not crash).
    """
    cases: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        cases[rel] = outcome

    put("cat/rgb.png", png_bytes(solid((200, 10, 10))), "ok")
    put("cat/photo.JPG", jpeg_bytes(solid((10, 200, 10))), "ok")  # upper-case extension
    put("cat/gray.png", png_bytes(Image.new("L", (8, 8), 77)), "ok")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    put("cat/palette_transparent.png", png_bytes(pal, transparency=1), "ok")  # fully transparent
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    put("dog/rgba.png", png_bytes(rgba), "ok")
    put("dog/cmyk.jpg", jpeg_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0))), "ok")
    arr16 = np.full((8, 8), 65535, dtype=np.uint16)
    arr16[:, :4] = 32896  # 32896 / 257 = 128 exactly
    put("dog/deep16.png", png_bytes(Image.fromarray(arr16)), "ok")
    full = jpeg_bytes(solid((1, 2, 3), size=64))
    put("dog/truncated.jpg", full[: len(full) // 2], "broken")
    put("dog/not_an_image.jpg", b"this is plain text, not a JPEG\n", "broken")
    # Not images at all: ignored by extension or as hidden debris.
    put("dog/notes.txt", b"hello", "ignored")
    put("dog/._resource_fork.jpg", b"\x00\x05\x16\x07", "ignored")
    return cases


def make_awkward_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "images"
    cases = write_awkward_images(root)
    # A real (decodable) WebP in a nested folder, to check recursion; bmp alongside.
    webp = root / "dog/nested/deeper/inner.webp"
    webp.parent.mkdir(parents=True)
    solid((9, 9, 200)).save(webp, format="WEBP", lossless=True)
    cases["dog/nested/deeper/inner.webp"] = "ok"
    solid((50, 60, 70)).save(root / "cat/bitmap.bmp", format="BMP")
    cases["cat/bitmap.bmp"] = "ok"
    return root, cases
