"""Decoding image files into RGB PIL images, without ever crashing on a bad file.

Every dataset of this package goes through ``decode_rgb``: real image collections contain
grayscale, palette, transparent, CMYK and 16-bit files as well as truncated downloads and
files that are not images at all. A pre-training run of many hours must not die on one of
them, so a file that cannot be decoded is reported (``BrokenImageWarning``, once per file and
process) and the dataset returns ``None`` for it; the collate functions drop those samples and
count them in the batch's ``"skipped"`` field.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageOps

# TIFF is common for microscopy and scans; PIL reads it (16-bit too, see to_rgb).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Transparent pixels are composited onto white: images with an alpha channel are mostly
# graphics or cut-outs meant to be shown on a light page. Dropping alpha instead would expose
# whatever colour the encoder stored under fully transparent pixels (often black or noise).
_BACKGROUND = (255, 255, 255)


class BrokenImageWarning(UserWarning):
    """A file could not be decoded as an image and its sample was skipped."""


# Largest image decoded (width x height); larger files are skipped and counted like broken
# ones. 50 megapixels covers every camera photo a training set usually holds.
MAX_PIXELS = 50_000_000


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer or float grayscale to 8 bits before going to RGB.

    ``Image.convert("RGB")`` on these modes clips every value above 255 to white, which turns a
    16-bit photograph into a nearly white image, so the range is rescaled here instead.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        # Float images are taken to be in [0, 1] when they fit, otherwise in [0, 255].
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        arr8 = np.clip(np.nan_to_num(arr) * scale, 0, 255)
    elif img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
        # 16-bit samples: 65535 / 257 = 255 maps the full range exactly.
        arr8 = np.clip(arr.astype(np.float64) / 257.0, 0, 255)
    else:
        arr8 = np.clip(arr, 0, 255)
    return Image.fromarray(np.round(arr8).astype(np.uint8), mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image (L, 1, P, LA, PA, RGBA, CMYK, I;16, I, F, ...) -> an 8-bit RGB image."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        # Palette transparency must go through RGBA, or PIL drops it (and warns).
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    # L, 1, P without transparency, CMYK, YCbCr, LAB, HSV: PIL's own conversion is correct.
    return img.convert("RGB")


def decode_rgb(source: str | os.PathLike[str] | bytes | IO[bytes]) -> Image.Image:
    """Open and fully decode an image file (path, bytes or file object) as RGB.

    Raises whatever the decoder raises on a broken file; ``load_rgb_or_none`` is the
    never-crashing wrapper that datasets use.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        # Image.open reads only the header: refuse a huge image before decoding it (a
        # 12000 x 12000 photo took about 2 GB), as a skipped and counted file.
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(
                f"{img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,} "
                "(cimpt.data.images.MAX_PIXELS); downscale it first"
            )
        # ``load`` forces the full decode now, so a truncated file fails here and not later in
        # a transform. LOAD_TRUNCATED_IMAGES is deliberately left off: it would silently pad
        # truncated files with grey.
        img.load()
        # Honour the camera's EXIF orientation: photos are otherwise seen sideways. Checking
        # for EXIF bytes first skips the costly tag parsing for the many files without any.
        if img.info.get("exif"):
            img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)


class BrokenFileReporter:
    """Warn once per file (and process) about files that cannot be decoded."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def report(self, name: str, exc: BaseException) -> None:
        if name in self._seen:
            return
        self._seen.add(name)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(
            f"skipping unreadable image {name}: {reason}", BrokenImageWarning, stacklevel=3
        )


def load_rgb_or_none(
    source: str | os.PathLike[str] | bytes | IO[bytes], name: str, reporter: BrokenFileReporter
) -> Image.Image | None:
    """``decode_rgb`` that returns ``None`` (and warns once) instead of raising.

    Decoders of untrusted bytes raise many unrelated exception types (OSError, ValueError,
    SyntaxError, struct.error, zlib.error, DecompressionBombError, ...), so everything that is
    an ``Exception`` is caught here, around the decode only; transform bugs still surface.
    """
    try:
        return decode_rgb(source)
    except Exception as exc:  # any decoder failure means a broken file (see docstring)
        reporter.report(name, exc)
        return None
