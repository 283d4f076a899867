"""The one loading layer: a foreign file or a mismatch reads the same from every loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cimpt.errors import CimptError
from cimpt.weights_io import (
    check_fits,
    load_weights,
    read_safetensors,
    read_safetensors_metadata,
    strip_prefix,
)


def test_round_trip_and_prefix(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a.x": torch.ones(2), "b.y": torch.zeros(1)}, str(path), metadata={"k": "v"})
    assert read_safetensors_metadata(path) == {"k": "v"}
    assert list(strip_prefix(read_safetensors(path), "a.")) == ["x"]
    assert strip_prefix({"x": torch.ones(1)}, "").keys() == {"x"}


@pytest.mark.parametrize("read", [read_safetensors, read_safetensors_metadata])
def test_foreign_and_missing_files_are_one_line(tmp_path: Path, read) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not a safetensors file")
    with pytest.raises(CimptError, match=r"^.*junk\.bin is not a safetensors file \(.+\)$"):
        read(junk)
    with pytest.raises(CimptError, match=r"nope is not a safetensors file \(No such file"):
        read(tmp_path / "nope")


def test_mismatch_wording(tmp_path: Path) -> None:
    own = nn.Linear(3, 2).state_dict()
    with pytest.raises(CimptError) as info:
        check_fits(own, {"weight": torch.zeros(2, 4)}, "f.safetensors", "the model", "init.x")
    assert str(info.value) == (
        "init.x: weights of f.safetensors do not fit the model: missing bias; "
        "shape (file vs model) weight [2, 4] vs [2, 3]"
    )
    model = nn.Linear(3, 2)
    load_weights(model, {k: torch.ones_like(v) for k, v in own.items()}, "f", "the model")
    assert bool((model.weight == 1).all())


def test_tokenizer_modules_import_in_any_order() -> None:
    """No import cycle: each tokenizer module imports first in a fresh interpreter."""
    import subprocess
    import sys

    for name in ("vqvae", "evaluate", "load"):
        code = f"import cimpt.tokenizers.{name}"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
