"""The quick pass of bench/cifar10_evidence.py runs end to end on tiny folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.timeout(600)
def test_quick_pass_writes_one_row_per_init_and_fraction(
    image_folder: Path, val_folder: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import cifar10_evidence
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "out"
    code = cifar10_evidence.main(["--preset", "quick", "--data", str(image_folder),
                                  "--val-data", str(val_folder), "--work", str(tmp_path / "w"),
                                  "--out", str(out), "--parallel", "1"])
    assert code == 0
    rows = json.loads((out / "cifar10_evidence.json").read_text())
    assert len(rows) == 12  # 2 backbones x 3 inits x 2 label fractions
    for backbone in ("ViT", "ResNet"):
        assert {(r["init"], r["label_fraction"]) for r in rows if backbone in r["backbone"]} == {
            (i, f) for i in ("scratch", "cim-respix", "cim-revdet") for f in (0.1, 1.0)}
    for r in rows:
        assert {"backbone", "init", "label_fraction", "top1", "wallclock_s", "config"} <= set(r)
        assert r["config"]["data"]["label_fraction"] == r["label_fraction"]
        assert (r["config"]["init"]["checkpoint"] == "") == (r["init"] == "scratch")
        name = r["config"]["enhancer"]["name"]
        assert name == ("resnet10t" if "ResNet" in r["backbone"] else "vit_tiny_patch16_224")
        if r["init"] != "scratch":  # pre-trained with the same architecture
            assert r["pretrain"]["config"]["enhancer"] == r["config"]["enhancer"] | {
                "drop_path": r["pretrain"]["config"]["enhancer"]["drop_path"]}
    assert "| scratch |" in (out / "cifar10_evidence.md").read_text()
