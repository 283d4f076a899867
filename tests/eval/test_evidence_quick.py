"""The quick passes of bench/cifar10_evidence.py and bench/cifar10_ablation.py run end to end
on tiny folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def _quick_args(data: Path, val: Path, work: Path, out: Path) -> list[str]:
    """The quick preset on the tiny folders, one job at a time."""
    return ["--preset", "quick", "--data", str(data), "--val-data", str(val),
            "--work", str(work), "--out", str(out), "--parallel", "1", "--in-process"]  # fmt: skip


@pytest.fixture(scope="module")
def evidence(
    image_folder: Path, val_folder: Path, tmp_path_factory: pytest.TempPathFactory, e2e: Any
) -> tuple[Path, int]:
    """(folder of the quick evidence study: ``w`` work, ``out`` results; its exit code)."""
    root = tmp_path_factory.mktemp("evidence")
    code = e2e.import_bench("cifar10_evidence").main(
        _quick_args(image_folder, val_folder, root / "w", root / "out")
    )
    return root, code


@pytest.mark.timeout(600)
def test_quick_pass_writes_one_row_per_init_and_fraction(evidence: tuple[Path, int]) -> None:
    root, code = evidence
    out = root / "out"
    assert code == 0
    rows = json.loads((out / "cifar10_evidence.json").read_text())
    assert len(rows) == 12  # 2 backbones x 3 inits x 2 label fractions
    for backbone in ("ViT", "ResNet"):
        assert {(r["init"], r["label_fraction"]) for r in rows if backbone in r["backbone"]} == {
            (i, f) for i in ("scratch", "cim-respix", "cim-revdet") for f in (0.1, 1.0)
        }
    for r in rows:
        assert {"backbone", "init", "label_fraction", "top1", "wallclock_s", "config"} <= set(r)
        assert r["config"]["data"]["label_fraction"] == r["label_fraction"]
        assert (r["config"]["init"]["checkpoint"] == "") == (r["init"] == "scratch")
        name = r["config"]["enhancer"]["name"]
        assert name == ("resnet10t" if "ResNet" in r["backbone"] else "vit_tiny_patch16_224")
        if r["init"] != "scratch":  # pre-trained with the same architecture
            assert r["pretrain"]["config"]["enhancer"] == r["config"]["enhancer"] | {
                "drop_path": r["pretrain"]["config"]["enhancer"]["drop_path"]
            }
    assert "| scratch |" in (out / "cifar10_evidence.md").read_text()


@pytest.mark.timeout(600)
def test_quick_ablation_reuses_the_study_and_changes_one_thing_per_arm(
    evidence: tuple[Path, int], image_folder: Path, val_folder: Path, tmp_path: Path, e2e: Any
) -> None:
    root, code = evidence
    assert code == 0
    arms = "scratch,revdet,revdet_mask0.6,scratch_seed1,revdet_seed1"
    assert (
        e2e.import_bench("cifar10_ablation").main(
            [*_quick_args(image_folder, val_folder, root / "w", tmp_path), "--arms", arms]
        )
        == 0
    )
    rows = {
        r["arm"]: r for r in json.loads((tmp_path / "cifar10_ablation.json").read_text())["rows"]
    }
    assert list(rows) == arms.split(",")
    study = {
        r["init"]: r
        for r in json.loads((root / "out" / "cifar10_evidence.json").read_text())
        if r["label_fraction"] == 0.1 and "ViT" in r["backbone"]
    }
    # reference arms are the study's own 10 % runs, not new ones
    assert rows["scratch"]["top1"] == study["scratch"]["top1"]
    assert rows["revdet"]["top1"] == study["cim-revdet"]["top1"]
    for name in ("scratch", "revdet", "revdet_mask0.6"):  # kNN of each encoder (random: scratch)
        assert set(rows[name]["knn_top1"]) == {"20", "200"}
    assert rows["scratch_seed1"]["knn_top1"] is None
    # the arm differs from the reference pre-training in the mask ratio and the run folder only
    ref, arm = study["cim-revdet"]["pretrain"]["config"], rows["revdet_mask0.6"]["pretrain_config"]
    assert arm["mask"]["ratio"] == 0.6 and ref["mask"]["ratio"] != 0.6
    assert {k for k in ref if ref[k] != arm[k]} == {"mask", "run"}
    assert rows["revdet_mask0.6"]["finetune_config"]["init"]["checkpoint"].endswith(
        "ablation/revdet_mask0.6/pretrain"
    )
    assert rows["scratch_seed1"]["finetune_config"]["seed"] == 1
    assert rows["scratch_seed1"]["finetune_config"]["init"]["checkpoint"] == ""
    # a seed arm fine-tunes the study's own REVDET encoder again, with seed 1 and no kNN
    seeded = rows["revdet_seed1"]
    assert seeded["finetune_config"]["seed"] == 1 and seeded["knn_top1"] is None
    assert seeded["finetune_config"]["init"]["checkpoint"] == ref["run"]["dir"]
    table = (tmp_path / "cifar10_ablation.md").read_text()
    assert "| revdet_mask0.6 |" in table
    # gains are paired by seed: seed 1 against scratch seed 1
    gain1 = seeded["top1"] - rows["scratch_seed1"]["top1"]
    gain0 = rows["revdet"]["top1"] - rows["scratch"]["top1"]
    assert f"| {seeded['top1']:.2f} | {gain1:+.2f} |" in table
    assert f"- revdet: paired gain over 2 seeds, mean {(gain0 + gain1) / 2:+.2f}" in table


def test_ablation_rejects_unknown_arms_and_a_work_folder_without_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], e2e: Any
) -> None:
    ablation = e2e.import_bench("cifar10_ablation")
    assert ablation.main(["--arms", "revdet,bogus", "--work", str(tmp_path)]) == 2
    assert "unknown bogus" in capsys.readouterr().err
    assert ablation.main(["--arms", "revdet", "--work", str(tmp_path)]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_default_preset_gives_each_backbone_the_measured_budget(e2e: Any) -> None:
    evidence = e2e.import_bench("cifar10_evidence")
    assert evidence.preset_for("standard", "vit") == ("short", evidence.PRESETS["short"])
    assert evidence.preset_for("standard", "resnet") == ("mini", evidence.PRESETS["mini"])
    assert evidence.preset_for("full", "resnet") == ("full", evidence.PRESETS["full"])
    # the shared tokenizer gets one budget whatever the backbone
    assert evidence.PRESETS["short"].tokenizer_epochs == evidence.PRESETS["mini"].tokenizer_epochs
