"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash or a full disk never leaves a half-written file where a reader (``resume=auto``, a
benchmark script, a user) would take it for a finished one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary file name next to ``path`` (parents are created) for the caller to write;
    on success it is renamed to ``path``, on any error removed.

    ``mkstemp`` makes files private (0600); the result gets the mode a plain ``open`` would
    give (0666 less the umask), so that other users and a TensorBoard service on a shared
    machine can read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)  # writers here open by name
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    write_text(path, json.dumps(data, indent=2))


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    """``tensors`` (made contiguous CPU copies) and string ``metadata`` as one safetensors file
    at ``path``, atomically; parents are created."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
    return path


def write_png(path: Path, image: Any) -> Path:
    """A ``PIL.Image`` as a PNG file at ``path``, atomically; parents are created."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
