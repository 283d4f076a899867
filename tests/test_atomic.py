"""Atomic writers: a finished file or the previous one, never a half-written one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cimpt.atomic import write_json, write_safetensors


def test_safetensors_round_trip_makes_contiguous_cpu_copies(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    path = write_safetensors(
        tmp_path / "sub" / "w.safetensors", {"t": base.T, "b": torch.tensor([1, 2])}, {"kind": "x"}
    )
    back = load_file(str(path))
    assert torch.equal(back["t"], base.T) and torch.equal(back["b"], torch.tensor([1, 2]))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"kind": "x"}
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]


def test_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "w.safetensors", {"a": torch.ones(2)}, {"v": "1"})
    before = path.read_bytes()
    shared = torch.zeros(4)
    with pytest.raises(Exception, match=r"share memory|shared"):
        # safetensors refuses tensors that share storage: the write fails mid-way
        write_safetensors(path, {"a": shared, "b": shared}, {"v": "2"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_json_written_whole(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"top1": 1.5})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"bad": object()})
    assert json.loads((tmp_path / "r.json").read_text()) == {"top1": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_written_files_get_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    from PIL import Image

    from cimpt.atomic import write_png, write_text

    (tmp_path / "plain").write_text("x")  # what the umask gives an ordinary file
    mode = (tmp_path / "plain").stat().st_mode & 0o777
    written = [
        write_safetensors(tmp_path / "w.safetensors", {"a": torch.ones(1)}, {}),
        tmp_path / "t.json",
        tmp_path / "t.txt",
        write_png(tmp_path / "i.png", Image.new("RGB", (2, 2))),
    ]
    write_json(written[1], {"a": 1})
    write_text(written[2], "é")
    assert [p.stat().st_mode & 0o777 for p in written] == [mode] * 4
    assert Image.open(written[3]).size == (2, 2)
    assert written[2].read_bytes() == "é".encode()
