"""Fixtures of the data tests: a folder of tiny images of every awkward kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import make_awkward_folder


@pytest.fixture
def awkward_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return make_awkward_folder(tmp_path)
