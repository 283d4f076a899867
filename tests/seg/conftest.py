"""Fixtures of the segmentation tests (helpers in seg_files.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from seg_files import SEG_CONFIG, seg_overrides, write_split


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train`` (8 pairs) and ``val`` (3 pairs) under one folder (read-only for the tests)."""
    root = tmp_path_factory.mktemp("segdata")
    write_split(root / "train", 8, seed=0)
    write_split(root / "val", 3, seed=100)
    return root


@pytest.fixture(scope="session")
def seg_args(seg_data: Path) -> Callable[..., list[str]]:
    """``seg_args(run_dir, steps=3, extra=(...))``: argv of a tiny ``cimpt segment`` run."""

    def make(run_dir: Path, steps: int = 3, extra: tuple[str, ...] = ()) -> list[str]:
        return ["segment", str(SEG_CONFIG), *seg_overrides(run_dir, seg_data, steps, extra)]

    return make
