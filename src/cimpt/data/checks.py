"""Every path a command will read, checked before any work (issue 16, item 6).

A run of hours must not fail at its end on a path that was wrong from the start (the
tokenizer trainer used to train fully, then stop on a missing ``data.val_path``). Each
command calls ``check_paths`` first; every problem found is named in one ``error:`` line.

``val`` says what the command does with ``data.val_path``: ``required`` (fine-tuning, linear
probe, kNN: an empty one is an error unless the training data brings its own test split),
``optional`` (tokenizer training: empty, missing or without images means no evaluation,
with a printed note) or
``unused`` (pre-training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig

from cimpt.data.datasets import TORCHVISION_SETS, resolve_source
from cimpt.data.images import IMAGE_EXTENSIONS
from cimpt.errors import CimptError

ValUse = Literal["required", "optional", "unused"]


def has_an_image(root: Path) -> bool:
    """Whether any supported image lies under ``root`` (stops at the first one found)."""
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                return True
    return False


def _data_problem(key: str, path: str, source: str) -> str | None:
    """What is wrong with an image source (None when it looks usable)."""
    try:
        kind = resolve_source(source, path, key)
    except CimptError as exc:
        return str(exc)
    if kind != "folder":
        return None  # bundled, torchvision and tar shards are checked where they are opened
    if not path:
        return f"{key}: empty, but data.source=folder needs an image folder"
    root = Path(path).expanduser()
    if not root.is_dir():
        return f"{key}: {root} is not a folder"
    if not has_an_image(root):
        return f"{key}: no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"
    return None


def _file_problem(key: str, path: str) -> str | None:
    if path and not Path(path).expanduser().exists():
        return f"{key}: {Path(path).expanduser()} does not exist"
    return None


def _pretrained_problem(value: str) -> str | None:
    """``enhancer.pretrained``: '', 'timm', or a weights file that exists."""
    if value in ("", "timm"):
        return None
    if not Path(value).expanduser().is_file():
        return f"enhancer.pretrained: {value} is not a weights file (use '', 'timm' or a path)"
    return None


def _val_problem(cfg: DictConfig, val: ValUse) -> str | None:
    d = cfg.data
    if val == "unused":
        return None
    if d.val_path:
        problem = _data_problem("data.val_path", d.val_path, d.source)
        if problem and val == "optional":
            # The shipped tokenizer config names CIFAR-10's test folder; a user who trains on
            # their own images without one should get a tokenizer, not an error. The key is
            # cleared so that config.yaml records that no evaluation was made.
            print(f"note: {problem}; no evaluation after training")
            d.val_path = ""
            return None
        return problem
    try:
        train_kind = resolve_source(d.source, d.path)
    except CimptError:
        return None  # data.path's own problem is reported
    if train_kind in (*TORCHVISION_SETS, "bundled"):
        return None  # the test split of CIFAR, or held-out bundled crops
    if val == "required":
        return "data.val_path: empty; set it to a labelled image folder (one sub-folder per class)"
    print("note: data.val_path is empty, so there is no evaluation after training")
    return None


def check_paths(
    cfg: DictConfig, *, val: ValUse = "unused", tokenizer: bool = False, init: bool = False
) -> None:
    """Raise one ``CimptError`` naming every path ``cfg`` gives that cannot be read.

    Takes the ``DictConfig``: an unreadable optional ``data.val_path`` is cleared in it, so
    that the run's ``config.yaml`` records that no evaluation was made.

    Args:
        val: what the command does with ``data.val_path`` (module docstring).
        tokenizer: the command reads ``tokenizer.checkpoint``.
        init: the command reads ``init.checkpoint``.
    """
    problems = [
        _data_problem("data.path", cfg.data.path, cfg.data.source),
        _val_problem(cfg, val),
        _file_problem("tokenizer.checkpoint", cfg.tokenizer.checkpoint) if tokenizer else None,
        _file_problem("init.checkpoint", cfg.init.checkpoint) if init else None,
        _pretrained_problem(cfg.enhancer.pretrained),
    ]
    found = [p for p in problems if p]
    if found:
        raise CimptError("; ".join(found))
