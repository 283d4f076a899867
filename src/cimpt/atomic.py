"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash or a full disk never leaves a half-written file where a reader (``resume=auto``, a
benchmark script, a user) would take it for a finished one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def atomic_target(path: Path) -> tuple[int, str]:
    """An open temporary file (fd, name) next to ``path``; parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def publish(tmp: str, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path``, with the mode a plain ``open`` would give.

    ``mkstemp`` makes files private (0600); the result gets 0666 less the umask, so that other
    users and a TensorBoard service on a shared machine can read it.
    """
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, atomically."""
    fd, tmp = atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    write_text(path, json.dumps(data, indent=2))


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    """``tensors`` (made contiguous CPU copies) and string ``metadata`` as one safetensors file
    at ``path``, atomically; parents are created."""
    from safetensors.torch import save_file

    fd, tmp = atomic_target(path)
    os.close(fd)  # safetensors writes by name
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_png(path: Path, image: Any) -> Path:
    """A ``PIL.Image`` as a PNG file at ``path``, atomically; parents are created."""
    fd, tmp = atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
