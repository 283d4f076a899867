"""`cimpt demo` end to end with a handful of steps: offline, figure + metrics + encoder."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cimpt.cli import main


def test_demo_runs_offline_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = tmp_path / "demo"
    code = main(
        [
            "demo",
            f"run.dir={root}",
            "train.max_steps=3",
            "run.progress=false",
            "data.bundled_samples=96",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "figure:" in out and "next, on your own images" in out
    assert (root / "tokenizer" / "tokenizer.safetensors").is_file()
    assert list((root / "cim" / "figures").glob("cim_*.png"))
    assert (root / "cim" / "enhancer.safetensors").is_file()
    last = json.loads((root / "cim" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "respix_loss" in last
