"""Bad segmentation data stops ``cimpt segment`` with one ``error:`` line naming the file,
before the run directory is written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from seg_files import SEG_CONFIG, seg_overrides, write_split


@pytest.fixture
def broken(tmp_path: Path, seg_data: Path) -> Path:
    """Fresh train pairs for one test to damage, and a copy of the shared val split."""
    root = tmp_path / "data"
    write_split(root / "train", 4, seed=0)
    shutil.copytree(seg_data / "val", root / "val")
    return root


def _fails(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], e2e: Any) -> str:
    run = tmp_path / "run"
    assert e2e.run_cli(["segment", str(SEG_CONFIG), *seg_overrides(run, root)]) == 2
    assert not (run / "config.yaml").exists()  # stopped before any work
    return e2e.error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("size", "label is 12x10 but its image"),
        ("class", "class id 7 is outside 0..2"),
        ("missing", "has no label file"),
        ("rgb", "an RGB label file"),
    ],
)
def test_bad_label_is_one_error_line_naming_the_file(
    damage: str,
    expect: str,
    broken: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    e2e: Any,
) -> None:
    label = broken / "train" / "labels" / "002.png"
    arr = np.asarray(Image.open(label))
    if damage == "size":
        Image.fromarray(arr[:10, :12]).save(label)
    elif damage == "class":
        arr = arr.copy()
        arr[5, 5] = 7  # 3 classes, ignore 255: 7 is neither
        Image.fromarray(arr).save(label)
    elif damage == "missing":
        label.unlink()
    else:
        Image.fromarray(np.stack([arr] * 3, axis=-1)).save(label)
    line = _fails(broken, tmp_path, capsys, e2e)
    assert expect in line
    named = broken / "train" / ("images" if damage == "missing" else "labels") / "002.png"
    assert str(named) in line


def test_the_ignore_id_and_palette_labels_are_accepted(broken: Path) -> None:
    from cimpt.seg.data import check_pair, scan_split

    label = broken / "train" / "labels" / "001.png"
    pal = Image.fromarray(np.asarray(Image.open(label))).convert("P")  # ids as palette indices
    pal.save(label)
    for pair in scan_split(broken / "train", "data.path"):
        check_pair(pair, 3, 255)  # 255 (the top row) is the ignore id: no error
