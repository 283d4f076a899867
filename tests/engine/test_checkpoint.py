"""Checkpoints: atomic writes, keep-last-k, a full disk keeps the previous one, clear errors."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from torch import nn

from cimpt.engine import checkpoint as C
from cimpt.errors import CimptError
from cimpt.weights_io import read_safetensors_metadata


def _save(run: Path, step: int, value: float, keep: int = 2) -> Path:
    t = {"m.w": torch.full((3,), value)}
    state = {"step": step, "optimizer": {"lr": 0.1}}
    return C.save_checkpoint(run, step, t, state, {"kind": "toy", "config": {"a": 1}}, keep)


def test_round_trip_and_layout(tmp_path: Path) -> None:
    path = _save(tmp_path, 7, 1.5)
    assert path.name == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    assert torch.equal(C.load_tensors(path)["m.w"], torch.full((3,), 1.5))
    assert C.load_state(path)["step"] == 7
    assert C.load_meta(path)["kind"] == "toy"
    meta = read_safetensors_metadata(path / "model.safetensors")
    assert '"a": 1' in meta["cimpt_config"]


def test_keep_last_k_and_latest(tmp_path: Path) -> None:
    for s in (10, 20, 30, 40):
        _save(tmp_path, s, float(s), keep=2)
    names = [p.name for p in C.list_checkpoints(tmp_path)]
    assert names == ["step_00000030", "step_00000040"]
    assert C.latest_checkpoint(tmp_path).name == "step_00000040"  # type: ignore[union-attr]
    assert C.resolve_checkpoint(tmp_path).name == "step_00000040"


def test_full_disk_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _save(tmp_path, 10, 1.0)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", no_space)
    with pytest.raises(CimptError, match=r"No space left.*intact"):
        _save(tmp_path, 20, 2.0)
    # The earlier checkpoint is complete and still the newest; no temporary debris is left.
    assert C.latest_checkpoint(tmp_path) == good
    assert torch.equal(C.load_tensors(good)["m.w"], torch.ones(3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000010"]


def test_resave_same_step_replaces_atomically(tmp_path: Path) -> None:
    _save(tmp_path, 5, 1.0)
    path = _save(tmp_path, 5, 2.0)
    assert torch.equal(C.load_tensors(path)["m.w"], torch.full((3,), 2.0))
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1


def test_half_written_directory_is_ignored(tmp_path: Path) -> None:
    _save(tmp_path, 5, 1.0)
    (tmp_path / "checkpoints" / "step_00000009").mkdir()  # no model file: incomplete
    assert C.latest_checkpoint(tmp_path).name == "step_00000005"  # type: ignore[union-attr]


def test_errors_for_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(CimptError, match="not found"):
        C.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CimptError, match="no checkpoint found"):
        C.resolve_checkpoint(tmp_path)
    junk = tmp_path / "ck"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CimptError, match="not a safetensors file"):
        C.load_tensors(junk)


def test_load_modules_lists_differences() -> None:
    model = nn.Linear(3, 2)
    tensors = {"net.weight": torch.zeros(4, 3), "net.extra": torch.zeros(1)}
    with pytest.raises(CimptError) as info:
        C.load_modules({"net": model}, C.RunCheckpoint(Path("ck"), "toy", {}, tensors))
    msg = str(info.value)
    assert msg.startswith("weights of ck do not fit the 'net' model: ")
    assert "weight [4, 3] vs [2, 3]" in msg and "missing bias" in msg and "unexpected extra" in msg
